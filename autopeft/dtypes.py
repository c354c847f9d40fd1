"""Floating-point formats as people type them: autopeft's short names (``bf16``, ``fp16``, ``fp32``)
and torch's (``bfloat16``, ``float16``/``half``, ``float32``/``float``, with or without ``torch.``),
all meaning the same three formats, kept internally by their short names."""

from __future__ import annotations

SHORT_NAMES = ("bf16", "fp16", "fp32")

_ALIASES = {
    "bf16": "bf16", "bfloat16": "bf16",
    "fp16": "fp16", "float16": "fp16", "half": "fp16",
    "fp32": "fp32", "float32": "fp32", "float": "fp32",
}


def short_dtype(name: str) -> str | None:
    """``bf16``, ``fp16`` or ``fp32`` for any name of those formats (case-insensitive, ``torch.``
    prefix allowed); None for anything else."""
    key = str(name).strip().lower().removeprefix("torch.")
    return _ALIASES.get(key)


def accepted_names() -> list[str]:
    """Every name :func:`short_dtype` understands, short names first (for help and error messages)."""
    return list(SHORT_NAMES) + [name for name in _ALIASES if name not in SHORT_NAMES]
