"""Byte sizes as people write them: ``12GB`` is 12 * 10**9, ``12GiB`` is 12 * 2**30."""

from __future__ import annotations

import re

from .errors import BadInputError

_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
    "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
}
_SIZE = re.compile(r"^\s*(?P<num>[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*(?P<unit>[a-zA-Z]*)\s*$")


def parse_size(text: str | int | float, what: str = "size") -> int:
    """Parse ``text`` into a number of bytes; raise BadInputError naming ``what`` if it is not one."""
    if isinstance(text, bool):
        raise BadInputError(f"{what} must be a size such as 12GB or 512MiB, got {text!r}")
    if isinstance(text, (int, float)):
        if text <= 0:
            raise BadInputError(f"{what} must be positive, got {text!r}")
        return int(text)
    match = _SIZE.match(str(text))
    if not match:
        raise BadInputError(f"{what} must be a size such as 12GB or 512MiB, got {text!r}")
    unit = match["unit"].lower()
    if unit not in _UNITS:
        raise BadInputError(
            f"{what} has an unknown unit {match['unit']!r} in {text!r}; use B, KB, MB, GB, TB or KiB, MiB, GiB, TiB"
        )
    value = float(match["num"]) * _UNITS[unit]
    if value <= 0:
        raise BadInputError(f"{what} must be positive, got {text!r}")
    return int(value)


def format_size(n: int | float) -> str:
    """Human-readable decimal size: 1.23 GB, 456 MB, 12 KB."""
    n = float(n)
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}" if n / scale < 100 else f"{n / scale:.0f} {unit}"
    return f"{int(n)} B"


def format_count(n: int) -> str:
    """Parameter counts: 9.18M, 3.21B, 129K."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)
