"""Estimating many configurations in one call: each that cannot be estimated gets its own failure, the
rest are still computed (``autopeft estimate`` with several ``--peft-config`` files, and
benchmarks/cost_model_peft.py over a whole results directory)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

from pydantic import BaseModel, Field

from .costmodel import Estimate, estimate, task_of
from .errors import AutopeftError, BadInputError, first_line


class EstimateFailure(BaseModel):
    """Why one configuration of a batch could not be estimated."""

    source: str = Field(description="the configuration: its adapter config file, or the caller's label")
    error: str
    bad_input: bool = Field(description="the input was wrong (a BadInputError), not autopeft or a plugin")


def estimate_each(items: Iterable[dict[str, Any]], *, keep_going: bool = True,
                  **common: Any) -> list[Estimate | EstimateFailure]:
    """One :func:`autopeft.costmodel.estimate` per item, in order: an item holds the keyword arguments
    that differ between items and ``source``, a label (default: its ``peft_config`` where that is a
    path); ``common`` holds the rest. ``peft_config`` may be a dict or the path of an adapter config.
    Each model's config is loaded once for all items.

    :param keep_going: True: an item that fails becomes an :class:`EstimateFailure` and the rest go on;
        False: its error propagates (one configuration: one clear error).
    """
    from .methods.adapter_config import read_adapter_config
    from .models import default_model, load_config

    loaded: dict[str, Any] = {}
    results: list[Estimate | EstimateFailure] = []
    for item in items:
        kwargs = {**common, **item}
        source = str(kwargs.pop("source", None) or kwargs.get("peft_config") or kwargs.get("method"))
        try:
            if isinstance(kwargs.get("peft_config"), (str, Path)):
                kwargs["peft_config"] = read_adapter_config(kwargs["peft_config"])
            if kwargs.get("config") is None:
                name = kwargs.get("model") or default_model(kwargs.get("task") or task_of(kwargs.get("peft_config"))
                                                            or "causal-lm")
                if name not in loaded:
                    loaded[name] = load_config(name, trust_remote_code=kwargs.get("trust_remote_code", False))
                kwargs.update(model=name, config=loaded[name])
            results.append(estimate(**kwargs))
        except AutopeftError as exc:
            if not keep_going:
                raise
            results.append(EstimateFailure(source=source, error=_reason(exc, source),
                                           bad_input=isinstance(exc, BadInputError)))
        except Exception as exc:  # a library's or a plugin's bug: this item fails, the others still run
            if not keep_going or os.environ.get("AUTOPEFT_DEBUG"):
                raise
            results.append(EstimateFailure(source=source, error=f"unexpected {type(exc).__name__}: {first_line(exc)}",
                                           bad_input=False))
    return results


def _reason(exc: AutopeftError, source: str) -> str:
    """The error's message, less the file name where it is the item's own (the entry names it already)."""
    if isinstance(exc, BadInputError) and exc.source == source:
        return f"line {exc.line}: {exc.problem}" if exc.line is not None else exc.problem
    return str(exc)


def exit_status(results: list[Estimate | EstimateFailure]) -> int:
    """0 when every item was estimated; 2 when every failure was bad input; else 1."""
    failures = [r for r in results if isinstance(r, EstimateFailure)]
    if not failures:
        return 0
    return 2 if all(f.bad_input for f in failures) else 1
