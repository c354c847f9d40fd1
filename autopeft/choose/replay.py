"""``autopeft replay``: judge the recommender on published benchmark results.

For a directory of results in the PEFT method-comparison layout, replay what a recommendation would
have done: every run is a candidate, and the pilots spend ``budget_fraction`` of what training
every candidate that fits would cost, by the same successive-halving plan as ``tune``
(:mod:`autopeft.halving`): every candidate for a short pilot, then the best learning rate of each
method and the best third of the methods for pilots at least twice as long, and so on. A pilot
of ``x`` of the run sees the start of the recorded loss curve up to ``x`` of the steps. The
recommender ranks each rung from those curves and the candidates' learning rates, and it is trained
only on profiles from *other* benchmarks. Its choice is scored against the best run that fits the
memory cap (the oracle) and against three baselines: LoRA with the benchmark's default settings;
the lowest loss after a flat pilot of ``budget_fraction`` of every candidate; and the same halving
plan ranked by pilot loss alone (what the learned model adds).
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
from pydantic import BaseModel, Field

from ..errors import BadInputError
from .halving import MAX_FRACTION, best_of_each, next_length, survivors
from ..profiles import ProfileRecord, end_loss, import_peft_results, load_records


class Pick(BaseModel):
    """One way of choosing, and how it turned out."""

    choice: str | None = Field(description="the experiment chosen; None when nothing it would pick fits")
    method: str | None = Field(default=None, description="autopeft's method of that experiment")
    score: float | None = None
    regret: float | None = Field(default=None, description="oracle score minus this score, in points (x100)")


class ReplayResult(BaseModel):
    """What ``replay --json`` prints."""

    benchmark: str
    metric: str
    budget_fraction: float
    max_vram: int | None
    candidates: int
    feasible: int
    chosen: str = Field(description="the experiment chosen")
    chosen_method: str = Field(description="autopeft's method of the experiment chosen")
    chosen_score: float
    oracle: str
    oracle_method: str
    oracle_score: float
    regret: float = Field(description="oracle_score - chosen_score, in points (x100)")
    baselines: dict[str, Pick]
    compute_fraction: float = Field(description="pilot compute as a fraction of training every feasible candidate")
    rungs: list[tuple[int, float]] = Field(default_factory=list,
                                           description="the halving plan: (candidates, fraction of the run) per rung")
    mode: str = Field(description="pilot: ranked from pilot curves; static: from static features and priors only")
    trained_on: list[str] = Field(description="the benchmarks the recommender learned from")


def replay(results_dir: str | Path, budget_fraction: float = 0.1, max_vram: int | None = None,
           records: list[ProfileRecord] | None = None, pilots: str = "halving") -> ReplayResult:
    """Replay a recommendation on the results in ``results_dir`` (see the module docstring).

    :param records: what the recommender may learn from; default: every profile on this machine.
        Records of the replayed benchmark itself, and of any other on the same data, are always left out.
    :param pilots: ``halving`` (as ``tune`` spends a budget) or ``flat`` (every candidate piloted for
        exactly ``budget_fraction`` of its steps, and ranked once).
    """
    from .ranking import Candidate, Recommender

    if not 0 < budget_fraction <= 1:
        raise BadInputError(f"--budget-fraction must be in (0, 1], got {budget_fraction}")
    if pilots not in ("halving", "flat"):
        raise BadInputError(f"--pilots is halving or flat, got {pilots!r}")
    runs = [r for r in import_peft_results(Path(results_dir)) if r.score is not None]
    if len(runs) < 2:
        raise BadInputError("fewer than two finished runs to choose among", source=str(results_dir))
    benchmark = runs[0].benchmark
    fitting = [r for r in runs if max_vram is None or (r.peak_memory_bytes or 0) <= max_vram]
    if not fitting:
        raise BadInputError(f"no run of {benchmark} fits in {max_vram} bytes")
    recommender = Recommender().fit(_other_tasks(records if records is not None else load_records(), runs))
    fitting = _in_tune_order(fitting, recommender)

    def learned(records_at: list[ProfileRecord], fraction: float) -> np.ndarray:
        return recommender.predict([Candidate.from_record(r, fraction) for r in records_at])

    def pilot_loss(records_at: list[ProfileRecord], fraction: float) -> np.ndarray:
        return -np.array([end_loss(r.pilot(fraction)) for r in records_at])

    if pilots == "flat":
        chosen = fitting[int(learned(fitting, budget_fraction).argmax())]
        plan, spent = [(len(fitting), budget_fraction)], budget_fraction
    else:
        chosen, plan, spent = _halving(fitting, budget_fraction, learned)
    by_loss, _, _ = _halving(fitting, budget_fraction, pilot_loss)
    oracle = max(fitting, key=lambda r: r.quality())
    lowest = min((r for r in fitting if r.pilot(budget_fraction)), key=lambda r: end_loss(r.pilot(budget_fraction)),
                 default=None)
    lora = _default_lora(runs)

    def pick(record: ProfileRecord | None) -> Pick:
        if record is None:
            return Pick(choice=None)
        if record not in fitting:
            return Pick(choice=f"{record.experiment} (does not fit)", method=record.method)
        return Pick(choice=record.experiment, method=record.method, score=record.score, regret=_points(oracle, record))

    last = [Candidate.from_record(r, plan[-1][1]) for r in fitting]
    return ReplayResult(
        benchmark=benchmark, metric=runs[0].metric, budget_fraction=budget_fraction, max_vram=max_vram,
        candidates=len(runs), feasible=len(fitting), chosen=chosen.experiment, chosen_method=chosen.method,
        chosen_score=chosen.score, oracle=oracle.experiment, oracle_method=oracle.method, oracle_score=oracle.score,
        regret=_points(oracle, chosen),
        baselines={"lora_default": pick(lora), "lowest_pilot_loss": pick(lowest), "halving_pilot_loss": pick(by_loss)},
        compute_fraction=spent, rungs=plan, mode=recommender.mode(last), trained_on=recommender.benchmarks_)


def _halving(runs: list[ProfileRecord], budget_fraction: float,
             score: Callable[[list[ProfileRecord], float], np.ndarray]) -> tuple[ProfileRecord, list, float]:
    """Successive halving over recorded runs, as ``tune`` plans it; ``score(runs, fraction)`` ranks
    (higher is better) what pilots of ``fraction`` of the run saw. Pilot lengths are fractions of a
    run, and a rung of ``n`` pilots of ``x`` costs ``n * x``. Runs of one method with the same settings
    at different learning rates are one method's configurations, as in ``tune``: the ranking keeps the
    best of them, then the best of the methods.

    :returns: the choice, the plan as (candidates, fraction) per rung, and the compute spent as a
        fraction of training every run.
    """
    # the shortest pilot that sees a logged loss in every run
    shortest = max(min(p.step for p in r.curve if p.train_loss is not None) / r.total_steps for r in runs)
    left = budget_fraction * len(runs)
    alive, plan = list(runs), []
    configuration = _configurations(runs)
    while len(alive) > 1 or not plan:
        floor = 2 * plan[-1][1] if plan else shortest
        methods = len({configuration[r.experiment] for r in alive})
        length = next_length(len(alive), methods, left, overhead=0.0, per_unit=1.0, shortest=floor * (1 - 1e-9),
                             cap=MAX_FRACTION)
        if length is None:
            if not plan:
                raise BadInputError(f"--budget-fraction {budget_fraction:g} cannot pilot every candidate once: the "
                                    f"loss curves start at {shortest:.0%} of the run, so at least "
                                    f"{shortest:.2g} is needed")
            break
        left -= length * len(alive)
        plan.append((len(alive), length))
        kept = list(best_of_each(alive, score(alive, length), lambda r: configuration[r.experiment]).values())
        alive = kept[:survivors(len(kept))]
        if length >= MAX_FRACTION:
            break
    spent = sum(n * x for n, x in plan) / len(runs)
    return alive[0], plan, spent


def pilot_grid(runs: list[ProfileRecord], recommender, per_method: int = 2) -> list[ProfileRecord]:
    """The runs ``tune`` would pilot, in their order: of each method, the run nearest each of the
    ``per_method`` rates of its grid, placed by the stored benches like this one where the fitted
    ``recommender`` has them (:meth:`autopeft.choose.ranking.Recommender.rates`). A method not
    installed here keeps every run."""
    from ..methods.registry import get_methods
    from .ranking import pilot_learning_rates

    first, methods = runs[0], get_methods()
    rates = recommender.rates(first.model, first.task, first.total_steps)
    kept: set[int] = set()
    for method in {r.method for r in runs}:
        tried = [r for r in runs if r.method == method]
        if method not in methods or not all(r.learning_rate for r in tried):
            kept.update(map(id, tried))
            continue
        for lr in pilot_learning_rates(method, methods[method].search_space, first.task, per_method, rates):
            kept.add(id(min(tried, key=lambda r: abs(math.log(r.learning_rate / lr)))))
    return [r for r in runs if id(r) in kept]


def _in_tune_order(runs: list[ProfileRecord], recommender) -> list[ProfileRecord]:
    """``runs`` in the order ``tune`` pilots its configurations: LoRA first, then the methods by the
    static ranking, each method's rates as given. Where pilots cannot tell candidates apart (a first
    rung of a step or two, before warm-up has moved anything) the first of them goes on, so the order
    decides; a bench's own order (the most used methods first) would slip in a prior tune does not have."""
    from .ranking import Candidate

    candidates = [Candidate.from_record(r, None) for r in runs]
    static = recommender.predict(candidates) if recommender.mode(candidates) == "static" else np.zeros(len(runs))
    return [runs[i] for i in sorted(range(len(runs)), key=lambda i: (runs[i].method != "lora", -static[i]))]


def _other_tasks(records: list[ProfileRecord], judged: list[ProfileRecord]) -> list[ProfileRecord]:
    """What the recommender may learn from when judged on ``judged``: the records of other benchmarks
    on other data (the same data with another model would teach it which methods do well there).
    Data is told apart by its file, so a task derived from another's data (GSM8K questions labelled
    by the length of their solutions) learns from it. Leaving out every GSM8K-derived task as well
    moved leave-one-task-out (over subsets, at each budget) by at most 0.3 points of accuracy on
    classification and 0.1% of the spread on the rest; with MetaMathQA (built partly from GSM8K)
    left out too, 0.1 points and 0.7%; on how many tasks the choice beat every baseline, not at all."""
    benchmarks, data = {r.benchmark for r in judged}, {r.dataset for r in judged}
    return [r for r in records if r.benchmark not in benchmarks and r.dataset not in data]


def _configurations(runs: list[ProfileRecord]) -> dict[str, str]:
    """Each run's configuration: its method and settings, shared by the runs that differ only in their
    learning rate. Runs alike in rate too differ in something the record does not hold (a seed, an
    optimizer): each is its own."""
    import json
    from collections import defaultdict

    groups: dict[str, list[ProfileRecord]] = defaultdict(list)
    for r in runs:
        groups[json.dumps([r.method, r.settings], sort_keys=True, default=str)].append(r)
    return {r.experiment: key if len({m.learning_rate for m in group}) == len(group) else r.experiment
            for key, group in groups.items() for r in group}


def _points(oracle: ProfileRecord, record: ProfileRecord) -> float:
    return 100 * (oracle.quality() - record.quality())


def _default_lora(runs: list[ProfileRecord]) -> ProfileRecord | None:
    """LoRA with the benchmark's default settings: the plain LoRA run nearest autopeft's default
    learning rate for LoRA, then with the plainest name."""
    import math

    from ..methods.registry import get_methods

    loras = [r for r in runs if r.method == "lora"]
    lora = get_methods().get("lora")

    def distance(r: ProfileRecord) -> float:
        if lora is None or not r.learning_rate:
            return 0.0
        return abs(math.log(r.learning_rate / lora.search_space.default_learning_rate(r.task)))

    return min(loras, key=lambda r: (r.experiment.count("-"), round(distance(r), 6), len(r.experiment)), default=None)


# -- leave one task out ---------------------------------------------------------------------------

class TaskEvaluation(BaseModel):
    """How the recommender did on one task it did not learn from, beside the baselines."""

    benchmark: str
    task: str = Field(description="causal-lm, seq-cls or token-cls")
    metric: str
    candidates: int
    trained_on: list[str]
    chosen: str
    oracle: str
    top1: bool = Field(description="the choice is the best run")
    regret: float = Field(description="oracle minus choice, in the metric's points (x100 for accuracy)")
    regret_of_spread: float = Field(description="regret as a fraction of the best-to-worst spread")
    spearman: float | None = Field(description="rank correlation of predicted and final quality at the flat pilot")
    compute_fraction: float
    baselines: dict[str, float | None] = Field(
        description="regret as a fraction of the spread: always LoRA, lowest flat-pilot loss, a random pick "
                    "(its expectation)")


def leave_one_task_out(records: list[ProfileRecord], budget_fraction: float = 0.1) -> list[TaskEvaluation]:
    """For every benchmark in ``records`` with pilot curves: learn from the others on other data
    (:func:`_other_tasks`), choose by successive halving as :func:`replay` does, and score the choice
    and the baselines."""
    from scipy.stats import spearmanr

    from .ranking import Candidate

    results = []
    for runs, recommender in _judged_tasks(records):
        def learned(at: list[ProfileRecord], fraction: float) -> np.ndarray:
            return recommender.predict([Candidate.from_record(r, fraction) for r in at])

        chosen, _, spent = _halving(runs, budget_fraction, learned)
        quality = np.array([r.quality() for r in runs])
        best, spread = quality.max(), quality.max() - quality.min()
        flat = learned(runs, budget_fraction)
        results.append(TaskEvaluation(
            benchmark=runs[0].benchmark, task=runs[0].task, metric=runs[0].metric, candidates=len(runs),
            trained_on=recommender.benchmarks_,
            chosen=chosen.experiment, oracle=max(runs, key=lambda r: r.quality()).experiment,
            top1=chosen.quality() == best, regret=_scale(runs) * (best - chosen.quality()),
            regret_of_spread=(best - chosen.quality()) / spread if spread else 0.0,
            spearman=float(spearmanr(flat, quality).statistic) if len(set(flat)) > 1 else None,
            compute_fraction=spent, baselines=_baseline_regrets(runs, budget_fraction, spread)))
    return results


class SubsetEvaluation(BaseModel):
    """The recommender and the baselines on many random subsets of one task's runs: the mean regret,
    with its standard error, which one draw of a task's candidates cannot give."""

    benchmark: str
    task: str
    metric: str
    subsets: int
    share: float = Field(description="the share of the task's runs in each subset")
    regret: float = Field(description="mean regret in the metric's points (x100 for accuracy)")
    regret_of_spread: float = Field(description="mean regret as a fraction of the whole task's spread")
    stderr_of_spread: float
    baselines: dict[str, float | None] = Field(description="mean regret / spread: always LoRA (over the "
                                                           "subsets holding a LoRA run), lowest flat-pilot loss, random")
    baseline_stderr: dict[str, float | None]
    picks: dict[str, int] = Field(default_factory=dict, description="how many subsets chose each run (by experiment)")

    def better_than_every_baseline(self) -> bool:
        return all(v is None or self.regret_of_spread < v for v in self.baselines.values())


def leave_one_task_out_subsets(records: list[ProfileRecord], budget_fraction: float = 0.1, subsets: int = 40,
                               share: float = 2 / 3, seed: int = 0) -> list[SubsetEvaluation]:
    """:func:`leave_one_task_out` over ``subsets`` random ``share`` subsets of each task's runs, each
    judged against its own best run. A task is a single draw of candidates: on one draw a baseline
    can land on the best run by luck, or the choice miss it by one noisy pilot; the mean over many
    draws of the same task tells a steady edge from a lucky one."""
    from .ranking import Candidate

    rng = np.random.default_rng(seed)
    results = []
    for runs, recommender in _judged_tasks(records):
        def learned(at: list[ProfileRecord], fraction: float) -> np.ndarray:
            return recommender.predict([Candidate.from_record(r, fraction) for r in at])

        quality = np.array([r.quality() for r in runs])
        spread = quality.max() - quality.min()
        size = max(3, round(share * len(runs)))
        ours, theirs, picks = [], [], Counter()
        for _ in range(subsets):
            sub = [runs[i] for i in sorted(rng.choice(len(runs), size=size, replace=False))]
            chosen = _halving(sub, budget_fraction, learned)[0]
            picks[chosen.experiment] += 1
            ours.append(max(r.quality() for r in sub) - chosen.quality())
            theirs.append(_baseline_regrets(sub, budget_fraction, spread))

        def mean_and_error(values: list[float | None]) -> tuple[float | None, float | None]:
            kept = [v for v in values if v is not None]
            if not kept:
                return None, None
            return float(np.mean(kept)), float(np.std(kept) / np.sqrt(len(kept)))

        of_spread = [v / spread if spread else 0.0 for v in ours]
        stats = {k: mean_and_error([t[k] for t in theirs]) for k in theirs[0]}
        results.append(SubsetEvaluation(
            benchmark=runs[0].benchmark, task=runs[0].task, metric=runs[0].metric, subsets=subsets, share=share,
            regret=_scale(runs) * float(np.mean(ours)), regret_of_spread=float(np.mean(of_spread)),
            stderr_of_spread=float(np.std(of_spread) / np.sqrt(len(of_spread))),
            baselines={k: m for k, (m, _) in stats.items()}, baseline_stderr={k: e for k, (_, e) in stats.items()},
            picks=dict(picks.most_common())))
    return results


def _judged_tasks(records: list[ProfileRecord]):
    """Each benchmark's runs that have a score and a loss curve (three at least), in the order tune
    would pilot them, with a recommender fit on the other tasks (:func:`_other_tasks`)."""
    from .ranking import Recommender

    # a configuration's reruns at other seeds are not candidates of their own (the recommender weighs them)
    usable = [r for r in records if r.quality() is not None and any(p.train_loss is not None for p in r.curve)
              and r.seed is None]
    for benchmark in sorted({r.benchmark for r in usable}):
        runs = [r for r in usable if r.benchmark == benchmark]
        if len(runs) >= 3:
            recommender = Recommender().fit(_other_tasks(records, runs))
            yield _in_tune_order(runs, recommender), recommender


def _scale(runs: list[ProfileRecord]) -> int:
    """Points of the metric: x100 for an accuracy."""
    return 100 if runs[0].metric.endswith("accuracy") else 1


def _baseline_regrets(runs: list[ProfileRecord], budget_fraction: float, spread: float) -> dict[str, float | None]:
    """Regret / ``spread`` against the best of ``runs`` of: LoRA with default settings (None without a
    LoRA run), the lowest loss after a flat pilot of ``budget_fraction``, and a random pick (its expectation)."""
    best = max(r.quality() for r in runs)

    def of_spread(record: ProfileRecord | None) -> float | None:
        return None if record is None or not spread else (best - record.quality()) / spread

    lowest = min(runs, key=lambda r: end_loss(r.pilot(budget_fraction)))
    return {"always_lora": of_spread(_default_lora(runs)), "lowest_pilot_loss": of_spread(lowest),
            "random": float(np.mean([(best - r.quality()) / spread for r in runs])) if spread else 0.0}


# -- leave one source out, judged by means over seeds ---------------------------------------------

class SourceChoice(BaseModel):
    """One choice on a task whose whole data source the recommender did not learn from, judged by its
    configuration's mean over seeds (where several were stored) against the best such mean."""

    benchmark: str
    source: str
    task: str
    metric: str
    way: str = Field(description="pilots at a budget ('0.1'), static (no pilots), always_lora, lowest_pilot_loss")
    subset: int
    chosen: str
    regret: float = Field(description="best mean minus the choice's mean, in points (x100 for accuracy and F1)")
    regret_of_spread: float
    spread: float = Field(default=0.0, description="the best-to-worst spread of the task's configuration means, in "
                                                   "the metric's units (a share for accuracy and F1)")
    within: bool = Field(description="within 1 point (accuracy, F1) or 1% of the spread (other metrics) of the best")
    features: list[float] = Field(default_factory=list, description="what autopeft.choose.confidence learns from")
    evidence: str | None = None


def judged_in_points(metric: str) -> bool:
    """Whether a metric's "one point" is a point of it (accuracy, F1) rather than 1% of the spread."""
    return any(k in metric for k in ("accuracy", "f1"))


def leave_one_source_out(records: list[ProfileRecord], budgets: tuple[float, ...] = (0.1, 0.15, 0.2),
                         subsets: int = 20, share: float = 2 / 3, seed: int = 0,
                         sources: dict[str, str] | None = None, same_data: bool = False,
                         pilot_rates: int | None = None) -> list[SourceChoice]:
    """For every benchmark with pilot curves: learn from the records of every *other* data source
    (:func:`autopeft.profiles.data_source`), then choose on ``subsets`` random ``share`` subsets of its
    runs (the first "subset" is all of them) by successive halving at each of ``budgets``, without
    pilots (static), and by the baselines. Each choice is judged by its configuration's mean over the
    stored seeds against the best mean (a single run's score where one seed was stored), and carries
    the features :mod:`autopeft.choose.confidence` learns the probability of landing within a point from.

    :param sources: benchmark -> source, for tests; default: :func:`autopeft.profiles.data_source`.
    :param same_data: judge only the benchmarks whose source holds runs of the same model on the same
        data (another budget), and let those runs weigh in as evidence (:meth:`Recommender.match`), as a
        user's earlier runs would; the recommender still learns from the other sources only.
    :param pilot_rates: choose, as ``tune`` does, among each method's runs at the ``pilot_rates`` rates
        its pilots would try (:func:`pilot_grid`), not among every rate the bench tried; the regret is
        still against the best of all.
    """
    from ..profiles import configuration_key, data_source
    from .confidence import features, margin_of
    from .ranking import Candidate, Recommender, seed_spread

    source_of = sources or {r.benchmark: data_source(r) for r in records}
    rng = np.random.default_rng(seed)
    usable = [r for r in records if r.quality() is not None and any(p.train_loss is not None for p in r.curve)
              and r.seed is None]
    out: list[SourceChoice] = []
    for benchmark in sorted({r.benchmark for r in usable}):
        runs = [r for r in usable if r.benchmark == benchmark]
        if len(runs) < 3:
            continue
        source = source_of[benchmark]
        recommender = Recommender().fit([r for r in records if source_of.get(r.benchmark) != source])
        first = runs[0]
        evidence = recommender.match(first.model, first.task, first.fingerprint, first.data_stats)
        if same_data:
            witness = Recommender().fit([r for r in records if r.benchmark != benchmark])
            evidence = witness.match(first.model, first.task, first.fingerprint, first.data_stats)
            if evidence is None or evidence.kind != "same":
                continue
            recommender.evidence_ = evidence
        seeds: dict[str, list[ProfileRecord]] = {}
        for r in records:
            if r.benchmark == benchmark and r.quality() is not None:
                seeds.setdefault(configuration_key(r), []).append(r)
        mean = {r.experiment: seed_spread(seeds[configuration_key(r)])[0] for r in runs}
        runs = _in_tune_order(runs, recommender)
        reachable = set(map(id, pilot_grid(runs, recommender, pilot_rates))) if pilot_rates else None
        spread = max(mean.values()) - min(mean.values())
        scale = 100 if judged_in_points(first.metric) else 1

        def judge(way: str, index: int, sub: list[ProfileRecord], chosen: ProfileRecord | None,
                  x: list[float] | None = None) -> None:
            if chosen is None:
                return
            best = max(mean[r.experiment] for r in sub)
            below = best - mean[chosen.experiment]
            limit = 0.01 if scale == 100 else 0.01 * spread
            out.append(SourceChoice(
                benchmark=benchmark, source=source, task=first.task, metric=first.metric, way=way, subset=index,
                chosen=chosen.experiment, regret=scale * below, regret_of_spread=below / spread if spread else 0.0,
                spread=spread, within=below <= limit + 1e-12, features=x or [],
                evidence=evidence.kind if evidence else None))

        for index in range(subsets + 1):
            sub = runs if index == 0 else [runs[i] for i in sorted(rng.choice(
                len(runs), size=max(3, round(share * len(runs))), replace=False))]
            judged_sub, sub = sub, [r for r in sub if reachable is None or id(r) in reachable] or sub
            methods = len({r.method for r in sub})  # tune's candidates are methods, each at its best rate
            for budget in budgets:
                last: list = []

                def learned(at: list[ProfileRecord], fraction: float) -> np.ndarray:
                    scores = recommender.predict([Candidate.from_record(r, fraction) for r in at])
                    last[:] = [at, scores]
                    return scores

                try:
                    chosen = _halving(sub, budget, learned)[0]
                except BadInputError:
                    continue
                at, scores = last
                k = at.index(chosen)
                rivals = [i for i, r in enumerate(at) if r.method != chosen.method]
                judge(f"{budget:g}", index, judged_sub, chosen,
                      features(margin_of(scores, k, rivals), 1.0, evidence.kind if evidence else None, methods))
            static = recommender.predict([Candidate.from_record(r, None) for r in sub])
            k = int(np.argmax(static))
            judge("static", index, judged_sub, sub[k],
                  features(margin_of(static, k, [i for i, r in enumerate(sub) if r.method != sub[k].method]), 0.0,
                           evidence.kind if evidence else None, methods))
            judge("always_lora", index, judged_sub, _default_lora(judged_sub))
            judge("lowest_pilot_loss", index, judged_sub,
                  min(judged_sub, key=lambda r: end_loss(r.pilot(budgets[len(budgets) // 2]))))
    return out
