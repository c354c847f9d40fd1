"""Exports of a finished run: merged models and LoRA conversions, reloaded and compared with the adapter.

The runs are made without the trainer: a tiny seeded base saved to disk, a non-zero PEFT adapter saved
beside a tokenizer, and a run.json with the fields the exporter reads.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autopeft.errors import BadInputError

from .conftest import TINY_BERT, TINY_LLAMA

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from autopeft.training.export import ExportResult, merge, to_lora  # noqa: E402

WORDS = [f"w{i}" for i in range(200)]
LABELS = ["neg", "pos"]


def _tokenizer():
    """A word-level tokenizer whose ids fit the tiny models' 256-entry vocabularies."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(["<unk>", "<s>", "</s>", "<pad>", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="<pad>")


def _write_run(run: Path, net, base: Path, task: str, method: str, labels=None) -> Path:
    net.save_pretrained(str(run))
    _tokenizer().save_pretrained(str(run))
    record = {"model": str(base), "task": task, "method": method, "data": {"labels": labels}, "options": {}}
    (run / "run.json").write_text(json.dumps(record))
    return run


@pytest.fixture(scope="module")
def llama_base(tmp_path_factory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    base = tmp_path_factory.mktemp("llama-base")
    LlamaForCausalLM(LlamaConfig(**TINY_LLAMA)).save_pretrained(str(base))
    _tokenizer().save_pretrained(str(base))
    return base


def _llama_run(tmp_path_factory, base: Path, config, method: str, *, perturb: bool = False) -> Path:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    net = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(str(base)), config)
    if perturb:
        with torch.no_grad():
            for name, p in net.named_parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 0.1)
    return _write_run(tmp_path_factory.mktemp(f"run-{method}"), net, base, "causal-lm", method)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, llama_base) -> Path:
    config = peft.LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, init_lora_weights=False)
    return _llama_run(tmp_path_factory, llama_base, config, "lora")


@pytest.fixture(scope="module")
def lokr_run(tmp_path_factory, llama_base) -> Path:
    config = peft.LoKrConfig(task_type="CAUSAL_LM", r=8, alpha=8, init_weights=False,
                             target_modules=["k_proj", "v_proj"])  # 64 -> 32: rank 32 is exact
    return _llama_run(tmp_path_factory, llama_base, config, "lokr")


@pytest.fixture(scope="module")
def prompt_run(tmp_path_factory, llama_base) -> Path:
    config = peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    return _llama_run(tmp_path_factory, llama_base, config, "prompt_tuning", perturb=True)


@pytest.fixture(scope="module")
def bert_run(tmp_path_factory) -> Path:
    from transformers import BertConfig, BertModel

    from autopeft.models import load_model

    torch.manual_seed(0)
    base = tmp_path_factory.mktemp("bert-base")
    BertModel(BertConfig(**TINY_BERT)).save_pretrained(str(base))
    _tokenizer().save_pretrained(str(base))
    net = load_model(str(base), "seq-cls", label2id={name: i for i, name in enumerate(LABELS)})
    config = peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, init_lora_weights=False,
                             target_modules=["query", "value"])
    net = peft.get_peft_model(net, config)
    return _write_run(tmp_path_factory.mktemp("run-bert"), net, base, "seq-cls", "lora", labels=LABELS)


def _ids():
    return torch.randint(4, 200, (2, 12), generator=torch.Generator().manual_seed(7))


def _adapter_logits(run: Path, auto) -> torch.Tensor:
    record = json.loads((run / "run.json").read_text())
    kwargs = {}
    if record["task"] == "seq-cls":
        kwargs = {"num_labels": len(LABELS)}
    base = auto.from_pretrained(record["model"], **kwargs)
    model = peft.PeftModel.from_pretrained(base, str(run)).eval()
    with torch.no_grad():
        return model(input_ids=_ids()).logits


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=_ids()).logits


def _no_leftovers(parent: Path, name: str) -> bool:
    return not any(p.name == name or p.name.startswith(f".{name}.tmp") for p in parent.iterdir())


# -- merge ------------------------------------------------------------------------------------------


def test_merge_gives_a_plain_model_with_the_adapters_logits(lora_run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "exports" / "merged"
    result = merge(lora_run, out)

    assert isinstance(result, ExportResult)
    assert result.kind == "merged" and result.method == "lora" and result.task == "causal-lm"
    assert result.output_dir == str(out) and result.lora_rank is None
    assert result.max_abs_diff < 1e-4 and result.relative_diff < 1e-5
    assert "model.safetensors" in result.files and "config.json" in result.files
    assert "README.md" in result.files and "tokenizer.json" in result.files
    assert not (out / "adapter_config.json").exists()
    assert result.files == sorted(p.name for p in out.iterdir())
    assert "merged" in (out / "README.md").read_text() and "lora" in (out / "README.md").read_text()
    assert _no_leftovers(out.parent, "nothing") and [p.name for p in out.parent.iterdir()] == ["merged"]

    merged = AutoModelForCausalLM.from_pretrained(str(out))
    assert not any("lora" in name for name, _ in merged.named_parameters())
    expected = _adapter_logits(lora_run, AutoModelForCausalLM)
    assert (_logits(merged) - expected).abs().max() < 1e-4
    # the adapter changes the model, so the comparison is not trivially of the base with itself
    base = AutoModelForCausalLM.from_pretrained(json.loads((lora_run / "run.json").read_text())["model"])
    assert (_logits(base) - expected).abs().max() > 1e-3
    assert AutoTokenizer.from_pretrained(str(out)).pad_token == "<pad>"


def test_merge_of_a_classifier_reloads_with_the_same_logits(bert_run, tmp_path):
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "merged-cls"
    result = merge(bert_run, out)
    assert result.task == "seq-cls" and result.max_abs_diff < 1e-4

    merged = AutoModelForSequenceClassification.from_pretrained(str(out))
    assert merged.config.id2label == {0: "neg", 1: "pos"}
    expected = _adapter_logits(bert_run, AutoModelForSequenceClassification)
    assert expected.shape == (2, 2)
    assert (_logits(merged) - expected).abs().max() < 1e-4


# -- to_lora ----------------------------------------------------------------------------------------


def test_lokr_converts_to_a_lora_that_peft_loads(lokr_run, llama_base, tmp_path):
    from transformers import AutoModelForCausalLM

    full = to_lora(lokr_run, tmp_path / "lora-full", rank=32)  # the full rank of k_proj and v_proj
    low = to_lora(lokr_run, tmp_path / "lora-1", rank=1)

    assert full.kind == "lora" and full.method == "lokr" and full.lora_rank == 32 and low.lora_rank == 1
    assert full.relative_diff < 1e-4
    assert low.relative_diff > 10 * full.relative_diff and low.relative_diff > 1e-3
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= set(full.files)

    lora = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(llama_base)),
                                          str(tmp_path / "lora-full"))
    assert lora.peft_config["default"].peft_type == peft.PeftType.LORA
    expected = _adapter_logits(lokr_run, AutoModelForCausalLM)
    assert (_logits(lora) - expected).abs().max() < 1e-3


def test_float_rank_is_a_threshold_and_picks_ranks_per_layer(lokr_run, tmp_path):
    result = to_lora(lokr_run, tmp_path / "lora-threshold", rank=0.999)
    config = json.loads((tmp_path / "lora-threshold" / "adapter_config.json").read_text())
    assert config["rank_pattern"] and result.lora_rank == max(config["rank_pattern"].values())
    assert 1 <= result.lora_rank <= 32 and result.relative_diff < 0.05


def test_rank_larger_than_a_layer_is_refused_and_leaves_nothing(lokr_run, tmp_path):
    with pytest.raises(BadInputError, match="rank 64"):
        to_lora(lokr_run, tmp_path / "lora", rank=64)
    assert _no_leftovers(tmp_path, "lora")


@pytest.mark.parametrize("rank", [0, -1, 1.5, 0.0, True, "8"])
def test_invalid_ranks_are_refused(lokr_run, tmp_path, rank):
    with pytest.raises(BadInputError, match="rank"):
        to_lora(lokr_run, tmp_path / "lora", rank=rank)
    assert _no_leftovers(tmp_path, "lora")


# -- refusals ---------------------------------------------------------------------------------------


def test_prompt_tuning_cannot_merge_or_convert(prompt_run, tmp_path):
    with pytest.raises(BadInputError, match="cannot be merged"):
        merge(prompt_run, tmp_path / "merged")
    with pytest.raises(BadInputError, match="cannot be converted to LoRA"):
        to_lora(prompt_run, tmp_path / "lora", rank=4)
    assert list(tmp_path.iterdir()) == []


def test_without_the_plugin_peft_decides(prompt_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for f in prompt_run.iterdir():
        (run / f.name).write_bytes(f.read_bytes())
    record = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**record, "method": "someone-elses-prompts"}))

    with pytest.raises(BadInputError, match="cannot be merged"):
        merge(run, tmp_path / "merged")
    with pytest.raises(BadInputError, match="cannot be converted to LoRA"):
        to_lora(run, tmp_path / "lora", rank=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_existing_output_dir_is_refused(lora_run, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(BadInputError, match="exists; choose a new directory"):
        merge(lora_run, out)
    with pytest.raises(BadInputError, match="exists; choose a new directory"):
        to_lora(lora_run, out, rank=4)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert _no_leftovers(tmp_path, "nothing") and [p.name for p in tmp_path.iterdir()] == ["taken"]


def test_an_empty_output_dir_is_used(lora_run, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    result = merge(lora_run, out)
    assert "model.safetensors" in result.files and [p.name for p in tmp_path.iterdir()] == ["empty"]


@pytest.mark.parametrize("where", [".", "sub", "sub/deeper"])
def test_output_inside_the_run_is_refused(lora_run, where):
    before = sorted(p.name for p in lora_run.iterdir())
    with pytest.raises(BadInputError, match="inside"):
        merge(lora_run, lora_run / where)
    with pytest.raises(BadInputError, match="inside"):
        to_lora(lora_run, lora_run / where, rank=4)
    assert sorted(p.name for p in lora_run.iterdir()) == before


def test_missing_run_json_is_refused(lora_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for f in lora_run.iterdir():
        if f.name != "run.json":
            (run / f.name).write_bytes(f.read_bytes())
    with pytest.raises(BadInputError, match="not a finished autopeft run") as err:
        merge(run, tmp_path / "merged")
    assert "run.json" in str(err.value)
    with pytest.raises(BadInputError, match="not a finished autopeft run"):
        to_lora(run, tmp_path / "lora")
    (run / "run.json").write_text("{not json")
    with pytest.raises(BadInputError, match="not a finished autopeft run"):
        merge(run, tmp_path / "merged")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_full_model_run_is_already_merged(llama_base, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for f in llama_base.iterdir():
        (run / f.name).write_bytes(f.read_bytes())
    (run / "run.json").write_text(json.dumps({"model": str(llama_base), "task": "causal-lm", "method": "full",
                                              "data": {"labels": None}}))
    with pytest.raises(BadInputError, match="already a full model.*AutoModelForCausalLM"):
        merge(run, tmp_path / "merged")
    with pytest.raises(BadInputError, match="cannot be converted to LoRA"):
        to_lora(run, tmp_path / "lora")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_failure_while_writing_leaves_nothing(lora_run, tmp_path, monkeypatch):
    import autopeft.training.export as export

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(export, "_merged_card", broken)
    out = tmp_path / "new" / "merged"
    with pytest.raises(OSError, match="disk full"):
        merge(lora_run, out)
    assert list(tmp_path.iterdir()) == []
