"""The LoRA variants PEFT offers as LoRA settings: each adapter config maps to exactly one plugin, and the
data hook (methods that initialise from training batches) in the trainer, the pilots and the cost model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import autopeft
from autopeft.methods.adapter_config import method_for, read_adapter_config
from autopeft.testing import sample_batches, tiny_model

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
LORA_FAMILY = ["lora", "rslora", "dora", "pissa", "olora", "lora_orthogonal", "mica", "kasa", "velora", "monteclora",
               "bdlora", "alora", "eva", "corda", "loraga", "loftq", "qalora"]
DATA_METHODS = ["eva", "corda", "loraga", "alora"]


@pytest.mark.parametrize("name", LORA_FAMILY)
def test_an_adapter_config_of_each_lora_variant_maps_to_its_plugin(name, tmp_path):
    """As saved: each plugin's LoraConfig written to adapter_config.json and read back."""
    method = autopeft.get_method(name)
    config = method.peft_config(method.settings(), "causal-lm")
    config.save_pretrained(str(tmp_path))
    data = read_adapter_config(tmp_path)
    assert method_for(data).name == name
    claimed = [m.name for m in autopeft.list_methods() if m.name in LORA_FAMILY + ["loraplus", "lorafa"]
               and autopeft.get_method(m.name).recognises(data)]
    assert claimed == [name]


def test_a_combination_no_plugin_describes_goes_to_the_generic_stand_in():
    data = {"peft_type": "LORA", "use_dora": True, "init_lora_weights": "eva", "r": 8}
    assert method_for(data).name == "peft:lora"
    # rsLoRA's scaling beside a variant only rescales it: still that variant
    assert method_for({"peft_type": "LORA", "use_rslora": True, "init_lora_weights": "pissa_niter_4"}).name == "pissa"


@pytest.mark.parametrize("name", ["eva", "corda", "loraga"])
def test_a_data_method_refuses_to_build_without_batches(name):
    method = autopeft.get_method(name)
    with pytest.raises(autopeft.BadInputError, match="training data"):
        method.build(tiny_model("causal-lm"), method.settings({"r": 4}), "causal-lm")


def test_alora_reads_its_invocation_off_the_prompts_and_refuses_data_without_one():
    from autopeft_plugins.alora import invocation_of

    batches = sample_batches("causal-lm", 2)
    assert invocation_of(batches)[-3:] == [2, 1, 2]
    unprompted = [{**b, "labels": b["input_ids"].clone()} for b in batches]
    with pytest.raises(autopeft.BadInputError, match="invocation"):
        invocation_of(unprompted)


def test_the_estimate_accounts_for_the_initialisations_memory(tiny_llama_dir):
    """LoRA-GA holds the gradient of every target weight; CorDA an in×in covariance per target layer:
    the breakdown reports it, and the peak is the larger of training and the initialisation."""
    def estimate(name):
        return autopeft.estimate(str(tiny_llama_dir), name, settings={"r": 4}, batch_size=2, seq_len=16, device="cpu")

    lora, loraga, corda = estimate("lora"), estimate("loraga"), estimate("corda")
    assert lora.breakdown.init == 0
    # defaults target q_proj and v_proj: 2 layers × (64×64 + 32×64) float32 weights
    targets = 2 * (64 * 64 + 32 * 64) * 4
    assert loraga.breakdown.init >= targets + loraga.breakdown.activations_without_checkpointing + loraga.breakdown.logits
    assert corda.breakdown.init >= 2 * 2 * 64 * 64 * 4
    for est in (loraga, corda):
        assert (est.trainable_params, est.adapter_bytes) == (lora.trainable_params, lora.adapter_bytes)
        parts = est.breakdown
        assert est.peak_memory_bytes >= parts.weights + parts.init + parts.runtime
        total = (parts.weights + parts.gradients + parts.optimizer + parts.activations + parts.logits
                 + parts.communication + parts.overhead + (parts.init if est.peak_phase == "initialisation" else 0))
        assert est.peak_memory_bytes == total
    # on a GPU (no CPU heap to hold the forward pass's temporaries) the gradients of the full weights win
    on_gpu = autopeft.estimate(str(tiny_llama_dir), "loraga", settings={"r": 4}, batch_size=2, seq_len=16,
                               device="cuda")
    assert on_gpu.peak_phase == "initialisation"
    assert on_gpu.peak_memory_bytes == on_gpu.breakdown.weights + on_gpu.breakdown.init + on_gpu.breakdown.runtime


@pytest.mark.slow
def test_a_data_method_trains_end_to_end_from_batches_of_the_training_split(trainable_llama, tmp_path, monkeypatch):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    method = autopeft.get_method("eva")
    seen = []
    original = type(method).build

    def build(self, model, settings, task, batches=None):
        seen.append(batches)
        return original(self, model, settings, task, batches=batches)

    monkeypatch.setattr(type(method), "build", build)
    out = tmp_path / "run"
    record = autopeft.train(str(EXAMPLES / "instructions.jsonl"), output_dir=str(out), model=str(trainable_llama),
                            method="eva", settings={"r": 4}, max_examples=32, max_length=64, batch_size=4,
                            max_steps=2, samples=0, progress=False)
    (batches,) = [b for b in seen if b is not None]  # the rest: the cost model's meta build, which has no data
    assert len(batches) == method.data_batches or len(batches) == -(-record.data["num_train"] // 4)
    assert {"input_ids", "attention_mask", "labels"} <= set(batches[0]) and batches[0]["input_ids"].shape[0] == 4
    assert record.init_seconds > 0 and record.steps == 2
    stored = json.loads((out / "run.json").read_text())
    assert stored["init_seconds"] == record.init_seconds
    assert json.loads((out / "adapter_config.json").read_text())["init_lora_weights"] == "eva"
    base = AutoModelForCausalLM.from_pretrained(str(trainable_llama))
    PeftModel.from_pretrained(base, str(out))  # loads on the untouched base


@pytest.mark.slow
def test_loraga_is_saved_as_a_lora_for_the_untouched_base(trainable_llama, tmp_path):
    out = tmp_path / "run"
    autopeft.train(str(EXAMPLES / "instructions.jsonl"), output_dir=str(out), model=str(trainable_llama),
                   method="loraga", settings={"r": 4}, max_examples=32, max_length=64, batch_size=4, max_steps=2,
                   samples=0, progress=False)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["init_lora_weights"] is True and config["r"] == 8  # ΔW of B·A − B₀·A₀: rank 2r


@pytest.mark.slow
def test_a_pilots_step_time_leaves_the_initialisation_out(trainable_llama, tmp_path):
    from autopeft.training.run import pilot

    result = pilot(str(EXAMPLES / "instructions.jsonl"), output_dir=str(tmp_path / "pilot"), steps=2,
                   model=str(trainable_llama), method="corda", settings={"r": 4}, max_examples=32, max_length=64,
                   batch_size=4)
    assert result.status == "ok" and result.init_seconds > 0
    # the steps are timed apart from the build (and from the first step's one-off costs)
    assert 0 < result.seconds_per_step <= result.train_seconds


@pytest.mark.slow
def test_alora_trains_on_alpaca_data_activated_by_its_response_header(trainable_llama, tmp_path):
    from transformers import AutoTokenizer

    out = tmp_path / "run"
    record = autopeft.train(str(EXAMPLES / "instructions.jsonl"), output_dir=str(out), model=str(trainable_llama),
                            method="alora", settings={"r": 4}, max_examples=32, max_length=64, batch_size=4,
                            max_steps=2, samples=0, progress=False, learning_rate=1e-2)
    tokens = json.loads((out / "adapter_config.json").read_text())["alora_invocation_tokens"]
    header = AutoTokenizer.from_pretrained(str(trainable_llama)).decode(tokens)
    assert header.endswith("Response:\n"), header
    assert record.metrics["eval_loss"] < record.metrics["eval_loss_before"]
