"""The recommender: which candidate will be best after full training?

A scikit-learn regressor learns, from profile records (:mod:`autopeft.profiles`), how a candidate's
final standing among its rivals follows from what is known before the full fine-tune.

With pilots, from the pilot alone: its last training loss relative to the best pilot of the group,
the rank of that loss, and the candidate's learning rate relative to the other rates of the same
method (log10 of its ratio to their median; 0 for a method tried at one rate), with a second slope
above that median. A short pilot favours the larger rate of a method, whose loss falls fastest
early; whether that lead lasts differs by task and by how far the rate goes (on SST-2, PiSSA at 2e-3
leads its pilot and ends 1 point below PiSSA at 1e-3; on GSM8K's 27-step runs the largest rates win),
so these weights are learned, not assumed, and learned for each kind of task (causal LM,
classification) apart: a kind the profiles lack gets no weight at all.

The second slope is what "larger is better, up to a point" needs, which one slope cannot say.
Learned on every shipped profile, in standing (the target, below) per tenfold of learning rate:
+0.47 (causal LM) and +0.55 (classification) below the middle of a method's rates, -0.10 and -0.17
above it. A rate past the middle gets no credit for its pilot's lead, and loses some. With one
slope, both weights came out positive, and the costly leave-one-task-out picks on all three SST-2
benches were a method's largest rate (past the edge of its range, a rate the benches added), which
leads the pilot and ends several points below the best (LoRA at 1.1e-2 on the held-out bench: 74.1% over four
training seeds, against LiLy at 8e-3, the best, 80.8%).
Leave-one-task-out (``benchmarks/leave_one_task_out.py``, 7 tasks, over random two-thirds of each
task's runs at pilot budgets 0.1 / 0.15 / 0.2) went from 6.68 / 5.01 / 5.64 points of accuracy on the
four classification tasks to 3.84 / 1.83 / 3.64, the other tasks from 4.2 / 1.0 / 1.1% of the spread to
4.1 / 0.9 / 0.9%, and the choice beat every baseline on 3 / 5 / 5 of the 7 tasks, against 2 / 3 / 4.
(Single draw at budget 0.1: 1.25 points, better than every baseline on 5 of 7.) Within 0.2 points
the same with the Ridge penalty at 3 or 30 in place of 10, or |offset| in place of the hinge (the
same model, the offset beside it); a little worse with offset squared (3.92 / 2.26 / 4.27) or one
hinge shared by both kinds (3.84 / 1.93 / 4.35). Also tried there: a hinge for classification only
(within 0.5 points), a flag on each method's largest rate (single draw at 0.1: 2.77 points against
1.25), and each pilot's loss over the best of its own method's pilots (no change at all). All these
were tried on those 7 tasks, so a task added afterwards judged the choice:
``bench-gsm8k-division-minilm`` (does a GSM8K question's solution divide?). There two slopes chose
6.35 / 5.37 / 5.58 points from the best over subsets, one slope 5.80 / 6.42 / 6.33, and a random
pick about 6.1: no better than chance either way, on a task where 27 of 47 runs end at the majority
class and the best pilot up to a fifth of the run ends at 0.66 to 0.70, about the loss of the label
frequencies (0.69). Over all 8 tasks: classification 4.74 / 2.63 / 3.64 points (one slope 6.90 /
5.18 / 5.71), the rest 3.9 / 1.5 / 1.6% of the spread (4.0 / 1.7 / 1.6%), better than every baseline
on 3 / 6 / 5 of 8 (4 / 4 / 3).

Before the second slope: with no classification bench but SST-2, a fold judging one learned from no
classification task (a fold leaves out its own data), so with a weight per kind it applied none, and
chose better than with the causal-LM tasks' weight (3.33 points from the best against 4.82); once a
classification task on other data joined the profiles (``bench-gsm8k-steps-minilm``, GSM8K questions
labelled by the length of their solutions), the SST-2 folds learned a positive weight from it and
chose as they did with one shared weight (6.46 points, single draw, over four classification tasks).
(Measured first with the candidates in the bench's order, the gain had looked larger, 1.99 points: a
first rung too short to tell pilots apart kept the bench's first methods, LoRA, full and DoRA, a prior
tune does not have; replay now orders them as tune does.) Dropping the offset altogether chose the
same on classification and a little worse on the causal-LM tasks. Added once the benches tried rates
past the edge of each method's range, the offset raised the Spearman correlation of predicted and
final quality on GSM8K (0.10 to 0.45) and SST-2 (0.14 to 0.29), lowered it on MetaMathQA (0.94 to
0.87), and left the MetaMathQA replay unchanged.

How fast the loss was still falling at the end of the pilot was a feature too, on the idea that a
method still dropping fast overtakes one that flattened; in leave-one-task-out evaluation on
autopeft's own tasks it never lowered the regret (0.284 of the spread with or without it), and it
made the choice swing with small changes in the profiles (MetaMathQA replay without a cap: lily,
then shira after the SST-2 bench grew), so it went.
A classification pilot's loss on held-out examples, in place of its training loss, was tried too
(the SST-2 bench ``bench-sst2-heldout-minilm`` evaluates a held-out quarter every 6 of its 58 steps).
Its Spearman correlation with the final accuracy was not steadier: 0.44 at 15% and at 20% of the run
against 0.53 and 0.29 for the training loss, 0.77 to 0.83 against 0.78 to 0.81 from 30% on.
Leave-one-task-out on that bench chose a little better with it at two budgets (5.7 and 2.8 points
below the best, against 8.0 and 3.6) and the same at the third (6.9). Live on SST-2
(``benchmarks/sst2_choice.py``) the evaluations cost the 150 s budget three methods' pilots, and the
pick went from 1.8 to 5.4 points below the best. So it went: what misleads a short pilot there is a
large rate (past the method's range, on that bench) whose early lead does not last, and an early
held-out loss shows the same lead.

Static features and priors learned on other tasks are left out here: they carry what was true of
*those* tasks (on autopeft's own CPU tasks full fine-tuning wins; on a 3B model trained for 5,000
steps it does not), while the pilot measures this one. In leave-one-task-out evaluation
(``benchmarks/leave_one_task_out.py``) adding them never lowered the regret on autopeft's own tasks
and raised it on the PEFT benchmark.

Without pilots, a second regressor ranks from the static features, the trainable fraction of the
model (from the exact cost model) and a prior (how well the same method ranked in the other
benchmarks it learned from), and the result says so; this ranking also decides which candidates
get pilots first when the budget cannot cover them all.

The target is the candidate's standing (:func:`_standing`): where its final quality sits between its
benchmark's best (1) and that benchmark's lowest tenth (0), which makes benchmarks with different
metrics (accuracy, loss) comparable and keeps the distances a choice is judged by. Until the stop
that measured this, it was the percentile rank of final quality, under which every number above
except the learned slopes was measured. Leave-one-task-out over all 8 tasks, subsets, budgets 0.1 /
0.15 / 0.2 (rank, then standing): classification 4.74 / 2.63 / 3.64 points to 4.25 / 2.45 / 3.55
(the three SST-2 tasks 2.23 / 1.92 / 2.41 to 1.55 / 1.41 / 1.95), the rest 3.9 / 1.5 / 1.6% of the
spread to 3.6 / 1.4 / 1.4%, better than every baseline on 3 / 6 / 5 of 8 to 3 / 5 / 6; the
MetaMathQA replay (``benchmarks/replay_peft.py``) unchanged at 0.06 points. Single draws moved both
ways (classification 2.29 / 4.81 / 2.46 to 2.40 / 4.93 / 3.69). Over two other draws of the 40
subsets (seeds 1 and 2), classification gained at budget 0.1 (4.38 to 4.04, 4.63 to 4.35 points),
gained or held at 0.15 (2.60 to 2.42, 2.66 to 2.66) and lost at 0.2 (3.68 to 3.81, 3.54 to 3.71);
the other tasks gained at 0.15 and 0.2 (1.4-1.5% to 1.0-1.1%): a modest gain, not a cure. With no
floor (the plain share of the best-to-worst spread) classification came out about the same (4.31 /
2.37 / 3.08) but the replay chose ``frod`` over the uncapped and 24 GB candidates, 0.44 points below
the best on average: on GSM8K's validation loss, 84% of runs sit in the top tenth of a spread
stretched by the diverged ones, so the target says little about them. A floor at the median (clipped
at -2 below it) doubled the classification regret (6.86 / 3.39 / 4.37), the lowest quarter was about
the same as the lowest tenth (4.15 / 2.35 / 3.83), and a mix of rank and spread fell between. With
this target, how far a pilot's loss fell from its first quarter, as a feature per kind, did worse at
every budget (4.41 / 6.26 / 5.80; as a rank, 4.34 / 3.15 / 4.29). A pairwise model (logistic
regression on the feature differences of every two runs of a benchmark, weighted by their difference
in standing, as in a ranking SVM) chose better on classification at budgets 0.1 and 0.2 (3.59 / 2.66
/ 3.10 points, and so over two more draws of subsets) but only on the two GSM8K-derived tasks, where
no pilot at these budgets has learned more than the label frequencies (at 0.1 a GSM8K-steps pilot is
5 steps), so a different model there is a different draw, not a better reading; on the three SST-2
tasks it did the same or a little worse (1.59 / 1.53 / 1.92 against 1.55 / 1.41 / 1.95), so the
simpler Ridge stayed. Also tried, with the rank target: a rate's place in the range its plugin
declares for the task (log10 of its ratio to the middle of that range, and how far past its top), in
place of or beside the place among the rates tried: worse on classification at every budget (4.82 /
3.63 / 4.19 and 5.57 / 3.86 / 4.56 against 4.74 / 2.63 / 3.64), perhaps because the benches swept
rates around other centres than the plugins' ranges. Training rows are made by cutting each record's
curve at several pilot fractions (``TRAINING_FRACTIONS``), though successive halving's last rung runs
longer: 0.26 to 0.5 of the run in leave-one-task-out at budgets 0.1 to 0.2. Rows cut at 0.3, 0.4 and 0.5
as well did not choose better (classification 4.23 / 2.40 / 4.09 points against 4.25 / 2.45 / 3.55),
nor did the pilot's fraction as a feature, alone and times every other feature (4.34 / 2.52 / 3.46), or
a model per fraction, the nearest deciding (4.35 / 2.52 / 3.27): the pick on the last rung is among a
handful of runs a point or so apart, about one run's spread over training seeds on SST-2. Also tried
with the standing target, classification at budgets 0.1 / 0.15 / 0.2 against 4.25 / 2.45 / 3.55:
each benchmark weighted equally (4.17 / 3.89 / 4.33); rows weighted toward the pilots ranked high (4.31
/ 2.56 / 3.42); no loss rank (3.55 / 2.80 / 3.10, the other tasks 4.0 / 1.8 / 1.8% of the spread); the
loss rank flattened where a group's pilot losses lie within 5% (3.95 / 2.62 / 3.71); the Ridge penalty
from 1 to 100 (within 0.2 points). Loss weights of classification's own, or a model per kind of task,
did far worse (13.6 / 13.7 / 16.6; SST-2 alone 17 to 24 points): the SST-2 folds would learn what a
lower pilot loss means only from the GSM8K-derived tasks, where it means nothing yet, and not from the
causal-LM tasks, where it means a better end.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Sequence

import numpy as np
from pydantic import BaseModel, Field

from ..profiles import CurvePoint, ProfileRecord, end_loss

#: the kinds of task whose learning-rate offsets get a weight of their own
TASK_KINDS = ("causal-lm", "seq-cls")
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
    task: str | None = Field(default=None, description="causal-lm or seq-cls; what a larger learning rate's "
                                                       "early lead predicts is learned per kind of task")
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
            of_kind = np.array([c.task == kind for c in candidates])
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
        from ..errors import BadInputError

        if not text:
            return cls()
        weights = {"quality": 0.0, "memory": 0.0, "speed": 0.0}
        for part in str(text).split(","):
            key, _, value = part.strip().partition("=")
            key = key.strip().lower()
            if key not in weights:
                raise BadInputError(f"--objective takes quality, memory, speed or a mix like quality=0.7,memory=0.3; "
                                    f"got {part.strip()!r}")
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
