"""``autopeft recommend`` and ``tune``: choose the method for this data, model and machine, then train it.

The pipeline (see the design brief): candidates are the installed methods for the task; the static
cost model checks each against the constraints, trying gradient checkpointing and smaller
micro-batches before excluding it; pilots of the survivors run with successive halving under a
time budget (by default 15% of the estimated full fine-tune, and at least ``MIN_CHOOSE_SECONDS``, so
that a short job still compares methods); the recommender ranks them from their
pilot curves and priors; the objective picks one; ``tune`` trains it in a watched process.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from typing import Any, Callable

from pydantic import BaseModel, Field, PrivateAttr

from .constraints import Constraints, check, method_reasons, nearest_misses
from .explain import explain
from ..errors import AutopeftError, BadInputError, check_names
from ..devices import DeviceProfile
from ..profiles import CurvePoint
from ..sizes import format_size

log = logging.getLogger("autopeft")

#: a pilot measuring more than this many times its estimated peak memory shows a cost model that is
#: wrong, not one that is off (the built-in model's worst miss measured so far is 1.45x, MiniLM with
#: gradient checkpointing on CPU; see benchmarks/results/cpu_memory.md)
COST_MODEL_TOLERANCE = 1.75
#: plan memory with this share of the budget: the cost model is within ~10% of what is measured
PLANNING_MARGIN = 0.9
DEFAULT_PILOT_FRACTION = 0.15
#: by default choosing (screening and pilots) takes at least this long: on a short job, a share of the
#: run buys a pilot or two and the choice would be the prior's; a user who gives --pilot-budget gets it exactly
MIN_CHOOSE_SECONDS = 240.0


class NoFeasibleMethodError(AutopeftError):
    """No candidate satisfies the constraints; the message lists the nearest misses."""

    exit_code = 3


class Estimated(BaseModel):
    trainable_params: int
    total_params: int
    adapter_bytes: int
    peak_memory_bytes: int
    batch_size: int
    gradient_accumulation_steps: int
    gradient_checkpointing: bool


class Measured(BaseModel):
    status: str
    error: str | None = None
    learning_rate: float | None = None
    pilot_steps: int = 0
    pilot_loss: float | None = None
    peak_memory_bytes: int | None = None
    seconds_per_step: float | None = None
    estimated_full_seconds: float | None = None
    curve: list[CurvePoint] = Field(default_factory=list, description="the pilot's training loss, step by step")


class CandidateReport(BaseModel):
    """One row of ``recommend --json``."""

    method: str
    settings: dict[str, Any] = Field(description="every setting, the method's defaults included")
    feasible: bool
    excluded_because: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list, description="e.g. a cost model its pilot proved wrong")
    estimated: Estimated | None = None
    measured: Measured | None = None
    predicted_score: float | None = None
    pareto: bool = False
    # what pilots and the fine-tune are given: only the settings set, so that the method still fits
    # the rest to the model and the run (VB-LoRA's vector length, C3A's block size, AdaLoRA's schedule)
    _given: dict[str, Any] = PrivateAttr(default_factory=dict)


class Recommendation(BaseModel):
    """What ``recommend --json`` prints (and ``tune`` stores in run.json)."""

    chosen: str | None
    settings: dict[str, Any] = Field(default_factory=dict, description="the settings the fine-tune is given; the "
                                     "method's defaults, fitted to the model and the run, fill in the rest")
    learning_rate: float | None = None
    batch_size: int | None = None
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = False
    quantize: str | None = Field(default=None, description="'4bit' or '8bit': planned for a base loaded so")
    explanation: str
    mode: str = Field(description="pilot: ranked from pilot runs; static: from the cost model and priors only")
    candidates: list[CandidateReport]
    device: DeviceProfile
    constraints: dict[str, Any]
    objective: dict[str, float]
    pilot_seconds: float = 0.0
    seconds: float = Field(default=0.0, description="wall time of the whole recommendation, pilots included")
    total_steps: int | None = None
    trained_on: list[str] = Field(default_factory=list, description="profile benchmarks the recommender learned from")
    confidence: float | None = Field(default=None, description="probability that the choice lands within 1 point "
                                     "(of accuracy or F1; else 1% of the best-to-worst spread) of the best candidate, "
                                     "from the recommender's error on benches it did not learn from")
    evidence: dict[str, Any] | None = Field(default=None, description="stored runs of this model on this data "
                                            "(kind same) or data like it (similar) that weighed in the ranking")
    learning_rates_from: list[str] = Field(default_factory=list, description="stored benches of this model on jobs of "
                                           "about this length whose best learning rates placed the pilots' (and, "
                                           "without pilots, the fine-tune's)")


def recommend(data: str, *, model: str | None = None, task: str | None = None, validation: str | None = None,
              constraints: Constraints | None = None, objective: str | None = None, target_gpu: str | None = None,
              pilot: bool = True, pilot_fraction: float | None = None, pilot_seconds: float | None = None,
              learning_rates_per_method: int = 2, batch_size: int = 8, epochs: float = 3.0,
              max_steps: int | None = None, max_length: int = 512, max_examples: int | None = None,
              validation_fraction: float = 0.1, seed: int = 0, data_seed: int | None = None,
              pack: bool = False, train_on_inputs: bool = False, trust_remote_code: bool = False,
              profiles: list[str] | None = None, leave_out: list[str] | None = None,
              num_processes: int = 1, accelerate_config: str | None = None, quantize: str | None = None,
              say: Callable[[str], None] | None = None,
              on_pilot: Callable[[Any, int, Any], None] | None = None) -> Recommendation:
    """Rank the installed methods for ``data`` under ``constraints``; see the module docstring.

    :param num_processes, accelerate_config: how the fine-tune will run; with several processes the
        memory constraint is per device and ``batch_size`` each device's micro-batch (each pilot
        runs on one device; with several GPUs, one pilot per GPU at a time).
    :param validation_fraction, seed, data_seed, pack, train_on_inputs: as for ``train``: the pilots
        sample, split, pack and mask the data as the fine-tune will.
    :param quantize: ``4bit`` or ``8bit``: a quantised base (CUDA); only methods that train on one are
        candidates, and their memory is estimated so.

    :param profiles: more profile records to learn from (JSONL files, or dirs of results in the PEFT
        method-comparison layout), besides the shipped ones and this machine's store.
    :param leave_out: benchmarks whose records are not learned from (to evaluate on one of them).
    :param on_pilot: called after each pilot with its :class:`autopeft.choose.pilots.PilotConfig`, its
        length in steps and its :class:`autopeft.training.outputs.PilotResult` (``tune`` logs pilots so).
    """
    from ..models import load_tokenizer
    from ..models import DEFAULT_MODEL, load_config
    from ..methods.registry import default_learning_rate, get_methods
    from ..devices import profile_device, target_device
    from ..profiles import load_records
    from .ranking import Candidate, Objective, Recommender, objective_scores, pareto_front
    from ..training.launch import plan_of
    from ..training.options import TrainOptions, total_steps as steps_of

    say = say or (lambda text: log.info(text))
    plan = plan_of(num_processes, accelerate_config)
    constraints = constraints or Constraints()
    constraints.check_names()
    records = load_records(profiles)
    if leave_out:
        check_names("benchmark", leave_out, sorted({r.benchmark for r in records}), source="--leave-out",
                    listing="`autopeft profiles list` lists them")
    goal = Objective.parse(objective)
    device = target_device(target_gpu) if target_gpu else profile_device()
    if pilot_fraction is not None and not 0 < pilot_fraction < 1:
        raise BadInputError(f"--pilot-budget as a fraction must be in (0, 1), got {pilot_fraction}")
    if quantize:
        constraints = _quantized_only(constraints, quantize, local=pilot or not device.planned)

    if model is None:
        from ..data import data_task

        task = task or data_task(data)
        model = DEFAULT_MODEL[task]
    tokenizer = load_tokenizer(model, trust_remote_code=trust_remote_code)
    # choosing starts here: loading the model (converting the embedded GGUF, the first time on a
    # machine) is a cost of the fine-tune, which pays it the same without a recommendation
    started = time.perf_counter()
    options = TrainOptions(data=data, output_dir="-", model=model, task=task, validation=validation, epochs=epochs,
                           max_steps=max_steps, batch_size=batch_size, max_length=max_length, max_examples=max_examples,
                           validation_fraction=validation_fraction, seed=seed, data_seed=data_seed, pack=pack,
                           train_on_inputs=train_on_inputs, trust_remote_code=trust_remote_code, quantize=quantize)
    if pilot:
        from ..processes import start_fork_server

        start_fork_server()  # its imports overlap the screening, not the first pilot
    # the pilots train on the sample and split the fine-tune will, so their losses are its losses
    prepared = options.prepare(tokenizer, test=False)
    options.task = task = prepared.info.task
    total_steps = steps_of(options, len(prepared.train))
    config = load_config(model, trust_remote_code=trust_remote_code)
    seq_len = prepared.longest_row()
    limit = constraints.max_vram
    screened, memory_name = constraints, "--max-vram"
    if device.planned and limit is None:  # planning for a known accelerator: its memory is the limit
        screened = constraints.model_copy(update={"max_vram": device.total_memory_bytes})
        memory_name = f"{device.name}'s memory"
    reports, verdicts = _screen(get_methods().values(), task, screened, memory_name, batch_size, model=model,
                                seq_len=seq_len, device=device, num_labels=len(prepared.label2id or {}) or 2,
                                config=config, plan=plan, quantize=quantize)
    feasible = [r for r in reports.values() if r.feasible]
    if not feasible:
        misses = nearest_misses(verdicts)
        detail = "; ".join(f"{name}: {'; '.join(v.reasons)}" for name, v in misses) or "; ".join(
            f"{r.method}: {'; '.join(r.excluded_because)}" for r in reports.values()) or "no method supports this task"
        raise NoFeasibleMethodError(f"no method satisfies the constraints. Nearest misses: {detail}")
    say(f"{len(feasible)} of {len(reports)} methods fit the constraints on {device.name} "
        f"({task}, {len(prepared.train)} training examples, {total_steps} steps at batch {batch_size})")

    recommender = Recommender().fit([r for r in records if r.benchmark not in set(leave_out or ())])
    evidence = recommender.match(model, task, fingerprint=prepared.info.fingerprint,
                                 stats={"examples": prepared.info.num_train, "mean_tokens": prepared.info.tokens.mean,
                                        "labels": len(prepared.info.labels or ())})
    rates = recommender.rates(model, task, total_steps)
    if rates is not None:
        say(rates.sentence())
    pilot_started = time.perf_counter()
    pilots: dict[str, Any] = {}
    coverage = None
    if pilot:
        pilots, coverage = _run_pilots(feasible, get_methods(), options, total_steps, pilot_fraction, pilot_seconds,
                             learning_rates_per_method, limit if not device.planned else None, recommender, say,
                             spent=lambda: time.perf_counter() - started, time_budget=constraints.time_budget,
                             also=on_pilot, rates=rates)
    pilot_took = time.perf_counter() - pilot_started

    candidates, rows = [], []
    for row in feasible:
        result = pilots.get(row.method)
        if result is not None:
            row.measured = result
            warning = None if device.planned else _cost_model_warning(get_methods()[row.method], row.estimated, result)
            if warning:
                row.warnings.append(warning)
                say(warning)
            reason = _pilot_reason(result, constraints, device, elapsed=time.perf_counter() - started)
            if reason:
                row.feasible = False
                row.excluded_because.append(reason)
                continue
        method = get_methods()[row.method]
        candidates.append(Candidate(
            name=row.method, method=row.method, task=options.task, family=method.family, settings=row.settings,
            learning_rate=result.learning_rate if result else None,
            trainable_params=row.estimated.trainable_params, total_params=row.estimated.total_params,
            adapter_bytes=row.estimated.adapter_bytes,
            peak_memory_bytes=(result.peak_memory_bytes if result and not device.planned
                               else row.estimated.peak_memory_bytes),
            seconds=result.estimated_full_seconds if result else None, pilot=result.curve if result else []))
        rows.append(row)
    if not candidates:
        raise NoFeasibleMethodError("every candidate failed its pilot: " + "; ".join(
            f"{r.method}: {r.excluded_because[-1]}" for r in feasible if r.excluded_because))
    predicted, mode = _predict_by_rung(candidates, recommender)
    scores = objective_scores(candidates, predicted, goal)
    front = pareto_front(candidates, predicted)
    for row, p, f in zip(rows, predicted, front):
        row.predicted_score, row.pareto = round(p, 4), f
    best = max(range(len(candidates)), key=lambda i: scores[i])
    chosen, row = candidates[best], rows[best]
    order = sorted(range(len(candidates)), key=lambda i: -scores[i])
    sure = _confidence(candidates, predicted, best, mode, evidence)
    explanation = explain(chosen, row, candidates, rows, order, mode, limit, goal, pilots,
                          prior_loss=prepared.label_frequency_loss(), evidence=evidence, confidence=sure,
                          coverage=coverage, rates=rates)
    say(explanation)
    rate = chosen.learning_rate
    if rate is None and rates is not None:  # no pilot: the rate runs like this one did best at
        rate = rates.rate(chosen.method, default_learning_rate(chosen.method, options.task))
    return Recommendation(
        chosen=chosen.method, settings=row._given,
        learning_rate=rate, batch_size=row.estimated.batch_size,
        gradient_accumulation_steps=row.estimated.gradient_accumulation_steps,
        gradient_checkpointing=row.estimated.gradient_checkpointing, quantize=quantize, explanation=explanation,
        mode=mode,
        candidates=sorted(reports.values(), key=lambda r: (not r.feasible, -(r.predicted_score or -math.inf))),
        device=device, constraints=constraints.model_dump(mode="json"), objective=goal.model_dump(),
        pilot_seconds=pilot_took, seconds=time.perf_counter() - started, total_steps=total_steps,
        trained_on=recommender.benchmarks_, confidence=None if sure is None else round(sure, 3),
        evidence=evidence.model_dump(include={"kind", "benchmarks", "runs"}) if evidence else None,
        learning_rates_from=rates.benchmarks if rates else [])


def _confidence(candidates, predicted, best, mode, evidence) -> float | None:
    """The probability that the choice lands within one point of the best (:mod:`.confidence`), from
    its lead over the runner-up among the pilots as long as its own (alone there: no lead)."""
    from .confidence import features, margin_of, probability

    rung = next(members for members in _by_pilot_length(candidates) if best in members)
    piloted = sum(1 for c in candidates if c.pilot) / len(candidates)
    return probability(features(margin_of(predicted, best, rung), piloted if mode != "static" else 0.0,
                                evidence.kind if evidence else None, len(candidates)))


def _cost_model_warning(method, estimated: Estimated, result: Measured) -> str | None:
    """A warning naming the plugin when its pilot measured far more memory than its cost model
    predicted (the candidate is then ranked, and held to --max-vram, by the measured figure)."""
    measured = result.peak_memory_bytes if result.status == "ok" else None
    if not measured or measured <= COST_MODEL_TOLERANCE * estimated.peak_memory_bytes:
        return None
    return (f"the cost model of {method.name} (plugin {method.source}) is wrong: it predicted "
            f"{format_size(estimated.peak_memory_bytes)}, its pilot measured {format_size(measured)}; "
            f"{method.name} is judged by the measured figure")


def _pilot_reason(result: Measured, constraints: Constraints, device: DeviceProfile, elapsed: float) -> str | None:
    """Why a piloted candidate is out after all (its pilot failed, or measured more than the
    budget allows), or None."""
    if result.status != "ok":
        return f"pilot {result.status}: {result.error}"
    if constraints.time_budget and result.estimated_full_seconds:
        left = constraints.time_budget - elapsed
        if result.estimated_full_seconds > left:
            return f"the fine-tune would take about {result.estimated_full_seconds:.0f} s; {left:.0f} s of --time-budget are left"
    limit = constraints.max_vram
    if limit is not None and not device.planned and (result.peak_memory_bytes or 0) > limit:
        return f"pilot measured {format_size(result.peak_memory_bytes)} > --max-vram {format_size(limit)}"
    return None


def _quantized_only(constraints: Constraints, quantize: str, *, local: bool) -> Constraints:
    """Constraints that admit only methods training on a quantised base; ``local``: something will run
    here (pilots, or the fine-tune), so this machine must be able to load one."""
    from ..quantization import check_supported, require_here

    check_supported(quantize, None)
    if local:
        require_here(quantize)
    if "quantized" in constraints.require:
        return constraints
    return constraints.model_copy(update={"require": (*constraints.require, "quantized")})


def _screen(methods, task, constraints, memory_name, batch_size, *, model, seq_len, device, num_labels, config,
            plan=None, quantize=None):
    """Check every method for the task against the constraints with the static cost model.
    Returns (a report per method, the verdicts of those the cost model judged)."""
    from ..costmodel import estimate
    from ..errors import first_line

    reports: dict[str, CandidateReport] = {}
    verdicts = {}
    named = set(constraints.methods or ())
    for method in methods:
        if task not in method.tasks:
            if named & {method.name, *method.aliases}:  # asked for by name: say why it is out
                reports[method.name] = CandidateReport(
                    method=method.name, settings=method.settings().model_dump(mode="json"), feasible=False,
                    excluded_because=[f"does not support {task} (it supports {', '.join(method.tasks)})"])
            continue
        settings = method.settings()
        row = CandidateReport(method=method.name, settings=settings.model_dump(mode="json"), feasible=False)
        row._given = settings.model_dump(mode="json", exclude_unset=True)
        reports[method.name] = row
        row.excluded_because = method_reasons(method, constraints)
        if row.excluded_because:
            continue

        @functools.lru_cache(maxsize=None)  # the fit is asked at a micro-batch already traced
        def estimate_at(micro: int, method=method, settings=settings):
            return estimate(model, method, settings=settings, task=task, batch_size=micro, seq_len=seq_len,
                            device="cuda" if device.kind == "cuda" else "cpu", num_labels=num_labels, config=config,
                            strategy=plan.strategy if plan else None, num_processes=plan.num_processes if plan else 1,
                            quantize=quantize)

        try:
            verdict = check(method, settings, constraints, batch_size, estimate_at, margin=PLANNING_MARGIN,
                            memory_name=memory_name)
        except Exception as exc:  # a plugin's cost model failing rules out that plugin, not the run
            row.excluded_because = [f"its cost model failed: {type(exc).__name__}: {first_line(exc)}"]
            continue
        verdicts[method.name] = verdict
        if not verdict.feasible:
            row.excluded_because = verdict.reasons
            continue
        est = estimate_at(verdict.fit.batch_size)
        row.feasible = True
        row.estimated = Estimated(
            trainable_params=est.trainable_params, total_params=est.total_params, adapter_bytes=est.adapter_bytes,
            peak_memory_bytes=verdict.fit.peak_memory_bytes, batch_size=verdict.fit.batch_size,
            gradient_accumulation_steps=verdict.fit.gradient_accumulation_steps,
            gradient_checkpointing=verdict.fit.gradient_checkpointing)
    return reports, verdicts


def _run_pilots(feasible, methods, options, total_steps, fraction, seconds, per_method, max_memory, recommender,
                say, spent: Callable[[], float], time_budget: float | None = None,
                also: Callable[[Any, int, Any], None] | None = None, rates=None) -> dict[str, Any]:
    """Successive halving over (method, learning rate) configurations; each method's best pilot.
    ``rates``: a :class:`autopeft.choose.ranking.RateEvidence`; each method's first rate is then the one
    it points to, the default second."""
    from .pilots import DEAR, PilotConfig, base_options, expected_cost, successive_halving
    from .ranking import Candidate, pilot_learning_rates

    # most promising first (the static ranking), LoRA before all: it calibrates the clock, and a
    # budget too small for every pilot drops configurations from the end
    unpiloted = [Candidate(name=r.method, method=r.method, total_params=r.estimated.total_params,
                           trainable_params=r.estimated.trainable_params) for r in feasible]
    static = recommender.predict(unpiloted) if recommender.mode(unpiloted) == "static" else [0.0] * len(feasible)
    order = sorted(range(len(feasible)), key=lambda i: (feasible[i].method != "lora", -static[i]))
    configs = []
    for row in (feasible[i] for i in order):
        method = methods[row.method]
        init_steps, step_ratio = expected_cost(options.task, row.method)
        for lr in pilot_learning_rates(row.method, method.search_space, options.task, per_method, rates):
            configs.append(PilotConfig(
                name=f"{row.method} lr={lr:g}", method=row.method, settings=row._given, learning_rate=lr,
                batch_size=row.estimated.batch_size, gradient_accumulation_steps=row.estimated.gradient_accumulation_steps,
                gradient_checkpointing=row.estimated.gradient_checkpointing, init_steps=init_steps,
                step_ratio=step_ratio))
    base = base_options(options)  # (pilots report to no tracker: tune logs them itself, from their results)

    share = fraction or DEFAULT_PILOT_FRACTION
    floor = 0.0 if fraction else MIN_CHOOSE_SECONDS
    if time_budget is not None:
        floor = min(floor, share * time_budget)

    planned: list[float] = []

    def budget(overhead: float, per_step: float) -> float:
        planned.append(_budget(overhead, per_step))
        return planned[-1]

    def _budget(overhead: float, per_step: float) -> float:
        if seconds is not None:
            return seconds
        # choosing (this far, plus the pilots) is to be ``share`` of the whole run's wall time:
        # choose <= share / (1 - share) x the fine-tune, estimated without its evaluations
        full = overhead + total_steps * per_step
        if time_budget is not None:
            full = min(full, (1 - share) * time_budget)
        return max(0.0, share / (1 - share) * full - spent(), floor - spent())

    def rank(configs_, results):
        cands = [Candidate(name=c.name, method=c.method, task=options.task, learning_rate=c.learning_rate,
                           pilot=results[c.name].curve,
                           trainable_params=results[c.name].trainable_params,
                           total_params=results[c.name].total_params) for c in configs_]
        return list(recommender.predict(cands))

    def on_pilot(config, steps, result):
        detail = (f"loss {result.curve[-1].train_loss:.3f}, {format_size(result.peak_memory_bytes or 0)}"
                  if result.status == "ok" and result.curve else f"{result.status}: {result.error}")
        took = "done before, reused" if result.reused else f"{result.seconds or 0:.0f} s"
        say(f"  pilot {config.name}: {steps} steps, {took}, {detail}")
        if also is not None:
            also(config, steps, result)

    say(f"pilots: {len(configs)} configurations of {len(feasible)} methods, with successive halving; "
        f"budget {'%.0f s' % seconds if seconds else f'{share:.0%} of the estimated full fine-tune'}"
        f"{f', at least {floor:.0f} s in all' if floor and not seconds else ''}")
    from ..models import autopeft_home
    from ..processes import stop_note

    with stop_note("stopping the pilots; the finished ones are kept (the same command again reuses them)"):
        rungs = successive_halving(configs, base, budget=budget, total_steps=total_steps, rank=rank,
                                   max_memory=max_memory, on_pilot=on_pilot, announce=say,
                                   cache=autopeft_home() / "pilots")
    best: dict[str, Any] = {}
    from ..profiles import end_loss

    for rung in rungs:  # later rungs (longer pilots) replace earlier ones
        by_method: dict[str, list] = {}
        for config in configs:
            if config.name in rung.results:
                by_method.setdefault(config.method, []).append((config, rung.results[config.name]))
        for method, pairs in by_method.items():
            # the rate halving kept for the method (ranked by the recommender); none when every pilot failed
            config, result = next(((c, r) for c, r in pairs if c.name == rung.chosen.get(method)), pairs[0])
            best[method] = Measured(
                status=result.status, error=result.error, learning_rate=config.learning_rate, pilot_steps=result.steps,
                pilot_loss=end_loss(result.curve) if result.curve else None,
                peak_memory_bytes=result.peak_memory_bytes, seconds_per_step=result.seconds_per_step,
                # the method's initialisation once, then every step
                estimated_full_seconds=((result.init_seconds or 0) + (result.seconds_per_step or 0) * total_steps
                                        or None), curve=result.curve)
    coverage = None
    if len(best) < len(feasible) and planned:
        left = len(feasible) - len(best)
        dear = [m for m in (rungs[0].passed_over if rungs else []) if m not in best]
        coverage = (f"the pilot budget, {planned[0]:.0f} s, covered {len(best)} of the {len(feasible)} methods, the "
                    f"most promising by the stored profiles"
                    + (f" (not {', '.join(dear)}: a pilot of {'each' if len(dear) > 1 else 'it'} costs over {DEAR:g} "
                       f"typical ones)" if dear else "")
                    + f"; the other {left} {'is' if left == 1 else 'are'} ranked without a pilot")
    return best, coverage


def _predict_by_rung(candidates, recommender) -> tuple[list[float], str]:
    """The recommender's prediction for each candidate, ranked among the pilots as long as its own,
    and the mode of the longest pilots' ranking. Every survivor of a halving round ranks above every
    candidate it outlasted: each shorter rung is shifted below the one before by more than the
    predictions' whole range (they are not bound to [0, 1])."""
    rungs = _by_pilot_length(candidates)
    raw = [0.0] * len(candidates)
    for members in rungs:
        for i, s in zip(members, recommender.predict([candidates[i] for i in members])):
            raw[i] = float(s)
    step = 1.0 + max(raw) - min(raw)
    depth = {i: d for d, members in enumerate(rungs) for i in members}
    mode = recommender.mode([candidates[i] for i in rungs[0]])
    return [s - step * depth[i] for i, s in enumerate(raw)], mode


def _by_pilot_length(candidates) -> list[list[int]]:
    """Candidate indices grouped by how long their pilot ran, longest first (survivors of halving)."""
    lengths = sorted({c.pilot[-1].step if c.pilot else 0 for c in candidates}, reverse=True)
    return [[i for i, c in enumerate(candidates) if (c.pilot[-1].step if c.pilot else 0) == n] for n in lengths]


