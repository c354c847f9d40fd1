"""Capabilities found by trying them, not taken from what a plugin declares.

Each probe exercises one capability on a tiny random-weight model on the CPU (no download), as PEFT's
own ``scripts/generate_method_capabilities.py`` does: merge the trained adapter into the base and get
the same outputs; add a second adapter beside the first and switch between them; convert the adapter
to LoRA with PEFT's ``convert_to_lora``; wrap each layer type in a one-layer model. Quantised bases
need CUDA and bitsandbytes, so on the CPU that one is read from the method's PEFT tuner package
(a bitsandbytes module, or PEFT's generic quantisation backend). Every finding says where it came
from; a probe that cannot run says "unknown" with the reason, never a guess.

Probing every installed method takes a minute, so results are kept: the built-ins' in the file
``autopeft/resources/capabilities.json`` (written by ``python -m autopeft.methods.probes``, checked
against a fresh probe by the conformance tests), any other method's in ``$AUTOPEFT_HOME`` after its
first probe. Both are keyed by the method and the versions of its plugin, of PEFT and of torch.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from .base import Finding, Method, PeftMethod, ProbedCapabilities, build_method, shapes_only

#: the tiny models probes and conformance checks use: 2 layers, 64 wide; the Llama has biases, so
#: that bias-only methods have something to train
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "llama": {
        "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 256,
        "max_position_embeddings": 128, "tie_word_embeddings": True, "attention_bias": True, "mlp_bias": True,
        "pad_token_id": 0,
    },
    "bert": {
        "model_type": "bert", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "vocab_size": 256, "max_position_embeddings": 128,
    },
}
#: which tiny models each task is checked on
TASK_MODELS = {"causal-lm": ("llama",), "seq-cls": ("bert", "llama"), "token-cls": ("bert", "llama")}
#: the tokens every prompt of :func:`sample_batches` ends with (no random token is below 3)
ANSWER_HEADER = (2, 1, 2)
#: the capability flags of :class:`autopeft.Capabilities`, in the order ``autopeft methods`` shows them
CAPABILITIES = ("merge", "quantized", "multi_adapter", "lora_convertible")
#: layer types probed by wrapping a one-layer model (the name ``layer_types`` uses, and how to make one)
LAYER_TYPES = ("linear", "embedding", "conv1d", "conv2d", "gpt2-conv1d", "layernorm")

def tiny_model(task: str, arch: str | None = None, seed: int = 0):
    """A tiny random-weight model for ``task`` (``arch``: a key of TINY_CONFIGS)."""
    import torch
    import transformers
    from transformers import AutoConfig

    from ..tasks import AUTO_CLASSES

    torch.manual_seed(seed)
    values = dict(TINY_CONFIGS[arch or TASK_MODELS[task][0]])
    config = AutoConfig.for_model(values.pop("model_type"), **values, num_labels=2)
    return getattr(transformers, AUTO_CLASSES[task]).from_config(config)


def sample_batches(task: str, n: int = 1, *, batch_size: int = 4, seq_len: int = 24, seed: int = 0) -> list[dict]:
    """``n`` training batches for the tiny models, as the training collator makes them: random token
    ids (3 to 255) whose first third is a prompt ending in :data:`ANSWER_HEADER` (its labels -100 for a
    causal LM), the last row padded by two tokens on the right; classification labels alternate 0, 1
    (per row, or per word for token classification, where every third token is a word's second
    sub-token and padding, both labelled -100)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    prompt = seq_len // 3
    batches = []
    for _ in range(n):
        ids = torch.randint(3, 256, (batch_size, seq_len), generator=generator)
        ids[:, prompt - len(ANSWER_HEADER):prompt] = torch.tensor(ANSWER_HEADER)
        mask = torch.ones_like(ids)
        mask[-1, -2:] = 0
        ids[-1, -2:] = 0
        if task == "causal-lm":
            labels = ids.masked_fill(mask == 0, -100)
            labels[:, :prompt] = -100
        elif task == "token-cls":
            labels = (torch.arange(seq_len) % 2).repeat(batch_size, 1)
            labels[:, 2::3] = -100
            labels = labels.masked_fill(mask == 0, -100)
        else:
            labels = torch.arange(batch_size) % 2
        batches.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return batches


def build_with_sample_data(method: Method, model, settings, task: str):
    """``method.build`` on ``model``, given :func:`sample_batches` when it initialises from data."""
    batches = sample_batches(task, method.data_batches) if method.data_batches else None
    return build_method(method, model, settings, task, batches)


def probe_key(method: Method) -> str:
    """What a probe's result depends on: the method, its plugin's version, PEFT's and torch's."""
    from importlib.metadata import PackageNotFoundError, version

    def v(dist: str) -> str:
        try:
            return version(dist)
        except PackageNotFoundError:
            return "?"

    plugin = method.source if method.source not in ("unknown", "autopeft") else "autopeft"
    return f"{method.name}|{plugin} {v(plugin)}|peft {v('peft')}|torch {v('torch').split('+')[0]}"


def probe_capabilities(method: Method, settings: dict | None = None) -> ProbedCapabilities:
    """Probe every capability of ``method`` (``settings``: values that fit 64-wide layers; default the
    method's ``probe_settings``)."""
    import warnings

    from transformers.utils import logging as transformers_logging

    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # deprecation notes from the tiny models' forward passes
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _probe(method, method.probe_settings if settings is None else settings)
    finally:
        transformers_logging.set_verbosity(verbosity)


def _probe(method: Method, settings: dict) -> ProbedCapabilities:
    task = "causal-lm" if "causal-lm" in method.tasks else method.tasks[0]
    declared = method.capabilities
    unavailable = method.unavailable_reason()
    if unavailable or not isinstance(method, PeftMethod):
        note = f"not probed here: {unavailable}" if unavailable else "not a PEFT adapter: nothing to probe"
        return ProbedCapabilities(
            **{c: Finding(value=getattr(declared, c), source="declared", note=note) for c in CAPABILITIES},
            layer_types=None, key=probe_key(method))
    chosen = method.settings(settings)

    def built():
        base = tiny_model(task)
        these = method.settings_for_model(base, chosen)
        return build_with_sample_data(method, base, these, task), these

    def attempt(probe) -> Finding:
        try:
            model, these = built()
        except Exception as exc:
            return Finding(value=None, source="error", note=f"could not build: {_reason(exc)}")
        try:
            return probe(model, these)
        except Exception as exc:
            return Finding(value=False, source="probe", note=_reason(exc))

    return ProbedCapabilities(
        merge=attempt(lambda m, s: _probe_merge(m, task)),
        quantized=_probe_quantized(method, chosen, task),
        multi_adapter=attempt(lambda m, s: _probe_multi(method, m, s, task)),
        lora_convertible=attempt(lambda m, s: _probe_lora_conversion(m)),
        layer_types=_probe_layer_types(method, chosen, task),
        key=probe_key(method))


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


def _outputs(model, task):
    import torch

    ids = torch.randint(3, 256, (2, 12), generator=torch.Generator().manual_seed(1))
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float()


def _perturb(model) -> None:
    """Move every trainable value off its initial value, as training would: many adapters start as the
    identity, and merging an identity proves nothing."""
    import torch

    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and p.is_floating_point():
                p.add_(0.05 * torch.randn(p.shape, generator=generator).to(p.dtype))


def _close(a, b) -> bool:
    import torch

    return bool(torch.allclose(a, b, atol=1e-3 * max(1.0, float(a.abs().max())), rtol=1e-3))


def _probe_merge(model, task) -> Finding:
    if model.peft_config[model.active_adapter].is_prompt_learning:
        return Finding(value=False, source="probe", note="a prompt method changes the input, not the weights")
    _perturb(model)
    before = _outputs(model, task)
    merged = model.merge_and_unload()
    if any(type(m).__module__.startswith("peft.") for m in merged.modules()):
        return Finding(value=False, source="probe", note="adapter layers remain after merge_and_unload")
    after = _outputs(merged, task)
    if not _close(before, after):
        diff = float((before - after).abs().max())
        return Finding(value=False, source="probe", note=f"merged outputs differ by up to {diff:.3g}")
    return Finding(value=True, source="probe", note="merge_and_unload gives the same outputs")


def _probe_multi(method, model, settings, task) -> Finding:
    _perturb(model)
    first = _outputs(model, task)
    import dataclasses

    # loaded for serving: PEFT trains one adapter at a time (AdaLoRA refuses a second trainable one)
    model.add_adapter("second", dataclasses.replace(method.peft_config(settings, task), inference_mode=True))
    model.set_adapter("second")
    _outputs(model, task)
    model.set_adapter("default")
    if not _close(first, _outputs(model, task)):
        return Finding(value=False, source="probe", note="switching back to the first adapter changes its outputs")
    return Finding(value=True, source="probe", note="a second adapter loads beside the first and they switch")


def _probe_lora_conversion(model) -> Finding:
    from peft.tuners.lora.conversion import convert_to_lora

    if model.peft_config[model.active_adapter].is_prompt_learning:
        return Finding(value=False, source="probe", note="a prompt method has no weight delta to convert")
    _perturb(model)
    config, state = convert_to_lora(model, rank=4)
    if not state:
        return Finding(value=False, source="probe", note="convert_to_lora produced no weights")
    return Finding(value=True, source="probe", note="peft's convert_to_lora converts it")


def _probe_quantized(method, settings, task) -> Finding:
    """On the CPU, from the tuner's source: a bitsandbytes layer module, or PEFT's generic backend."""
    import importlib
    import importlib.util

    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

    from peft.config import PromptLearningConfig

    config_cls = PEFT_TYPE_TO_CONFIG_MAPPING.get(method.peft_type)
    if config_cls is not None and issubclass(config_cls, PromptLearningConfig):
        return Finding(value=True, source="peft-source", note="a prompt method leaves the base layers as they are")
    tuner = PEFT_TYPE_TO_TUNER_MAPPING.get(method.peft_type)
    if tuner is None:
        return Finding(value=None, source="error", note=f"PEFT has no tuner for {method.peft_type}")
    package = tuner.__module__.rsplit(".", 1)[0]
    if importlib.util.find_spec(f"{package}.bnb") is not None:
        return Finding(value=True, source="peft-source", note=f"{package}.bnb wraps bitsandbytes layers")
    for module in ("layer", "model"):
        spec = importlib.util.find_spec(f"{package}.{module}")
        if spec and spec.origin and "resolve_quantization_backend" in Path(spec.origin).read_text(encoding="utf-8"):
            return Finding(value=True, source="peft-source", note="uses PEFT's generic quantisation backend")
    return Finding(value=False, source="peft-source", note=f"{package} has no bitsandbytes layers")


def _probe_layer_types(method, settings, task) -> list[str] | None:
    """The layer types PEFT wraps with this method's config, each tried on a one-layer model."""
    import dataclasses

    import torch
    from peft import get_peft_model
    from peft.tuners.tuners_utils import BaseTunerLayer

    try:
        config = method.peft_config(settings, task)
    except Exception:
        return None
    if config.is_prompt_learning or not dataclasses.is_dataclass(config) or not hasattr(config, "target_modules"):
        return None

    class Host(torch.nn.Module):
        def __init__(self, layer):
            super().__init__()
            self.layer = layer

    makers = {
        "linear": lambda: torch.nn.Linear(64, 64), "embedding": lambda: torch.nn.Embedding(64, 64),
        "conv1d": lambda: torch.nn.Conv1d(64, 64, 3), "conv2d": lambda: torch.nn.Conv2d(64, 64, 3),
        "gpt2-conv1d": _gpt2_conv1d, "layernorm": lambda: torch.nn.LayerNorm(64),
    }
    found = []
    for name, make in makers.items():
        torch.manual_seed(0)
        fields = {f.name for f in dataclasses.fields(config)}
        changes: dict[str, Any] = {"target_modules": ["layer"], "task_type": None}
        for key in ("layers_to_transform", "layers_pattern", "modules_to_save", "rank_pattern", "alpha_pattern"):
            if key in fields:
                changes[key] = {} if key.endswith("_pattern") and key != "layers_pattern" else None
        if "feedforward_modules" in fields:  # IA3: which targets scale their input instead of their output
            changes["feedforward_modules"] = []
        if "fan_in_fan_out" in fields:
            changes["fan_in_fan_out"] = name == "gpt2-conv1d"
        with contextlib.suppress(Exception):
            # (an init computed from the weights or data, CorDA's or LoftQ's, changes values, not which layers)
            wrapped = get_peft_model(Host(make()), dataclasses.replace(shapes_only(config), **changes))
            if isinstance(wrapped.base_model.model.layer, BaseTunerLayer):
                found.append(name)
    return found


def _gpt2_conv1d():
    from transformers.pytorch_utils import Conv1D

    return Conv1D(64, 64)


def mismatches(method: Method, probed: ProbedCapabilities) -> list[str]:
    """Capabilities ``method`` declares that the probes found it lacks: one phrase each."""
    problems = []
    for name in CAPABILITIES:
        finding = getattr(probed, name)
        if getattr(method.capabilities, name) and finding.value is False:
            problems.append(f"declares {name} but the probe found otherwise ({finding.note})")
    if probed.layer_types is not None:
        # only the types a one-layer model can show; others ("attention", "block") are taken as declared
        missing = [t for t in method.layer_types if t in LAYER_TYPES and t not in probed.layer_types]
        if missing:
            problems.append(f"declares layer types {', '.join(missing)} that PEFT does not wrap "
                            f"(it wraps: {', '.join(probed.layer_types) or 'none'})")
    return problems


# the shipped results for the built-ins, and the per-user cache for every other method

SHIPPED = Path(__file__).resolve().parent.parent / "resources" / "capabilities.json"


def _cache_file() -> Path:
    home = Path(os.environ.get("AUTOPEFT_HOME") or Path.home() / ".cache" / "autopeft")
    return home / "capabilities.json"


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def known_capabilities(method: Method) -> ProbedCapabilities | None:
    """The stored probe of ``method`` for the installed versions, or None when there is none."""
    key = probe_key(method)
    for path in (SHIPPED, _cache_file()):
        found = _read(path).get(key)
        if found is not None:
            with contextlib.suppress(ValueError):
                return ProbedCapabilities.model_validate(found)
    return None


def capabilities_of(method: Method, probe_missing: bool = True) -> ProbedCapabilities | None:
    """The probed capabilities of ``method``: stored, or probed now and stored (``probe_missing``)."""
    found = known_capabilities(method)
    if found is not None or not probe_missing:
        return found
    found = probe_capabilities(method)
    store([found], _cache_file())
    return found


def store(results: list[ProbedCapabilities], path: Path) -> None:
    """Add ``results`` to the JSON file at ``path``, written whole (a temporary file, then renamed)."""
    data = _read(path)
    data.update({r.key: r.model_dump(mode="json") for r in results})
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(json.dumps(dict(sorted(data.items())), indent=1) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def main(argv: list[str] | None = None) -> int:
    """Probe every built-in method and write the shipped file (run after changing PEFT or a plugin)."""
    import argparse
    import sys

    from .registry import get_methods

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--out", default=str(SHIPPED))
    args = parser.parse_args(argv)
    builtins = [m for m in get_methods().values() if m.source == "autopeft"]
    print(f"probing {len(builtins)} methods (about {len(builtins) // 3 + 5} s)", file=sys.stderr)
    results = []
    for method in sorted(builtins, key=lambda m: m.name):
        results.append(probe_capabilities(method))
        problems = mismatches(method, results[-1])
        print(f"{method.name}: {'; '.join(problems) or 'as declared'}", file=sys.stderr)
    out = Path(args.out)
    if out.exists():
        out.unlink()  # the shipped file holds the current versions only
    store(results, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
