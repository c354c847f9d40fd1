"""Exporting a finished run: merge its adapter into the base weights, or convert it to a LoRA adapter.

    merge(run_dir, output_dir)      a plain transformers model (safetensors) with the adapter folded in;
                                    loads with AutoModelFor...from_pretrained, needs no PEFT
    to_lora(run_dir, output_dir)    a LoRA adapter approximating the run's adapter (for servers and
                                    libraries that only take LoRA), by a truncated SVD of each layer's
                                    weight update; ``rank`` is an int, or a float threshold of the
                                    explained energy (PEFT picks each layer's rank)

Both reload what they wrote the way a user would and compare its logits with the trained adapter's
on a fixed probe batch, and report the difference. Everything is written into a temporary sibling
of ``output_dir`` that is renamed into place at the end, so a failure leaves no half-written export.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from ..errors import AutopeftError, BadInputError, first_line
from ..methods.base import DATA_DEPENDENT_LORA_INITS
from ..tasks import AUTO_CLASSES, CLASSIFICATION_TASKS, PIPELINE_TAGS, TASKS
from .outputs import RECORD_FILE

log = logging.getLogger("autopeft")

ADAPTER_CONFIG = "adapter_config.json"
_PROBE_SEED = 1234
_PROBE_SHAPE = (2, 16)  # rows x tokens


class ExportResult(BaseModel):
    """What an export wrote, and how closely it reproduces the trained adapter."""

    kind: Literal["merged", "lora"]
    run_dir: str
    output_dir: str
    method: str
    base_model: str
    task: str
    #: largest |logit difference| between the exported model and the trained adapter on a probe batch
    max_abs_diff: float
    #: ||difference|| / ||logits of the trained adapter||, on the same probe
    relative_diff: float
    #: for a LoRA export: its rank (the largest over layers)
    lora_rank: int | None = None
    #: file names written in output_dir
    files: list[str]


def merge(run_dir, output_dir, *, allow_pickle: bool = False, trust_remote_code: bool = False) -> ExportResult:
    """Fold the run's adapter into the base weights and save a standalone transformers model.

    The merged model is saved in the base checkpoint's dtype when that is half precision (fp32 otherwise),
    with the run's tokenizer and a short model card.
    """
    import torch

    run, out = Path(run_dir), Path(output_dir)
    record = _read_record(run)
    _check_output_dir(run, out)
    _check_exportable(
        run, record, "merge", allow_pickle,
        full_model=f"the run holds no adapter: it is already a full model; load it with "
                   f"transformers.{AUTO_CLASSES[record['task']]}.from_pretrained({str(run)!r})",
        incapable="cannot be merged into the base weights (its adapter is not a weight update); "
                  "use the adapter as it is")

    tokenizer = _run_tokenizer(run, record, trust_remote_code)
    save_dtype = _half_dtype_of_base(record["model"], trust_remote_code)
    peft_model = _load_trained(record, run, tokenizer, allow_pickle=allow_pickle,
                               trust_remote_code=trust_remote_code)
    config = peft_model.peft_config[peft_model.active_adapter]
    if config.is_prompt_learning:
        raise BadInputError(f"a {config.peft_type} adapter adds virtual tokens and cannot be merged into the "
                            f"base weights; use the adapter as it is", source=str(run))
    probe = _probe(peft_model)
    expected = _logits(peft_model, probe)
    try:
        merged = peft_model.merge_and_unload()
    except Exception as exc:
        raise BadInputError(f"the {record['method']} adapter cannot be merged: {first_line(exc)}",
                            source=str(run)) from None
    if save_dtype is not None:
        merged = merged.to(save_dtype)

    def write(staging: Path) -> dict[str, Any]:
        merged.save_pretrained(str(staging))  # safetensors
        tokenizer.save_pretrained(str(staging))
        (staging / "README.md").write_text(_merged_card(record, out), encoding="utf-8")
        import transformers

        auto = getattr(transformers, AUTO_CLASSES[record["task"]])
        reloaded = auto.from_pretrained(str(staging), dtype=torch.float32, use_safetensors=True,
                                        trust_remote_code=trust_remote_code)
        return _compare(expected, _logits(reloaded, probe))

    diffs = _write_atomically(out, write)
    return ExportResult(kind="merged", run_dir=str(run), output_dir=str(out), method=record["method"],
                        base_model=record["model"], task=record["task"], files=_files(out), **diffs)


def to_lora(run_dir, output_dir, *, rank: int | float = 64, allow_pickle: bool = False,
            trust_remote_code: bool = False) -> ExportResult:
    """Convert the run's adapter into a LoRA adapter of ``rank`` (an int, or a float in (0, 1]: the share
    of each layer's update energy to keep, which picks a rank per layer)."""
    run, out = Path(run_dir), Path(output_dir)
    record = _read_record(run)
    _check_rank(rank)
    _check_output_dir(run, out)
    _check_exportable(
        run, record, "lora_convertible", allow_pickle,
        full_model="the run holds a full model, not an adapter, so it cannot be converted to LoRA",
        incapable="cannot be converted to LoRA (its adapter is not a per-layer weight update PEFT can factorise)")

    from peft import PeftModel
    from peft.tuners.lora.conversion import save_as_lora

    tokenizer = _run_tokenizer(run, record, trust_remote_code)
    peft_model = _load_trained(record, run, tokenizer, allow_pickle=allow_pickle,
                               trust_remote_code=trust_remote_code)
    probe = _probe(peft_model)
    expected = _logits(peft_model, probe)

    def write(staging: Path) -> dict[str, Any]:
        import warnings

        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Converting a PEFT adapter to LoRA that is already")
                save_as_lora(staging, peft_model, rank=rank)
        except TypeError as exc:  # PEFT: a layer type that has no LoRA equivalent
            raise BadInputError(f"the {record['method']} adapter cannot be converted to LoRA: "
                                f"{first_line(exc)}", source=str(run)) from None
        except ValueError as exc:  # PEFT: a rank larger than a layer's weight, or an unsupported bias
            raise BadInputError(f"cannot convert to LoRA at rank {rank}: {first_line(exc)}; choose a lower "
                                f"rank, or a float such as 0.99 to keep that share of each layer's update",
                                source="--rank") from None
        tokenizer.save_pretrained(str(staging))
        fresh = _load_base(record, tokenizer, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
        lora = PeftModel.from_pretrained(fresh, str(staging))
        return {**_compare(expected, _logits(lora, probe)), "lora_rank": _lora_rank(staging / ADAPTER_CONFIG)}

    result = _write_atomically(out, write)
    return ExportResult(kind="lora", run_dir=str(run), output_dir=str(out), method=record["method"],
                        base_model=record["model"], task=record["task"], files=_files(out), **result)


# -- checks ---------------------------------------------------------------------------------------


def _read_record(run: Path) -> dict[str, Any]:
    path = run / RECORD_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        why = "missing" if not path.exists() else f"unreadable ({first_line(exc)})"
        raise BadInputError(f"not a finished autopeft run: {RECORD_FILE} is {why}", source=str(path)) from None
    if not isinstance(record, dict):
        raise BadInputError("not a finished autopeft run: not a JSON object", source=str(path))
    missing = [key for key in ("model", "task", "method") if not isinstance(record.get(key), str)]
    if missing:
        raise BadInputError(f"not a finished autopeft run: no {', '.join(missing)}", source=str(path))
    if record["task"] not in TASKS:
        raise BadInputError(f"unknown task {record['task']!r} (autopeft exports {', '.join(TASKS)})",
                            source=str(path))
    return record


def _check_output_dir(run: Path, out: Path) -> None:
    run_abs, out_abs = run.resolve(), out.resolve()
    if out_abs == run_abs or run_abs in out_abs.parents:
        raise BadInputError("the output directory is (inside) the run directory; choose a directory outside it",
                            source=str(out))
    if out.exists() and not out.is_dir():
        raise BadInputError("exists and is not a directory; choose a new directory", source=str(out))
    if out.is_dir() and any(out.iterdir()):
        raise BadInputError("exists; choose a new directory", source=str(out))


def _check_rank(rank) -> None:
    if isinstance(rank, bool) or not isinstance(rank, (int, float)):
        raise BadInputError(f"the rank must be an integer or a float threshold, not {rank!r}", source="--rank")
    if isinstance(rank, int) and rank < 1:
        raise BadInputError(f"the rank must be at least 1, not {rank}", source="--rank")
    if isinstance(rank, float) and not 0 < rank <= 1:
        raise BadInputError(f"a float rank is the share of each layer's update to keep, in (0, 1]; got {rank}",
                            source="--rank")


def _check_exportable(run: Path, record: dict, capability: str, allow_pickle: bool, *, full_model: str,
                      incapable: str) -> None:
    """The run holds an adapter, of a method able to do ``capability``, in files we may load."""
    if not (run / ADAPTER_CONFIG).is_file():
        raise BadInputError(full_model, source=str(run))
    method = _plugin(record["method"])
    if method is not None and not getattr(method.capabilities, capability):
        raise BadInputError(f"method {method.name} {incapable}", source=str(run))
    _check_adapter_files(run, allow_pickle)


def _check_adapter_files(run: Path, allow_pickle: bool) -> None:
    if (run / "adapter_model.safetensors").is_file():
        return
    if (run / "adapter_model.bin").is_file():
        if not allow_pickle:
            raise BadInputError("the adapter is a pickle file (adapter_model.bin), which can run code when "
                                "loaded; pass --allow-pickle if you trust it", source=str(run))
        return
    raise BadInputError("the run holds adapter_config.json but no adapter weights", source=str(run))


def _plugin(name: str):
    """The installed method called ``name``, or None when no plugin provides it (PEFT then decides)."""
    from ..methods.registry import get_method
    from ..errors import UnknownMethodError

    try:
        return get_method(name)
    except UnknownMethodError:
        log.info("method %s is not installed; relying on PEFT to tell what it can export", name)
        return None


# -- loading ----------------------------------------------------------------------------------------


def _run_tokenizer(run: Path, record: dict, trust_remote_code: bool):
    """The tokenizer the run saved; the base model's when the run has none."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(run), trust_remote_code=trust_remote_code)
    except Exception as exc:
        log.info("no tokenizer in %s (%s); using the base model's", run, first_line(exc))
    from ..models import load_tokenizer

    return load_tokenizer(record["model"], trust_remote_code=trust_remote_code)


def _label2id(record: dict) -> dict[str, int] | None:
    labels = (record.get("data") or {}).get("labels")
    if record["task"] not in CLASSIFICATION_TASKS or not labels:
        return None
    return {str(name): i for i, name in enumerate(labels)}


def _load_base(record: dict, tokenizer, *, allow_pickle: bool, trust_remote_code: bool):
    from transformers.utils import logging as hf_logging

    from ..models import load_model

    # a classifier's head is missing from the base checkpoint by design (the adapter holds it): no warning
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        net = load_model(record["model"], record["task"], label2id=_label2id(record), allow_pickle=allow_pickle,
                         trust_remote_code=trust_remote_code, pad_token_id=getattr(tokenizer, "pad_token_id", None))
    finally:
        hf_logging.set_verbosity(verbosity)
    return net.eval()


def _load_trained(record: dict, run: Path, tokenizer, *, allow_pickle: bool, trust_remote_code: bool):
    """The base with the run's adapter, as trained (not merged)."""
    from peft import PeftModel

    base = _load_base(record, tokenizer, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    try:
        model = PeftModel.from_pretrained(base, str(run))
    except Exception as exc:
        raise BadInputError(f"cannot load the adapter on {record['model']}: {first_line(exc)}",
                            source=str(run)) from None
    init = getattr(model.peft_config[model.active_adapter], "init_lora_weights", None)
    if isinstance(init, str) and init.startswith(DATA_DEPENDENT_LORA_INITS):
        log.warning("the adapter was saved with init_lora_weights=%r: PEFT recomputes its starting point from "
                    "the base weights when loading it, which can differ slightly from the one it trained from",
                    init)
    return model.eval()


def _half_dtype_of_base(model: str, trust_remote_code: bool):
    """The base checkpoint's dtype when it is fp16/bf16, so the merged model is not twice its size."""
    import torch
    from transformers import AutoConfig

    from ..models import resolve

    try:
        config = AutoConfig.from_pretrained(resolve(model), trust_remote_code=trust_remote_code)
    except Exception:
        return None
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."), None)
    return dtype if dtype in (torch.float16, torch.bfloat16) else None


# -- comparing --------------------------------------------------------------------------------------


def _probe(model):
    """A fixed batch of token ids (no pad token, so classifiers read the last position of every row)."""
    import torch

    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.randint(0, vocab, _PROBE_SHAPE, generator=torch.Generator().manual_seed(_PROBE_SEED))
    pad = getattr(model.config, "pad_token_id", None)
    if isinstance(pad, int) and vocab > 1:
        ids[ids == pad] = (pad + 1) % vocab
    return ids


def _logits(model, ids):
    import torch

    model.eval()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    return out.logits.float()


def _compare(expected, actual) -> dict[str, float]:
    if expected.shape != actual.shape:
        raise AutopeftError(f"the exported model gives logits of shape {tuple(actual.shape)}, the adapter "
                            f"{tuple(expected.shape)}; nothing was written")
    diff = (actual - expected).abs()
    norm, diff_norm = float(expected.norm()), float(diff.norm())
    return {"max_abs_diff": float(diff.max()), "relative_diff": diff_norm / norm if norm else diff_norm}


def _lora_rank(config_path: Path) -> int:
    config = json.loads(config_path.read_text(encoding="utf-8"))
    ranks = [int(config.get("r") or 0), *(int(r) for r in (config.get("rank_pattern") or {}).values())]
    return max(ranks)


# -- writing ----------------------------------------------------------------------------------------


def _write_atomically(out: Path, write) -> dict[str, Any]:
    """Run ``write(staging)`` in a temporary sibling of ``out``, then rename it to ``out``.

    On any failure the staging dir, and the parent dirs made for it, are removed."""
    made = [p for p in [out.parent, *out.parent.parents] if not p.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        result = write(staging)
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for parent in made:  # innermost first
            try:
                parent.rmdir()
            except OSError:
                break
        raise
    return result


def _files(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir())


def _merged_card(record: dict, out: Path) -> str:
    auto = AUTO_CLASSES[record["task"]]
    tag = PIPELINE_TAGS[record["task"]]
    return "\n".join([
        "---", "library_name: transformers", "tags:", "- autopeft", f"- {record['method']}", "- merged",
        f"pipeline_tag: {tag}", "---", "",
        f"# {record['method']} fine-tune of {record['model']}, merged", "",
        f"A merged model: the **{record['method']}** adapter trained with autopeft has been folded into the "
        f"weights of the base model `{record['model']}`, so it loads and runs like the base, without PEFT "
        f"and without adapter overhead.", "",
        "## Use", "", "```python", f"from transformers import {auto}, AutoTokenizer",
        f"model = {auto}.from_pretrained(\"{out}\")", f"tokenizer = AutoTokenizer.from_pretrained(\"{out}\")",
        "```", ""])
