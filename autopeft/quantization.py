"""Quantised bases, QLoRA-style: the frozen base's linear layers in 4 or 8 bits (bitsandbytes, on CUDA),
an adapter trained in full precision on top.

Which layers stay unquantised is transformers' own rule (:func:`transformers.quantizers.base.get_keys_to_not_convert`:
the output embedding, tied weights and the model's last parameter, plus the model's float32 modules)
and, for sequence classification, the whole head, which is trained: transformers' rule names only
the head's last parameter (``classifier.bias``), which matches no module, so it would quantise the
head that PEFT must train in full. ``torch.nn.Linear`` and GPT-2's ``Conv1D`` layers are converted.
The bytes of one converted layer of ``n`` weights and ``o`` output rows, as bitsandbytes stores them:

====== ============================================================================================
4bit   NF4 with double quantisation, blocks of 64: ``n/2`` packed weights + ``n/64`` 8-bit block
       scales + ``4 * n/(64*256)`` float32 scales of those scales + a 256-entry float32 code table
       and the 16-entry NF4 table
8bit   LLM.int8: ``n`` int8 weights + ``4 * o`` (one float32 scale per output row)
====== ============================================================================================

The rest of the base (embeddings, norms, the head) keeps the compute dtype. PEFT's
``prepare_model_for_kbit_training`` would also cast all of it to float32; autopeft does not, because
on a Llama-3.2-3B that adds 0.8 GB of float32 embeddings, more than half of what the 4-bit body
weighs, and the models' norms already compute in float32 internally.
"""

from __future__ import annotations

import math
from typing import Literal

from .tasks import CLASSIFICATION_TASKS

Quantization = Literal["4bit", "8bit"]
QUANTIZATIONS: tuple[str, ...] = ("4bit", "8bit")

#: bitsandbytes' 4-bit layout (blocksize of the weights, and of the second-level quantisation of their scales)
BLOCK = 64
SCALE_BLOCK = 256
CODE_TABLES = 256 * 4 + 16 * 4
#: the heads PEFT trains in full on a sequence-classification model (its SEQ_CLS modules_to_save)
SEQ_CLS_HEADS = ("classifier", "score")


def check_supported(quantize: str, method) -> None:
    """A BadInputError unless ``quantize`` is a known mode and ``method`` trains on a quantised base."""
    from .errors import BadInputError

    if quantize not in QUANTIZATIONS:
        raise BadInputError(f"must be one of {', '.join(QUANTIZATIONS)}, got {quantize!r}", source="--quantize")
    if method is not None and not method.capabilities.quantized:
        from .methods.registry import get_methods

        able = sorted(m.name for m in get_methods().values() if m.capabilities.quantized)
        raise BadInputError(f"method {method.name} cannot train on a quantized base; these can: {', '.join(able)}",
                            source="--quantize")


def require_here(quantize: str) -> None:
    """A MethodUnavailableError, before anything is loaded, when this machine cannot train on a
    ``quantize`` base."""
    from .errors import MethodUnavailableError

    reason = unavailable_reason()
    if reason:
        raise MethodUnavailableError(f"--quantize {quantize}: {reason}")


def unavailable_reason() -> str | None:
    """Why a quantised base cannot train on this machine, or None when it can."""
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        return "4-bit and 8-bit bases need a CUDA GPU (bitsandbytes' kernels), and this machine has none"
    if importlib.util.find_spec("bitsandbytes") is None:
        return "4-bit and 8-bit bases need bitsandbytes: pip install bitsandbytes"
    return None


def bnb_config(quantize: str, compute_dtype, keep: list[str]):
    """The transformers ``BitsAndBytesConfig`` for ``quantize`` ("4bit" or "8bit"), leaving the
    modules ``keep`` (from :func:`modules_to_keep`) unquantised."""
    from transformers import BitsAndBytesConfig

    if quantize == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype, llm_int8_skip_modules=keep)
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=keep)


def modules_to_keep(net, task: str) -> list[str]:
    """Names (transformers' patterns) of the modules of ``net`` to leave unquantised for ``task``."""
    from transformers.quantizers.base import get_keys_to_not_convert

    kept = {key.removesuffix(".bias") for key in get_keys_to_not_convert(net)}
    if task in CLASSIFICATION_TASKS:  # PEFT's SEQ_CLS and TOKEN_CLS train the same heads in full
        kept |= set(SEQ_CLS_HEADS)
    return sorted(kept)


def quantized_layers(net, task: str) -> list[tuple[int, int, object]]:
    """``(out_features, in_features, weight)`` of every layer of a plain transformers model that
    bitsandbytes converts when autopeft loads it for ``task``, by transformers' own matcher."""
    import torch
    from transformers.pytorch_utils import Conv1D
    from transformers.quantizers.quantizers_utils import should_convert_module

    kept = [*modules_to_keep(net, task), *(getattr(net, "_keep_in_fp32_modules", None) or [])]
    layers = []
    for name, module in net.named_modules():
        if not should_convert_module(name, kept):
            continue
        if type(module) is torch.nn.Linear:
            layers.append((module.out_features, module.in_features, module.weight))
        elif isinstance(module, Conv1D):  # GPT-2's transposed linear
            in_features, out_features = module.weight.shape
            layers.append((out_features, in_features, module.weight))
    return layers


def layer_bytes(out_features: int, in_features: int, quantize: str) -> int:
    """Bytes of one converted linear layer's weight (its bias, if any, keeps the compute dtype)."""
    n = out_features * in_features
    if quantize == "4bit":
        blocks = math.ceil(n / BLOCK)
        return math.ceil(n / 2) + blocks + 4 * math.ceil(blocks / SCALE_BLOCK) + CODE_TABLES
    if quantize == "8bit":
        return n + 4 * out_features
    raise ValueError(f"quantize must be one of {', '.join(QUANTIZATIONS)}, got {quantize!r}")


def bytes_saved(layers, quantize: str) -> int:
    """How many fewer bytes ``layers`` (from :func:`quantized_layers`) take once converted."""
    return sum(weight.numel() * weight.element_size() - layer_bytes(out_features, in_features, quantize)
               for out_features, in_features, weight in layers)
