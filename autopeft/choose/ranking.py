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

Where several seeds of a configuration are stored, its target is its mean over them less ``RISK`` times
their spread (:func:`_by_configuration`): a configuration that wins at one seed and collapses at another
stands below one as good on average that holds. Runs of the same model on the same data (the training
file's fingerprint) or on similar data (same kind of task, alike in size, length and labels) are
evidence about this very job: their standings are blended into the predictions (:meth:`Recommender.match`),
with or without pilots, which can confirm or overturn them. Benches of the model on runs of about the
job's length tell where each method's best learning rate sits, and the pilots try there first
(:meth:`Recommender.rates`).

Why this shape, and every variant measured against it (features, targets, weights, penalties, a
pairwise model): ``docs/design/recommender.md``. Current figures: ``benchmarks/results/
leave_one_task_out.md`` and ``replay_peft.md``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Callable, Sequence

import numpy as np
from pydantic import BaseModel, Field

from ..profiles import CurvePoint, ProfileRecord, configuration_key, end_loss

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
#: how many of its standard deviations over seeds a configuration's target gives up
RISK = 0.5
#: how much of a prediction the evidence of matching runs replaces, by how they match, with pilots or
#: without (same data: measured on the two SST-2 MiniLM benches, each with the other as evidence, see
#: docs/design/recommender.md; similar data: half that, unmeasured, no two shipped benches are alike)
EVIDENCE_WEIGHT = {"same": 0.4, "similar": 0.2}
#: stored benches whose best learning rates place a job's pilots: same model and kind of task, a run
#: within this factor of the job's steps (the best rate moves with the length of the run), and at
#: least this many of them (fewer, and the methods' own ranges stand)
RATE_STEPS_FACTOR = 2.0
RATE_MIN_BENCHMARKS = 3


class Evidence(BaseModel):
    """Stored runs of this model on this job's data, or on data like it, and what they say."""

    kind: str = Field(description="same: the very training file; similar: same model and kind of task, alike data")
    benchmarks: list[str]
    runs: int
    standing: dict[str, float] = Field(description="each method's best standing there (1: the best run)")
    by_rate: dict[str, list[tuple[float, float]]] = Field(default_factory=dict,
                                                          description="method -> (learning rate, standing)")

    def of(self, method: str, learning_rate: float | None) -> float | None:
        """The standing the evidence gives a candidate: of its method at the nearest rate tried (within a
        factor of 1.5), else the method's best; None for a method the matching runs never tried."""
        if learning_rate and self.by_rate.get(method):
            rate, standing = min(self.by_rate[method], key=lambda p: abs(math.log(p[0] / learning_rate)))
            if abs(math.log(rate / learning_rate)) <= math.log(1.5):
                return standing
        return self.standing.get(method)

    def sentence(self) -> str:
        what = "your data" if self.kind == "same" else "data like yours"
        return f"{self.runs} stored run{'s' * (self.runs != 1)} of this model on {what} weighed in"


class RateEvidence(BaseModel):
    """Where stored jobs like this one (:data:`RATE_MIN_BENCHMARKS`) found each method's best learning rate.

    A method's search space is set for typical runs; on a short run of a small encoder, for one, most
    methods score best well above their range (``docs/design/recommender.md``, "Learning rates from
    runs like this one"). The pilots try the rate these runs point to beside the method's default."""

    benchmarks: list[str]
    best: dict[str, float] = Field(description="method -> the geometric median of its best rate in the benches "
                                               "that tried it at two rates or more")
    shift: float = Field(description="median log10 of best rate over the method's default, over every method and "
                                     "bench: for a method the benches never tried")

    def rate(self, method: str, default: float | None) -> float | None:
        """The rate the evidence points to for ``method`` (two significant figures); None for a method
        the benches never tried and without a ``default`` to move."""
        rate = self.best.get(method, default * 10 ** self.shift if default else None)
        return None if rate is None else float(f"{rate:.2g}")

    def sentence(self) -> str:
        return (f"learning rates from {len(self.benchmarks)} stored benches of this model on jobs of about this "
                f"length (their best rates: {10 ** self.shift:.2g}x the methods' defaults, at the median)")


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
        self.groups_ = groups
        # runs stored per benchmark, reruns at other seeds included: what the evidence rests on
        self.counts_ = {name: sum(r.benchmark == name and r.quality() is not None for r in records) for name in groups}
        self.evidence_ = None
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

    def match(self, model: str, task: str | None, fingerprint: str | None = None,
              stats: dict[str, float] | None = None) -> Evidence | None:
        """Find the stored runs of ``model`` on this data (``fingerprint``) or, failing that, on data like
        it (``task`` and ``stats``, see :func:`similar_data`); from now on :meth:`predict` blends their
        standings in (:data:`EVIDENCE_WEIGHT`). Returns what was found, None when nothing matched."""
        found: dict[str, list[ProfileRecord]] = {"same": [], "similar": []}
        names: dict[str, list[str]] = {"same": [], "similar": []}
        for name, group in self.groups_.items():
            first = group[0]
            if first.model != model:
                continue
            if fingerprint and first.fingerprint == fingerprint:
                kind = "same"
            elif similar_data(first, task, stats):
                kind = "similar"
            else:
                continue
            found[kind] += group
            names[kind].append(name)
        kind = "same" if found["same"] else "similar" if found["similar"] else None
        if kind is None:
            self.evidence_ = None
            return None
        best: dict[str, list[float]] = defaultdict(list)
        rates: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for name in names[kind]:
            group = self.groups_[name]
            standing = _standing(np.array([r.quality() for r in group]))
            top: dict[str, float] = {}
            for r, p in zip(group, standing):
                top[r.method] = max(top.get(r.method, 0.0), float(p))
                if r.learning_rate:
                    rates[r.method].append((r.learning_rate, float(p)))
            for m, p in top.items():
                best[m].append(p)
        runs = sum(self.counts_[n] for n in names[kind])
        self.evidence_ = Evidence(kind=kind, benchmarks=sorted(names[kind]), runs=runs,
                                  standing={m: float(np.mean(v)) for m, v in best.items()}, by_rate=dict(rates))
        return self.evidence_

    def rates(self, model: str, task: str | None, steps: int,
              default_rate: Callable[[str, str], float | None] | None = None) -> RateEvidence | None:
        """Where the stored benches of ``model`` on the same kind of task, with runs within
        :data:`RATE_STEPS_FACTOR` of ``steps``, found each method's best learning rate; None with fewer
        than :data:`RATE_MIN_BENCHMARKS` of them. ``default_rate(method, task)``: the method's default
        (default: the installed method's, :func:`autopeft.methods.registry.default_learning_rate`)."""
        if default_rate is None:
            from ..methods.registry import default_learning_rate as default_rate
        near = [name for name, group in self.groups_.items()
                if group[0].model == model and task is not None and _kind(group[0].task) == _kind(task)
                and max(group[0].total_steps, steps) / max(1, min(group[0].total_steps, steps)) <= RATE_STEPS_FACTOR]
        best: dict[str, list[float]] = defaultdict(list)
        shifts: list[float] = []
        used = []
        for name in near:
            tried: dict[str, list[ProfileRecord]] = defaultdict(list)
            for r in self.groups_[name]:
                if r.learning_rate:
                    tried[r.method].append(r)
            kept = {m: runs for m, runs in tried.items() if len({r.learning_rate for r in runs}) >= 2}
            if kept:
                used.append(name)
            for method, runs in kept.items():
                top = max(runs, key=lambda r: r.quality()).learning_rate
                best[method].append(math.log10(top))
                default = default_rate(method, runs[0].task)
                if default:
                    shifts.append(math.log10(top / default))
        if len(used) < RATE_MIN_BENCHMARKS or not shifts:
            return None
        return RateEvidence(benchmarks=sorted(used), best={m: 10 ** float(np.median(v)) for m, v in best.items()},
                            shift=float(np.median(shifts)))

    def predict(self, candidates: Sequence[Candidate]) -> np.ndarray:
        """Predicted final standing of each of ``candidates`` (higher is better): where its final quality
        will sit between the best of them (1) and their lowest tenth (0), see :func:`_standing`; with
        the evidence of matching runs blended in after :meth:`match`."""
        raw = self._predict(candidates)
        evidence = getattr(self, "evidence_", None)
        mode = self.mode(candidates)
        if evidence is None or mode == "none":
            return raw
        weight = EVIDENCE_WEIGHT[evidence.kind]
        said = [evidence.of(c.method, c.learning_rate) for c in candidates]
        return np.array([p if e is None else (1 - weight) * p + weight * e for p, e in zip(raw, said)])

    def _predict(self, candidates: Sequence[Candidate]) -> np.ndarray:
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
    """Each benchmark's scored configurations (reruns at other seeds folded in, :func:`_by_configuration`)."""
    groups: dict[str, list[ProfileRecord]] = defaultdict(list)
    for r in records:
        if r.quality() is not None and math.isfinite(r.quality()):
            groups[r.benchmark].append(r)
    return {k: _by_configuration(v) for k, v in groups.items() if len({configuration_key(r) for r in v}) >= 3}


def seed_spread(runs: Sequence[ProfileRecord]) -> tuple[float, float]:
    """Mean quality of one configuration's runs and their standard deviation over seeds (0 for one run)."""
    quality = np.array([r.quality() for r in runs])
    return float(quality.mean()), float(quality.std(ddof=1)) if len(quality) > 1 else 0.0


def _by_configuration(group: Sequence[ProfileRecord]) -> list[ProfileRecord]:
    """One record per configuration: the seed-0 run (its curve is the pilot's), scored by the mean over
    its seeds less :data:`RISK` times their standard deviation. A configuration run at one seed only is
    charged the benchmark's typical (median) spread of those run at several, so that a measured steady
    configuration gains on an unmeasured one, and a measured erratic one loses."""
    by: dict[str, list[ProfileRecord]] = defaultdict(list)
    for r in group:
        by[configuration_key(r)].append(r)
    if all(len(runs) == 1 for runs in by.values()):
        return list(group)
    spreads = [seed_spread(runs)[1] for runs in by.values() if len(runs) > 1]
    typical = float(np.median(spreads))
    out = []
    for runs in by.values():
        first = min(runs, key=lambda r: r.seed or 0)
        mean, std = seed_spread(runs)
        quality = mean - RISK * (std if len(runs) > 1 else typical)
        out.append(first.model_copy(update={"score": quality if first.higher_is_better else -quality}))
    return out


def pilot_learning_rates(method: str, space, task: str, n: int, rates: RateEvidence | None) -> list[float]:
    """The ``n`` learning rates a method's pilots try: its search ``space``'s grid for ``task``, led by
    the rate ``rates`` (:meth:`Recommender.rates`) point to where there are any."""
    prefer = rates.rate(method, space.default_learning_rate(task)) if rates else None
    return space.learning_rate_grid(task, n, prefer=prefer)


def _kind(task: str) -> str:
    return _KIND_OF.get(task, task)


def similar_data(record: ProfileRecord, task: str | None, stats: dict[str, float] | None) -> bool:
    """Whether ``record`` trained on data like a job's: the same kind of task and, where both are known,
    the same number of labels, a mean length within a factor of 2 and a size within a factor of 4."""
    if task is None or _kind(record.task) != _kind(task):
        return False
    theirs = record.data_stats
    if not stats or not theirs:
        return False
    if int(theirs.get("labels", 0)) != int(stats.get("labels", 0)):
        return False

    def within(key: str, factor: float) -> bool:
        a, b = theirs.get(key), stats.get(key)
        return bool(a and b) and max(a, b) / min(a, b) <= factor

    return within("mean_tokens", 2.0) and within("examples", 4.0)


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
