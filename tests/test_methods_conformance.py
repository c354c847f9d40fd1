"""Every installed method, built-in or third-party, against the same checks on tiny real models.

The cost model works on the meta device; here the same method is built on a real (random-weight)
tiny model and trained for one step (:func:`autopeft.testing.check_method`), so the meta figures are
checked against reality.
"""

from __future__ import annotations

import pytest
import torch

import autopeft
from autopeft.models import load_config
from autopeft.testing import build_with_sample_data, check_method

from .conftest import TINY_BERT, TINY_LLAMA

METHODS = sorted(m.name for m in autopeft.list_methods())


def _tiny_model(task: str):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, BertConfig, LlamaConfig

    torch.manual_seed(0)
    if task == "causal-lm":
        return AutoModelForCausalLM.from_config(LlamaConfig(**TINY_LLAMA))
    return AutoModelForSequenceClassification.from_config(BertConfig(**TINY_BERT, num_labels=2))


def _model_dir(task, tiny_llama_dir, tiny_bert_dir):
    return tiny_llama_dir if task == "causal-lm" else tiny_bert_dir


@pytest.mark.slow  # one real training step per method and task, and its capability probes: minutes for 61 methods
@pytest.mark.parametrize("task", autopeft.TASKS)
@pytest.mark.parametrize("name", METHODS)
def test_method_builds_trains_and_matches_its_meta_estimate(name, task):
    """The public conformance checks (autopeft.testing), which a plugin author runs on their own method."""
    method = autopeft.get_method(name)
    if task not in method.tasks:
        pytest.skip(f"{name} does not support {task}")
    check_method(method, tasks=(task,))


SEQ_CLS_METHODS = [m for m in METHODS if "seq-cls" in autopeft.get_method(m).tasks]


@pytest.mark.parametrize("name", SEQ_CLS_METHODS)
def test_validation_loss_is_the_task_loss_alone(name):
    """Evaluation and early stopping read the model's loss: a training regulariser (AdaLoRA's
    orthogonality penalty) must not be in it."""
    method = autopeft.get_method(name)
    try:
        model = build_with_sample_data(method, _tiny_model("seq-cls"), method.settings(method.probe_settings),
                                       "seq-cls")
    except (ValueError, autopeft.BadInputError):
        pytest.skip(f"{name} refuses the tiny model")
    ids, labels = torch.randint(3, 256, (4, 16)), torch.tensor([0, 1, 1, 0])
    model.eval()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
    assert out.loss.item() == pytest.approx(torch.nn.functional.cross_entropy(out.logits, labels).item(), rel=1e-5)


TOKEN_CLS_METHODS = [m for m in METHODS if "token-cls" in autopeft.get_method(m).tasks]


@pytest.mark.parametrize("name", TOKEN_CLS_METHODS)
def test_a_taggers_validation_loss_is_the_task_loss_alone(name):
    """As for classification: the loss over the tagged tokens (-100 elsewhere), nothing added."""
    from autopeft.testing import tiny_model

    method = autopeft.get_method(name)
    try:
        model = build_with_sample_data(method, tiny_model("token-cls", "bert"), method.settings(method.probe_settings),
                                       "token-cls")
    except (ValueError, autopeft.BadInputError):
        pytest.skip(f"{name} refuses the tiny model")
    ids = torch.randint(3, 256, (4, 16))
    labels = torch.randint(0, 2, (4, 16)).masked_fill(torch.rand(4, 16) < 0.3, -100)
    model.eval()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
    expected = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)


PEFT_METHODS = [m for m in METHODS if isinstance(autopeft.get_method(m), autopeft.PeftMethod)]


@pytest.mark.parametrize("name", PEFT_METHODS)
def test_adapter_file_size_is_predicted_from_the_meta_build(name, tiny_llama_dir, tmp_path):
    method = autopeft.get_method(name)
    if method.unavailable_reason():
        pytest.skip(method.unavailable_reason())
    settings = method.settings(method.probe_settings)
    model = build_with_sample_data(method, _tiny_model("causal-lm"), settings, "causal-lm")
    model.save_pretrained(tmp_path)
    actual = (tmp_path / "adapter_model.safetensors").stat().st_size
    est = autopeft.estimate(str(tiny_llama_dir), name, settings=settings.model_dump(), batch_size=1, seq_len=8,
                            device="cpu")
    assert abs(est.adapter_bytes - actual) <= max(256, 0.02 * actual), (est.adapter_bytes, actual)


@pytest.mark.parametrize("name", PEFT_METHODS)
def test_declared_lora_convertibility_matches_peft(name):
    method = autopeft.get_method(name)
    if method.unavailable_reason():
        pytest.skip(method.unavailable_reason())
    settings = method.settings(method.probe_settings)
    model = build_with_sample_data(method, _tiny_model("causal-lm"), settings, "causal-lm")
    supports = getattr(model, "supports_lora_conversion", None)
    if supports is None:
        pytest.skip("this PEFT version cannot say")
    try:
        peft_says = bool(supports())
    except Exception:  # prompt-learning models have no tuner layers to ask
        peft_says = False
    if peft_says and not method.capabilities.lora_convertible:  # PEFT says yes, and its conversion fails (BD-LoRA)
        from peft.tuners.lora.conversion import convert_to_lora

        with pytest.raises(Exception):
            convert_to_lora(model, rank=4)
        return
    assert method.capabilities.lora_convertible == peft_says


def test_load_config_reads_a_dir_with_only_config_json(tiny_llama_dir):
    assert load_config(str(tiny_llama_dir)).num_hidden_layers == 2


def test_the_embedded_models_config_is_cached_once_even_when_read_side_by_side():
    """Two autopeft processes started at once on a fresh machine may both be first to read the embedded
    model's config (from its GGUF): each gets it, one config.json lands in the cache, and no temporary
    dir is left beside it."""
    import os
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    from transformers import AutoConfig  # noqa: F401  imported once: transformers' lazy imports race in threads

    with ThreadPoolExecutor(2) as pool:
        configs = list(pool.map(lambda _: load_config("smollm2-135m"), range(2)))
    assert {c.num_hidden_layers for c in configs} == {30}
    models = Path(os.environ["AUTOPEFT_HOME"]) / "models"
    assert sorted(p.name for p in models.iterdir()) == ["smollm2-135m"]
    assert [p.name for p in (models / "smollm2-135m").iterdir()] == ["config.json"]
    assert load_config("smollm2-135m").num_hidden_layers == 30  # from the cache


def test_a_converted_model_another_process_finished_first_is_kept_not_replaced(tmp_path):
    """Replacing it would leave, for a moment, no model for that process to load."""
    from autopeft.models import _publish

    target, ours = tmp_path / "converted", tmp_path / "converted.tmp-1"
    for directory, text in ((target, "theirs"), (ours, "ours")):
        directory.mkdir()
        (directory / "model.safetensors").write_text(text)
    inode = target.stat().st_ino
    _publish(ours, target, complete="model.safetensors")
    assert target.stat().st_ino == inode and (target / "model.safetensors").read_text() == "theirs"

    first = tmp_path / "other"
    _publish(target, first, complete="model.safetensors")  # nobody there yet: renamed into place
    assert (first / "model.safetensors").read_text() == "theirs" and not target.exists()

    half = tmp_path / "half"  # an unfinished dir in the way is replaced
    half.mkdir()
    (half / "config.json").write_text("{}")
    _publish(first, half, complete="model.safetensors")
    assert sorted(p.name for p in half.iterdir()) == ["model.safetensors"]


def _deep(config: dict, layers: int = 6) -> dict:
    return {**config, "num_hidden_layers": layers}


def _estimate_every_block(monkeypatch, *args, **kwargs):
    """The estimate with every block of the trace run (none stood in for by an alike one)."""
    import functools

    from autopeft import costmodel

    with monkeypatch.context() as patch:
        patch.setattr(costmodel, "_trace", functools.partial(costmodel._trace, every_block=True))
        return autopeft.estimate(*args, **kwargs)


# token classification traces as sequence classification does on the same BERT, but for its labels' shape
@pytest.mark.parametrize("task", ["causal-lm", "seq-cls", pytest.param("token-cls", marks=pytest.mark.slow)])
@pytest.mark.parametrize("name", METHODS)
def test_a_deep_models_trace_that_skips_repeated_blocks_estimates_as_if_it_ran_them_all(name, task, monkeypatch):
    from transformers import BertConfig, LlamaConfig

    method = autopeft.get_method(name)
    if task not in method.tasks:
        pytest.skip(f"{name} does not support {task}")
    config = LlamaConfig(**_deep(TINY_LLAMA)) if task == "causal-lm" else BertConfig(**_deep(TINY_BERT))
    settings = method.settings(method.probe_settings).model_dump()
    for device in ("cpu", "cuda"):
        kwargs = dict(settings=settings, task=task, config=config, batch_size=2, seq_len=16, device=device)
        try:
            fast = autopeft.estimate(None, name, **kwargs)
        except autopeft.BadInputError:
            with pytest.raises(autopeft.BadInputError):
                _estimate_every_block(monkeypatch, None, name, **kwargs)
            continue
        assert fast == _estimate_every_block(monkeypatch, None, name, **kwargs)


@pytest.mark.parametrize("model_type", ["gemma3_text", "qwen2_moe", "smollm3", "modernbert"])
def test_blocks_that_differ_along_the_stack_are_each_traced(model_type, monkeypatch):
    """Sliding-window and global attention, mixture-of-experts and dense layers, layers with and
    without rotary embeddings: blocks alike in shape but not in what they compute must not stand in
    for one another."""
    from transformers import AutoConfig

    extra = {"gemma3_text": {"sliding_window": 8, "sliding_window_pattern": 3, "head_dim": 16},
             "qwen2_moe": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                           "shared_expert_intermediate_size": 64, "mlp_only_layers": [1, 3]},
             "smollm3": {"no_rope_layer_interval": 3}, "modernbert": {"global_attn_every_n_layers": 3,
                                                                     "local_attention": 8}}[model_type]
    config = AutoConfig.for_model(model_type, hidden_size=64, intermediate_size=128, num_hidden_layers=7,
                                  num_attention_heads=4, num_key_value_heads=2, vocab_size=256,
                                  max_position_embeddings=128, pad_token_id=0, **extra)
    task = "seq-cls" if model_type == "modernbert" else "causal-lm"
    attention = ["Wqkv"] if model_type == "modernbert" else ["q_proj", "v_proj"]
    for name, settings in (("lora", {"target_modules": attention}), ("full", {})):
        # the experts' grouped matmul wants bf16
        kwargs = dict(settings=settings, task=task, config=config, batch_size=2, seq_len=16, device="cpu",
                      dtype="bf16" if model_type == "qwen2_moe" else None)
        assert autopeft.estimate(None, name, **kwargs) == _estimate_every_block(monkeypatch, None, name, **kwargs)


def test_the_trace_runs_a_deep_models_repeated_blocks_only_until_they_repeat(monkeypatch):
    from transformers import LlamaConfig

    from autopeft import costmodel

    calls = []
    original = costmodel._standin_output
    monkeypatch.setattr(costmodel, "_standin_output",
                        lambda output, hidden: calls.append(1) or original(output, hidden))
    autopeft.estimate(None, "lora", task="causal-lm", config=LlamaConfig(**_deep(TINY_LLAMA, 12)),
                      batch_size=2, seq_len=16, device="cpu")
    # block 0 (an input that needs no grad), blocks 1 and 2 run; the other nine stand in
    assert len(calls) == 9


def test_the_trace_leaves_every_blocks_forward_as_it_found_it():
    """A block whose instance carries a forward of its own (as Accelerate's hooks do) keeps it, and
    runs; the others get back their class's forward."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from autopeft import costmodel

    with torch.device("meta"):
        net = AutoModelForCausalLM.from_config(LlamaConfig(**_deep(TINY_LLAMA)))
    blocks = costmodel._blocks(net)
    calls = []
    own = blocks[3].forward

    def hooked(*args, **kwargs):
        calls.append(1)
        return own(*args, **kwargs)

    blocks[3].forward = hooked
    costmodel._trace(net, "causal-lm", 2, 16, 2)
    assert calls == [1]
    assert blocks[3].__dict__["forward"] is hooked
    assert all("forward" not in b.__dict__ for i, b in enumerate(blocks) if i != 3)


def test_full_fine_tuning_on_a_gpu_is_planned_with_float32_masters_under_autocast(tiny_llama_dir):
    """The trainer loads full-weight methods in float32 and lets autocast compute in bf16: weights,
    gradients and optimizer state are those of a float32 run, plus a bf16 copy of each matrix while
    backward needs it; adapters keep a bf16 base."""
    def parts(method, dtype):
        est = autopeft.estimate(str(tiny_llama_dir), method, batch_size=1, seq_len=8, device="cuda", dtype=dtype)
        return est.breakdown, est.peak_phase

    (mixed, phase), (single, _) = parts("full", "bf16"), parts("full", "fp32")
    matrices = sum(p.numel() for p in _tiny_model("causal-lm").parameters() if p.dim() >= 2)
    assert (mixed.gradients, mixed.optimizer) == (single.gradients, single.optimizer)
    assert mixed.weights == single.weights + (2 * matrices if phase == "forward-backward" else 0)
    (lora_bf16, _), (lora_fp32, _) = parts("lora", "bf16"), parts("lora", "fp32")
    assert lora_bf16.weights < 0.6 * lora_fp32.weights  # the base in bf16


BUILTIN_METHODS = [m for m in METHODS if autopeft.get_method(m).source == "autopeft"]


@pytest.mark.slow
@pytest.mark.parametrize("name", BUILTIN_METHODS)
def test_shipped_capabilities_are_those_a_fresh_probe_finds(name):
    """`autopeft methods` shows the stored probe of each built-in: it must be today's (after a PEFT
    upgrade or a plugin change, rerun `python -m autopeft.methods.probes`)."""
    from autopeft.methods.probes import known_capabilities, probe_capabilities

    method = autopeft.get_method(name)
    shipped = known_capabilities(method)
    assert shipped is not None, f"no shipped probe for {name} with these versions: run python -m autopeft.methods.probes"
    assert shipped == probe_capabilities(method)


def test_a_capability_a_method_declares_but_lacks_fails_the_checks():
    from autopeft import Capabilities

    prompt = autopeft.get_method("prompt_tuning")

    class Boastful(type(prompt)):
        name = "boastful-prompt"
        capabilities = Capabilities(merge=True, quantized=True, multi_adapter=True, lora_convertible=False)

    with pytest.raises(AssertionError, match="declares merge but the probe found otherwise"):
        check_method(Boastful(), tasks=("causal-lm",))


def test_a_method_never_probed_is_probed_once_and_remembered(tmp_path, monkeypatch):
    from autopeft.methods import probes

    monkeypatch.setenv("AUTOPEFT_HOME", str(tmp_path))
    lora = autopeft.get_method("lora")

    class Renamed(type(lora)):
        name = "lora-renamed"

    method = Renamed()
    assert probes.known_capabilities(method) is None
    found = probes.capabilities_of(method)
    assert found.merge.value is True and found.merge.source == "probe"
    assert probes.known_capabilities(method) == found  # read back from $AUTOPEFT_HOME
    assert (tmp_path / "capabilities.json").is_file()


@pytest.mark.parametrize("task", ["causal-lm", "seq-cls"])
def test_osf_freezes_the_directions_its_r_leaves_and_warns_of_nothing(task, recwarn):
    """OSF trains the ``r`` smallest singular directions of each targeted layer and freezes the rest
    (PEFT's ``effective_rank``), whatever the layer's name; PEFT's check of the rank pattern finds
    nothing to warn of."""
    method = autopeft.get_method("osf")
    model = _tiny_model(task)
    smaller = {name: min(module.weight.shape) for name, module in model.named_modules()
               if isinstance(module, torch.nn.Linear)}
    net = method.build(model, method.settings({"r": 8}), task)
    ranks = {name: module.effective_rank["default"] for name, module in net.named_modules()
             if isinstance(getattr(module, "effective_rank", None), dict)}
    assert ranks and all(rank == smaller[name.removeprefix("base_model.model.")] - 8 for name, rank in ranks.items())
    assert not [w for w in recwarn if "rank_pattern" in str(w.message)]
