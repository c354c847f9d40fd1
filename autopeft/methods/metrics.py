"""Task metrics: scores of what a causal-LM run generates against the references, and their registry.

A metric is a :class:`Metric` registered through the ``register_metrics`` hook, as methods are through
``register_methods``; the built-ins (``exact_match``, ``final_number``, ``json_valid``, ``json_equal``)
come in the same way, from the ``metrics`` entry point of the ``autopeft`` package (``plugins/metrics.py``).
A metric that is not a complete :class:`Metric` (see :func:`metric_problems`), that raises while
registering, or whose name is taken is skipped by name and listed in :func:`metric_failures`.
"""

from __future__ import annotations

import math
import os
import re
from typing import ClassVar, Literal

from pydantic import BaseModel, Field

from ..errors import UnknownMetricError, unknown_names
from .registry import PluginFailure, load_plugins, plugin_source, pm

_SAFE_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")
DIRECTIONS = ("higher", "lower")
#: metrics every causal-LM run reports: a task metric of that name would overwrite one
RESERVED = ("loss", "perplexity", "train_loss", "forgetting")
#: the entry point of the built-in metrics (for the hint when --plugins leaves them out)
BUILTIN_PLUGIN = "metrics"


class MetricInfo(BaseModel):
    """A metric as ``autopeft metrics --json`` lists it."""

    name: str
    description: str
    direction: Literal["higher", "lower"] = Field(description="which value is better")
    per_example: bool = Field(description="scored example by example (the run's score is their mean); false: "
                                          "scored on the whole set at once")
    source: str


class Metric:
    """A score of generated answers against references. Subclass it, set the class attributes and
    implement :meth:`score_one` (one example; a run's score is the mean) or :meth:`score` (the whole
    set at once, for metrics such as BLEU that are not a mean over examples)::

        name: str            # what users type after --metric: lowercase letters, digits, '_', '-', '.'
        description: str     # one line for `autopeft metrics`
        direction: str       # "higher" (default) or "lower": which value is better
        def score_one(self, prediction: str, reference: str) -> float
        def score(self, predictions: list[str], references: list[str]) -> float   # or this instead

    ``prediction`` is the model's greedy continuation of the example's prompt (special tokens removed,
    whitespace stripped), ``reference`` the example's response text (completion, output or last
    assistant turn). Optionally :meth:`reference_problem` says what makes a reference unusable: every
    reference is checked before training starts, so a bad one is reported by file and line at once.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    direction: ClassVar[str] = "higher"

    #: the distribution that registered the metric; set by the registry
    source: str = "unknown"

    @property
    def higher_is_better(self) -> bool:
        return self.direction == "higher"

    @property
    def per_example(self) -> bool:
        """Whether the metric scores example by example (it implements :meth:`score_one`)."""
        return type(self).score_one is not Metric.score_one

    def score_one(self, prediction: str, reference: str) -> float:
        """The score of one generated answer against its reference."""
        raise NotImplementedError

    def score(self, predictions: list[str], references: list[str]) -> float | None:
        """The score of a set of answers; None for an empty set. Default: the mean of :meth:`score_one`."""
        if not predictions:
            return None
        return sum(float(self.score_one(p, r)) for p, r in zip(predictions, references)) / len(predictions)

    def reference_problem(self, reference: str) -> str | None:
        """What makes ``reference`` unusable for this metric (one phrase), or None. Default: nothing."""
        return None

    def info(self) -> MetricInfo:
        return MetricInfo(name=self.name, description=self.description, direction=self.direction,
                          per_example=self.per_example, source=self.source)


def metric_problems(metric) -> list[str]:
    """What ``metric`` lacks of the contract in :class:`Metric`'s docstring: one phrase per missing or
    wrong piece; empty when it is complete."""
    if not isinstance(metric, Metric):
        return [f"is a {type(metric).__name__}, not an autopeft.Metric instance"]
    problems = []
    for attribute in ("name", "description"):
        value = getattr(metric, attribute, None)
        if not isinstance(value, str) or not value:
            problems.append(f"no {attribute} (a str)" if value is None else f"{attribute} is {value!r}, not a str")
    name = getattr(metric, "name", None)
    if isinstance(name, str) and name and not _SAFE_NAME.fullmatch(name):
        problems.append(f"name {name!r} is not lowercase letters, digits, '_', '-' and '.'")
    if isinstance(name, str) and (name in RESERVED or name.startswith(("test_", "eval_", "general_text"))
                                  or name.endswith("_before")):
        problems.append(f"name {name!r} would clash with a run's own metrics (test_NAME, NAME_before, "
                        f"{', '.join(RESERVED)})")
    if getattr(metric, "direction", None) not in DIRECTIONS:
        problems.append(f"direction must be 'higher' or 'lower', got {getattr(metric, 'direction', None)!r}")
    if type(metric).score_one is Metric.score_one and type(metric).score is Metric.score:
        problems.append("no score_one() or score()")
    return problems


_failures: list[PluginFailure] = []


def get_metrics() -> dict[str, Metric]:
    """Every registered metric by name (sorted). Collected afresh on each call: registering is cheap."""
    load_plugins()
    metrics: dict[str, Metric] = {}
    _failures.clear()
    for impl in pm.hook.register_metrics.get_hookimpls():  # registration order: the first name wins
        plugin, source = impl.plugin_name, plugin_source(impl.plugin_name)
        offered: list = []
        try:
            impl.function(register=offered.append)
        except Exception as exc:
            _failures.append(PluginFailure(plugin, source, f"register_metrics raised {type(exc).__name__}: {exc}"))
            continue
        for metric in offered:
            problems = metric_problems(metric)
            if problems:
                name = getattr(metric, "name", None)
                called = f"metric {name!r}" if isinstance(name, str) and name else "a metric"
                _failures.append(PluginFailure(plugin, source, f"{called} ({type(metric).__name__}) is "
                                                               f"incomplete: {'; '.join(problems)}"))
                continue
            if metric.name in metrics:
                _failures.append(PluginFailure(plugin, source, f"metric {metric.name!r} is already registered "
                                                               f"by {metrics[metric.name].source}"))
                continue
            metric.source = source
            metrics[metric.name] = metric
    return dict(sorted(metrics.items()))


def metric_failures() -> list[PluginFailure]:
    """Metrics skipped at the last collection, with the reason."""
    get_metrics()
    return list(_failures)


def list_metrics() -> list[MetricInfo]:
    """Every registered metric, described."""
    return [m.info() for m in get_metrics().values()]


def get_metric(name: str, source: str | None = "--metric") -> Metric:
    """The metric called ``name``; :class:`UnknownMetricError` names the closest ones."""
    metrics = get_metrics()
    key = name.strip().lower()
    if key in metrics:
        return metrics[key]
    refusal = unknown_names("metric", [name], list(metrics), source=source, error=UnknownMetricError)
    allowed = os.environ.get("AUTOPEFT_LOAD_PLUGINS")
    if allowed is not None and not {"autopeft", BUILTIN_PLUGIN} & {p.strip() for p in allowed.split(",")}:
        refusal = UnknownMetricError(f"{refusal.problem} (the built-in metrics are the plugin {BUILTIN_PLUGIN!r}, "
                                     f"which --plugins left out)", source=source)
    raise refusal


def metric_names(value) -> list[str]:
    """``value`` (a name, a comma-separated list, or a list of either) as a list of names, in order,
    each once."""
    parts = [value] if isinstance(value, str) else list(value or [])
    names: list[str] = []
    for part in parts:
        for name in str(part).split(","):
            name = name.strip().lower()
            if name and name not in names:
                names.append(name)
    return names


def resolve_metrics(names) -> list[Metric]:
    """The metrics ``names`` asks for (see :func:`metric_names`), each checked: an unknown name raises
    :class:`UnknownMetricError` with the closest names."""
    return [get_metric(name) for name in metric_names(names)]


def checked_score(metric: Metric, predictions: list[str], references: list[str]) -> tuple[float | None, str | None]:
    """``metric``'s score of the answers, and None or why there is none: a metric that raises or
    returns something other than a finite number gives no score rather than losing the run."""
    try:
        value = metric.score(list(predictions), list(references))
    except Exception as exc:
        return None, f"metric {metric.name} ({metric.source}) raised {type(exc).__name__}: {exc}"
    if value is None:
        return None, None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None, f"metric {metric.name} ({metric.source}) returned a {type(value).__name__}, not a number"
    if not math.isfinite(value):
        return None, f"metric {metric.name} ({metric.source}) returned {value}"
    return value, None


def checked_score_one(metric: Metric, prediction: str, reference: str) -> float | None:
    """One example's score, or None where the metric has no per-example score or fails on it."""
    if not metric.per_example:
        return None
    try:
        value = float(metric.score_one(prediction, reference))
    except Exception:
        return None
    return value if math.isfinite(value) else None
