"""The recommender: which candidate will be best after full training?

A scikit-learn Ridge regressor learns, from profile records (:mod:`autopeft.profiles`), how a
candidate's final *standing* among its rivals follows from what is known before the full fine-tune.
The standing (:func:`_standing`) is where its final quality sits between its benchmark's best run
(1) and that benchmark's lowest tenth (0): benchmarks with different metrics become comparable, and a
run far below the rest weighs as far below, not merely one place lower.

With pilots, the features come from the pilot alone: its last training loss against the best pilot
of the group, the rank of that loss, and its learning rate against the other rates of the same method
(log10 of its ratio to their median, with a second slope above that median, since "larger is better,
up to a point" needs two). The weights are learned for each kind of task (causal LM, classification)
apart; a kind the profiles lack gets no weight. Training rows cut each record's curve at several
pilot fractions (``TRAINING_FRACTIONS``).

Without pilots, a second regressor ranks from the static features (the trainable fraction, from the
exact cost model) and a prior (how the method ranked in the other benchmarks), and the result says
so; this ranking also decides which candidates get pilots first when the budget cannot cover them all.

Why this shape, and every variant measured against it (features, targets, weights, penalties, a
pairwise model): ``docs/design/recommender.md``. Current figures: ``benchmarks/results/
leave_one_task_out.md`` and ``replay_peft.md``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Sequence

import numpy as np
from pydantic import BaseModel, Field

from ..profiles import CurvePoint, ProfileRecord, end_loss

#: the kinds of task whose learning-rate offsets get a weight of their own; token classification is of
#: the kind of sequence classification (a fresh head over an encoder, the same learning rates)
TASK_KINDS = ("causal-lm", "seq-cls")
_KIND_OF = {"token-cls": "seq-cls"}
PILOT_FEATURES = ("loss_gap", "loss_rank", *(f"lr_offset[{kind}]" for kind in TASK_KINDS),
                  *(f"lr_above_middle[{kind}]" for kind in TASK_KINDS))
STATIC_FEATURES = ("log_trainable_fraction", "prior")
TRAINING_FRACTIONS = (0.05, 0.1, 0.15, 0.2)
#: the quantile of a benchmark's final quality that the target counts as its worst
STANDING_FLOOR = 0.1


class Candidate(BaseModel):
    """One method with its settings, as the recommender ranks it."""

    name: str = Field(description="unique among the candidates, e.g. 'lora lr=2e-4'")
    method: str
    task: str | None = Field(default=None, description="causal-lm, seq-cls or token-cls; what a larger learning "
                                                       "rate's early lead predicts is learned per kind of task")
    family: str | None = None
    settings: dict[str, Any] = Field(default_factory=dict)
    learning_rate: float | None = None
    trainable_params: int | None = None
    total_params: int | None = None
    adapter_bytes: int | None = None
    peak_memory_bytes: int | None = None
    seconds: float | None = Field(default=None, description="estimated or measured full fine-tune time")
    pilot: list[CurvePoint] = Field(default_factory=list, description="the pilot's loss curve; empty: none")

    @classmethod
    def from_record(cls, record: ProfileRecord, fraction: float | None) -> Candidate:
        """The candidate a record would have been, with the pilot a run of ``fraction`` would have seen."""
        return cls(name=record.experiment, method=record.method, task=record.task, family=record.family,
                   settings=record.settings,
                   learning_rate=record.learning_rate, trainable_params=record.trainable_params,
                   total_params=record.total_params, adapter_bytes=record.adapter_bytes,
                   peak_memory_bytes=record.peak_memory_bytes, seconds=record.train_seconds,
                   pilot=record.pilot(fraction) if fraction else [])


class Recommender:
    """Predicts how candidates will rank after full training; fit on profile records.

    >>> rec = Recommender().fit(load_records())
    >>> rec.predict(candidates)          # higher is better, one number per candidate
    """

    def __init__(self, estimator=None, fractions: Sequence[float] = TRAINING_FRACTIONS, min_benchmarks: int = 2):
        self.estimator = estimator
        self.fractions = tuple(fractions)
        self.min_benchmarks = min_benchmarks

    def fit(self, records: Sequence[ProfileRecord]) -> Recommender:
        """Learn from ``records`` (grouped by benchmark; a benchmark with fewer than 3 scored runs is skipped)."""
        from sklearn.base import clone

        groups = _scored_groups(records)
        self.benchmarks_ = sorted(groups)
        self.priors_ = _method_priors(groups)
        self.n_records_ = sum(len(g) for g in groups.values())
        pilot_x, pilot_y, static_x, static_y = [], [], [], []
        pilot_benchmarks = set()
        for name, group in groups.items():
            target = _standing(np.array([r.quality() for r in group]))
            priors = {m: p for m, p in _method_priors({k: v for k, v in groups.items() if k != name}).items()}
            static = _features([Candidate.from_record(r, None) for r in group], priors, STATIC_FEATURES)
            static_x.append(static)
            static_y.append(target)
            for fraction in self.fractions:
                cands = [Candidate.from_record(r, fraction) for r in group]
                keep = np.array([len(c.pilot) > 0 for c in cands])
                if keep.sum() < 3:
                    continue
                kept = [c for c, k in zip(cands, keep) if k]
                pilot_benchmarks.add(name)
                pilot_x.append(_features(kept, priors, PILOT_FEATURES))
                pilot_y.append(_standing(np.array([r.quality() for r, k in zip(group, keep) if k])))
        base = self.estimator if self.estimator is not None else _default_estimator()
        # a model learned from a single benchmark mistakes that benchmark's quirks for a rule: below
        # ``min_benchmarks`` the pilot's own loss ranks (mode "pilot-loss"), and the result says so
        enough_pilots = len(pilot_benchmarks) >= self.min_benchmarks
        enough_static = len(static_x) >= self.min_benchmarks
        self.pilot_model_ = clone(base).fit(np.vstack(pilot_x), np.concatenate(pilot_y)) if enough_pilots else None
        self.static_model_ = clone(base).fit(np.vstack(static_x), np.concatenate(static_y)) if enough_static else None
        self.pilot_benchmarks_ = sorted(pilot_benchmarks)
        return self

    def predict(self, candidates: Sequence[Candidate]) -> np.ndarray:
        """Predicted final standing of each of ``candidates`` (higher is better): where its final quality
        will sit between the best of them (1) and their lowest tenth (0), see :func:`_standing`."""
        mode = self.mode(candidates)
        if mode == "pilot":
            return self.pilot_model_.predict(_features(candidates, self.priors_, PILOT_FEATURES))
        if mode == "static":
            return self.static_model_.predict(_features(candidates, self.priors_, STATIC_FEATURES))
        # not enough learned: the lowest pilot loss wins, or failing that the order given
        losses = [end_loss(c.pilot) for c in candidates]
        return _percentile(-np.array(losses)) if any(map(math.isfinite, losses)) else np.zeros(len(candidates))

    def mode(self, candidates: Sequence[Candidate]) -> str:
        """``pilot`` (every candidate has a pilot and a pilot model was learned), ``pilot-loss`` (pilots
        but too few profiles: the lowest pilot loss ranks first), ``static`` (no pilots), or ``none``."""
        if not hasattr(self, "priors_"):
            raise RuntimeError("this Recommender is not fitted yet: call fit(records) first")
        piloted = bool(candidates) and all(c.pilot for c in candidates)
        if piloted:
            return "pilot" if self.pilot_model_ is not None else "pilot-loss"
        return "static" if self.static_model_ is not None else "none"


def _default_estimator():
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # linear and strongly regularised: with a handful of benchmarks to learn from, trees memorise them
    return make_pipeline(StandardScaler(), Ridge(alpha=10.0))


def _scored_groups(records: Sequence[ProfileRecord]) -> dict[str, list[ProfileRecord]]:
    groups: dict[str, list[ProfileRecord]] = defaultdict(list)
    for r in records:
        if r.quality() is not None and math.isfinite(r.quality()):
            groups[r.benchmark].append(r)
    return {k: v for k, v in groups.items() if len(v) >= 3}


def _method_priors(groups: dict[str, list[ProfileRecord]]) -> dict[str, float]:
    """Each method's mean :func:`_standing` over the benchmarks it appears in."""
    seen: dict[str, list[float]] = defaultdict(list)
    for group in groups.values():
        for r, p in zip(group, _standing(np.array([r.quality() for r in group]))):
            seen[r.method].append(float(p))
    return {m: float(np.mean(v)) for m, v in seen.items()}


def _percentile(values: np.ndarray) -> np.ndarray:
    """Rank of each value in [0, 1], 1 for the largest; ties share their mean rank."""
    if len(values) < 2:
        return np.ones(len(values))
    from scipy.stats import rankdata

    return (rankdata(values) - 1) / (len(values) - 1)


def _standing(quality: np.ndarray) -> np.ndarray:
    """The recommender's target: where each final quality sits between its benchmark's best (1) and
    its lowest tenth (0; below that, 0 too).

    A choice is judged by how far it falls below the best, in points, so the target is in points
    too, not a rank, which weighs a run that ends 0.1 below the best like one that ends 5 below. The
    floor keeps the few runs that diverge (a loss of 6.7 where the rest end near 1.2) from squeezing
    every other run against the top."""
    if len(quality) < 2:
        return np.ones(len(quality))
    floor = np.quantile(quality, STANDING_FLOOR)
    top = quality.max()
    return np.clip((quality - floor) / (top - floor), 0.0, 1.0) if top > floor else np.ones(len(quality))


def _learning_rate_offsets(candidates: Sequence[Candidate]) -> np.ndarray:
    """log10 of each candidate's learning rate over the median of its method's rates among ``candidates``."""
    rates: dict[str, list[float]] = defaultdict(list)
    for c in candidates:
        if c.learning_rate:
            rates[c.method].append(math.log10(c.learning_rate))
    return np.array([math.log10(c.learning_rate) - float(np.median(rates[c.method])) if c.learning_rate else 0.0
                     for c in candidates])


def _features(candidates: Sequence[Candidate], priors: dict[str, float], names: Sequence[str]) -> np.ndarray:
    columns: dict[str, np.ndarray] = {}
    fraction = np.array([c.trainable_params / c.total_params if c.trainable_params and c.total_params else 1e-3
                         for c in candidates])
    columns["log_trainable_fraction"] = np.log10(np.clip(fraction, 1e-7, 1.0))
    columns["prior"] = np.array([priors.get(c.method, 0.5) for c in candidates])
    if set(names) & set(PILOT_FEATURES):
        last = np.array([end_loss(c.pilot) for c in candidates])
        columns["loss_gap"] = last / np.min(last) - 1
        columns["loss_rank"] = _percentile(-last)
        offsets = _learning_rate_offsets(candidates)
        for kind in TASK_KINDS:
            of_kind = np.array([_KIND_OF.get(c.task, c.task) == kind for c in candidates])
            columns[f"lr_offset[{kind}]"] = np.where(of_kind, offsets, 0.0)
            # a second slope above the middle of the method's rates: "larger is better, up to a point"
            columns[f"lr_above_middle[{kind}]"] = np.where(of_kind, np.maximum(offsets, 0.0), 0.0)
    return np.column_stack([columns[k] for k in names])


# -- choosing among ranked candidates -------------------------------------------------------------

class Objective(BaseModel):
    """Weights of what the choice optimises: predicted quality, peak memory, time (sum to 1)."""

    quality: float = 1.0
    memory: float = 0.0
    speed: float = 0.0

    @classmethod
    def parse(cls, text: str | None) -> Objective:
        """``quality`` (default), ``memory``, ``speed``, or a mix such as ``quality=0.7,memory=0.3``."""
        from ..errors import BadInputError, unknown_names

        if not text:
            return cls()
        weights = {"quality": 0.0, "memory": 0.0, "speed": 0.0}
        for part in str(text).split(","):
            key, _, value = part.strip().partition("=")
            key = key.strip().lower()
            if key not in weights:
                raise unknown_names("objective", [key], list(weights), source="--objective")
            try:
                weights[key] = float(value) if value else 1.0
            except ValueError:
                raise BadInputError(f"--objective weight for {key} must be a number, got {value!r}") from None
            if weights[key] < 0:
                raise BadInputError(f"--objective weights must not be negative, got {part.strip()!r}")
        total = sum(weights.values())
        if total <= 0:
            raise BadInputError("--objective needs a positive weight")
        return cls(**{k: v / total for k, v in weights.items()})


def objective_scores(candidates: Sequence[Candidate], predicted: np.ndarray, objective: Objective) -> np.ndarray:
    """One number per candidate to maximise: the objective's weighted mix, each part scaled to [0, 1]."""
    quality = _unit(np.asarray(predicted, dtype=float))
    memory = 1 - _unit(np.array([c.peak_memory_bytes or 0 for c in candidates], dtype=float))
    speed = 1 - _unit(np.array([c.seconds or 0 for c in candidates], dtype=float))
    return objective.quality * quality + objective.memory * memory + objective.speed * speed


def pareto_front(candidates: Sequence[Candidate], predicted: Sequence[float]) -> list[bool]:
    """Whether each candidate is on the Pareto frontier of predicted quality (higher) against peak
    memory, time and adapter size (lower): no other candidate is at least as good on all four and
    better on one."""
    def costs(c: Candidate) -> tuple[float, ...]:
        return tuple(math.inf if v is None else v for v in (c.peak_memory_bytes, c.seconds, c.adapter_bytes))

    points = [(q, costs(c)) for q, c in zip(predicted, candidates)]
    front = []
    for i, (q, cost) in enumerate(points):
        dominated = any(q2 >= q and all(a <= b for a, b in zip(c2, cost)) and (q2 > q or c2 != cost)
                        for j, (q2, c2) in enumerate(points) if j != i)
        front.append(not dominated)
    return front


def _unit(values: np.ndarray) -> np.ndarray:
    span = values.max() - values.min() if len(values) else 0
    return (values - values.min()) / span if span > 0 else np.ones(len(values))
