"""A user's limits on a fine-tune, and fitting a candidate method under them.

A candidate that would not fit the memory budget as asked is not dropped at once: gradient
checkpointing, then smaller micro-batches with gradient accumulation (same effective batch) are
tried first, each checked with the static cost model. Every exclusion keeps its reason and how far
over the limit it was, so that "nothing fits" can list the nearest misses with their numbers.
"""

from __future__ import annotations

import math
import re
from typing import Callable, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..errors import BadInputError, check_names
from ..sizes import format_count, format_size, parse_size

Requirement = Literal["merge", "quantized", "lora-convertible"]
_CAPABILITY = {"merge": "merge", "quantized": "quantized", "lora-convertible": "lora_convertible"}
_LACKS = {"merge": "cannot be merged into the base", "quantized": "cannot train on a quantized base",
          "lora-convertible": "cannot be converted to LoRA"}
_DURATION = re.compile(r"^\s*(?:(?P<h>\d+(?:\.\d+)?)\s*h)?\s*(?:(?P<m>\d+(?:\.\d+)?)\s*m(?:in)?)?\s*"
                       r"(?:(?P<s>\d+(?:\.\d+)?)\s*s?)?\s*$", re.IGNORECASE)


class Constraints(BaseModel):
    """Limits that every candidate must respect. Sizes in bytes, time in seconds; None: no limit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_vram: int | None = Field(default=None, gt=0, description="peak memory per device")
    max_adapter_size: int | None = Field(default=None, gt=0, description="bytes of the saved adapter")
    max_rank: int | None = Field(default=None, ge=1)
    max_trainable_params: int | None = Field(default=None, ge=1)
    time_budget: float | None = Field(default=None, gt=0, description="seconds for the whole fine-tune")
    methods: tuple[str, ...] | None = Field(default=None, description="only these methods")
    exclude: tuple[str, ...] = ()
    require: tuple[Requirement, ...] = ()

    @classmethod
    def parse(cls, *, max_vram=None, max_adapter_size=None, max_rank=None, max_trainable_params=None,
              time_budget=None, methods=None, exclude=None, require=None) -> Constraints:
        """Constraints from what a person types: ``12GB``, ``20MiB``, ``2h30m``, ``lora,dora``."""
        return cls(
            max_vram=parse_size(max_vram, "--max-vram") if max_vram is not None else None,
            max_adapter_size=parse_size(max_adapter_size, "--max-adapter-size") if max_adapter_size is not None else None,
            max_rank=_positive_int(max_rank, "--max-rank"),
            max_trainable_params=_positive_int(max_trainable_params, "--max-trainable-params"),
            time_budget=parse_duration(time_budget) if time_budget is not None else None,
            methods=tuple(split_names(methods)) if methods else None,
            exclude=tuple(split_names(exclude)),
            require=tuple(_requirements(require)),
        )

    def check_names(self) -> None:
        """Refuse a method name in ``methods`` or ``exclude`` that no installed method answers to
        (naming the closest), and an ``exclude`` that leaves none of ``methods``: a typo would
        otherwise drop a method the user asked for, or train the one they meant to keep out."""
        from ..methods.registry import check_method_names, get_method

        if self.methods is not None and not self.methods:
            raise BadInputError("--methods names no method; give names such as lora,dora", source="--methods")
        check_method_names(self.methods or (), source="--methods")
        check_method_names(self.exclude, source="--exclude")
        if self.methods and self.exclude:
            excluded = {get_method(name).name for name in self.exclude}
            if {get_method(name).name for name in self.methods} <= excluded:
                raise BadInputError(f"--exclude {','.join(self.exclude)} leaves none of --methods "
                                    f"{','.join(self.methods)}", source="--exclude")


class Fit(BaseModel):
    """How a candidate trains within the memory budget."""

    batch_size: int = Field(description="micro-batch per step")
    gradient_accumulation_steps: int
    gradient_checkpointing: bool
    peak_memory_bytes: int


class Verdict(BaseModel):
    """Whether a candidate satisfies the constraints, and if not why and by how much."""

    feasible: bool
    reasons: list[str] = Field(default_factory=list)
    fit: Fit | None = None
    overshoot: float = Field(default=0.0, description="largest ratio over a limit, minus 1 (0 when feasible)")


def parse_duration(text: str | int | float, option: str = "--time-budget") -> float:
    """Seconds in ``90``, ``90s``, ``45m``, ``2h``, ``1h30m``; errors name ``option``."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        match = _DURATION.match(str(text))
        if not match or not any(match.groupdict().values()):
            raise BadInputError(f"{option} must be a duration such as 90m, 2h or 1h30m, got {text!r}")
        seconds = sum(float(match[k] or 0) * scale for k, scale in (("h", 3600), ("m", 60), ("s", 1)))
    if seconds <= 0:
        raise BadInputError(f"{option} must be positive, got {text!r}")
    return seconds


def method_reasons(method, constraints: Constraints) -> list[str]:
    """Reasons the method itself is ruled out (by name or capability), before any cost is computed."""
    reasons = []
    names = {method.name, *getattr(method, "aliases", ())}
    if constraints.methods is not None and not names & set(constraints.methods):
        reasons.append("not among --methods")
    if names & set(constraints.exclude):
        reasons.append("excluded by --exclude")
    for need in constraints.require:
        if not getattr(method.capabilities, _CAPABILITY[need]):
            reasons.append(_LACKS[need])
    reason = method.unavailable_reason()
    if reason:
        reasons.append(f"unavailable here: {reason}")
    return reasons


def check(method, settings, constraints: Constraints, batch_size: int,
          estimate_at: Callable[[int], object], *, margin: float = 1.0, memory_name: str = "--max-vram") -> Verdict:
    """Check one candidate against every limit, finding a micro-batch and checkpointing that fit.

    :param estimate_at: the cost model at a micro-batch size (an :class:`autopeft.Estimate`).
    :param margin: plan memory with this share of ``max_vram``, leaving the rest for estimate error.
    :param memory_name: what ``max_vram`` is called in reasons (an accelerator's memory when planning for one).
    """
    reasons = method_reasons(method, constraints)
    if reasons:
        return Verdict(feasible=False, reasons=reasons, overshoot=math.inf)
    over: list[float] = []
    rank = rank_of(settings)
    if constraints.max_rank is not None and rank is not None and rank > constraints.max_rank:
        reasons.append(f"rank {rank} > --max-rank {constraints.max_rank}")
        over.append(rank / constraints.max_rank)
    full = estimate_at(batch_size)
    if constraints.max_trainable_params is not None and full.trainable_params > constraints.max_trainable_params:
        reasons.append(f"{format_count(full.trainable_params)} trainable parameters > "
                       f"{format_count(constraints.max_trainable_params)}")
        over.append(full.trainable_params / constraints.max_trainable_params)
    if constraints.max_adapter_size is not None and full.adapter_bytes > constraints.max_adapter_size:
        reasons.append(f"adapter {format_size(full.adapter_bytes)} > {format_size(constraints.max_adapter_size)}")
        over.append(full.adapter_bytes / constraints.max_adapter_size)
    limit = int(constraints.max_vram * margin) if constraints.max_vram is not None else None
    fit, smallest = _fit_memory(full, batch_size, limit, estimate_at)
    if fit is None:
        allowed = f"{memory_name} {format_size(constraints.max_vram)}"
        if margin < 1:
            allowed = f"{format_size(limit)} ({allowed} less {1 - margin:.0%} for estimate error)"
        reasons.append(f"needs {format_size(smallest)} even at micro-batch 1 with gradient checkpointing > {allowed}")
        over.append(smallest / limit)
    if reasons:
        return Verdict(feasible=False, reasons=reasons, overshoot=max(over) - 1)
    return Verdict(feasible=True, fit=fit)


def nearest_misses(verdicts: dict[str, Verdict], n: int = 3) -> list[tuple[str, Verdict]]:
    """The excluded candidates closest to fitting, closest first (name- or capability-excluded last)."""
    missed = [(name, v) for name, v in verdicts.items() if not v.feasible]
    return sorted(missed, key=lambda item: item[1].overshoot)[:n]


def rank_of(settings) -> int | None:
    """The adapter rank a method's settings declare, if they have one."""
    for key in ("r", "rank", "init_r"):
        value = getattr(settings, key, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _fit_memory(full, batch_size: int, limit: int | None, estimate_at) -> tuple[Fit | None, int]:
    """The first of: as asked; with checkpointing; then halved micro-batches (without, then with
    checkpointing) that fits ``limit``. Returns (fit or None, the smallest peak seen)."""
    micro = batch_size
    estimate = full
    smallest = full.peak_memory_bytes_without_checkpointing
    while True:
        for checkpointing in (False, True):
            peak = (estimate.peak_memory_bytes_with_checkpointing if checkpointing
                    else estimate.peak_memory_bytes_without_checkpointing)
            smallest = min(smallest, peak)
            if limit is None or peak <= limit:
                return Fit(batch_size=micro, gradient_accumulation_steps=math.ceil(batch_size / micro),
                           gradient_checkpointing=checkpointing, peak_memory_bytes=peak), peak
        if micro == 1:
            return None, smallest
        micro = max(1, micro // 2)
        estimate = estimate_at(micro)


def _positive_int(value, option: str) -> int | None:
    if value is None:
        return None
    try:
        number = int(str(value).replace("_", "").replace(",", ""))
    except ValueError:
        number = None
    if number is None or number < 1:
        raise BadInputError(f"{option} must be a positive whole number, got {value!r}")
    return number


def split_names(value) -> list[str]:
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else [n for v in value for n in str(v).split(",")]
    return [n.strip().lower() for n in items if n.strip()]


def _requirements(value) -> list[str]:
    names = split_names(value)
    check_names("capability", names, list(_CAPABILITY), source="--require")
    return names
