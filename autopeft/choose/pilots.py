"""Pilots: short real training runs of the candidates on the user's data, each in its own process.

A pilot is the first few steps of exactly the run it stands for (same data, batch, and learning-rate
schedule: see :func:`autopeft.training.run.pilot`), so its loss curve is the start of that run's curve.
Each pilot runs in a child process watched by this one: an out-of-memory, a crash or a hang marks
that pilot, never the whole recommendation, and a child that goes over the memory budget is stopped
at once with the figure it reached. On Linux the child is forked after the heavy
libraries are imported (by a fork server), so a pilot costs its steps and the model load, not a
fresh interpreter.

:func:`successive_halving` spends a time budget over many (method, learning rate) configurations:
every configuration runs a few steps, the best learning rate of each method and the best third of
the methods go on to a pilot at least twice as long, and so on, so most of the budget goes to
contenders (the plan is :mod:`autopeft.halving`'s, which ``replay`` also follows).

With several GPUs, the pilots of a rung run side by side, one per GPU (:func:`pilot_slots`); each
pilot is the same computation wherever it runs, so the results are those of running them one after
another, and the budget buys proportionally longer pilots.
"""

from __future__ import annotations

import functools
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from pydantic import BaseModel, Field

from .halving import MAX_FRACTION, best_of_each, next_length, plan_cost, planned_cost, survivors
from ..processes import deferring_stop, handling_stop_signals, on_accelerator, run_watched
from ..training.outputs import PilotResult

MIN_STEPS = 3
#: a method whose shortest pilot costs over this many times the median method's is afforded after the others
DEAR = 3.0
#: the leading methods by the static ranking: afforded in their place however dear, as a pilot that could
#: overturn the leader changes the decision more than several pilots of methods far behind it
CONTENDERS = 3
#: the rungs a configuration must be affordable for to be piloted at all (see :func:`affordable`): its
#: first; later rungs run on the survivors where the budget is left for them
AFFORDED_RUNGS = 1


class PilotConfig(BaseModel):
    """One configuration to pilot: a method, its settings, a learning rate and how it fits in memory."""

    name: str
    method: str
    settings: dict[str, Any] = Field(default_factory=dict)
    learning_rate: float
    batch_size: int
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = False
    # what the plan expects the pilot to cost beside the calibration's (see :class:`PilotCosts`)
    init_steps: float = Field(default=0.0, description="its one-off initialisation before step 1, in LoRA steps")
    step_ratio: float = Field(default=1.0, description="its seconds a step over LoRA's")

    def options(self) -> dict[str, Any]:
        return {"method": self.method, "settings": self.settings, "learning_rate": self.learning_rate,
                "batch_size": self.batch_size, "gradient_accumulation_steps": self.gradient_accumulation_steps,
                "gradient_checkpointing": self.gradient_checkpointing}


class Rung(BaseModel):
    """One round of successive halving."""

    steps: int
    results: dict[str, PilotResult]
    chosen: dict[str, str] = Field(default_factory=dict,
                                   description="each method's best configuration by the ranking: {method: name}")
    passed_over: list[str] = Field(default_factory=list, description="methods left without a pilot for their price: "
                                                                     "over DEAR times the median pilot's (first rung)")


def pilot_slots() -> list[str | None]:
    """Where pilots can run at the same time: one per visible GPU, or a single slot (the CPU, or one
    GPU: two pilots sharing a device would disturb each other's step times and memory)."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count < 2:
        return [None]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [d.strip() for d in visible.split(",") if d.strip()] if visible else [str(i) for i in range(count)]
    return ids[:count]


def run_rung(configs: Sequence[PilotConfig], base_options: dict[str, Any], steps: int, *,
             slots: Sequence[str | None] = (None,), max_memory: int | None = None,
             timeout: float | Callable[[PilotConfig], float] | None = None,
             on_pilot: Callable[[PilotConfig, int, PilotResult], None] | None = None,
             cache: Path | None = None, until: Callable[[PilotConfig], bool] | None = None) -> dict[str, PilotResult]:
    """Pilot every configuration for ``steps`` steps, as many at a time as there are ``slots``
    (GPU ids a pilot is pinned to; None: wherever the process runs). Results by configuration name.
    ``cache``: a dir of finished pilots (see :func:`run_pilot`). ``timeout``: seconds, or each
    configuration's. ``until(config)``: true when the budget has no time left to start that pilot;
    it and the configurations after it are not piloted (absent from the results)."""
    def limit(config: PilotConfig) -> float | None:
        return timeout(config) if callable(timeout) else timeout

    if len(slots) <= 1:
        results = {}
        for config in configs:
            if until is not None and until(config):
                break
            results[config.name] = run_pilot(config, base_options, steps, max_memory=max_memory, timeout=limit(config),
                                             gpu=slots[0] if slots else None, cache=cache)
            if on_pilot:
                on_pilot(config, steps, results[config.name])
        return results

    import queue
    from concurrent.futures import ThreadPoolExecutor

    free: queue.Queue = queue.Queue()
    for slot in slots:
        free.put(slot)

    def one(config: PilotConfig) -> PilotResult | None:
        slot = free.get()
        try:
            if until is not None and until(config):
                return None
            result = run_pilot(config, base_options, steps, max_memory=max_memory, timeout=limit(config), gpu=slot,
                               cache=cache)
        finally:
            free.put(slot)
        if on_pilot:
            on_pilot(config, steps, result)
        return result

    # held here, in the caller's thread, so that a stop signal reaches the pilots' watchers
    with handling_stop_signals(), ThreadPoolExecutor(max_workers=len(slots)) as pool:
        return {c.name: r for c, r in zip(configs, pool.map(one, configs)) if r is not None}


def run_pilot(config: PilotConfig, base_options: dict[str, Any], steps: int, *, max_memory: int | None = None,
              timeout: float | None = None, gpu: str | None = None, cache: Path | None = None) -> PilotResult:
    """Run one pilot of ``steps`` steps in a child process and return what it measured.

    :param base_options: the full run's :class:`autopeft.training.TrainOptions` (data, model, ...).
    :param max_memory: bytes; on CPU the child's resident memory is watched and the child is stopped
        beyond it (status ``oom``); on CUDA the child's allocator is capped to it.
    :param gpu: the id of the GPU the pilot runs on (``CUDA_VISIBLE_DEVICES``); None: the default.
    :param cache: a dir where finished pilots are kept: a pilot of the same configuration, options,
        data, model and budget found there is returned (``reused``) instead of run again, so that a
        ``tune`` that was killed, or a ``tune`` after a ``recommend``, does not redo its pilots.
    """
    key = _cache_key(config, base_options, steps, max_memory) if cache is not None else None
    if key is not None and (cache / f"{key}.json").is_file():
        try:
            return PilotResult.model_validate_json((cache / f"{key}.json").read_text()).model_copy(
                update={"reused": True})
        except ValueError:
            pass  # a damaged entry is run again and rewritten
    # a pilot that finished is cached before a stop signal takes effect (the next run reuses it);
    # one still running is killed and discarded
    with deferring_stop():
        return _run_and_cache(config, base_options, steps, max_memory, timeout, gpu, cache, key)


def _run_and_cache(config: PilotConfig, base_options: dict[str, Any], steps: int, max_memory: int | None,
                   timeout: float | None, gpu: str | None, cache: Path | None, key: str | None) -> PilotResult:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="autopeft-pilot-") as tmp:
        result_path = Path(tmp) / "result.json"
        options = {**base_options, **config.options(), "output_dir": str(Path(tmp) / "run"), "forgetting": False,
                   "samples": 0}
        peak, failure = run_watched(_child, (options, steps, str(result_path)), max_memory=max_memory,
                                    timeout=timeout, env={"CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else None)
        if failure is not None:
            result = PilotResult(status=failure[0], error=failure[1], peak_memory_bytes=peak or None)
        elif result_path.is_file():
            result = PilotResult.model_validate_json(result_path.read_text())
        else:
            result = PilotResult(status="failed", error="the pilot process ended with no result",
                                 peak_memory_bytes=peak or None)
    result.seconds = time.perf_counter() - started
    if result.status == "ok" and peak and not on_accelerator():
        # the watcher's sampled peak can miss a spike; the child's own high-water mark cannot (on CUDA
        # the budget is the allocator's, which the child measures itself; the watcher sees host memory)
        result.peak_memory_bytes = max(result.peak_memory_bytes or 0, peak)
    if key is not None and result.status in ("ok", "oom"):  # a crash or a timeout may not happen again
        from ..training.outputs import write_text

        cache.mkdir(parents=True, exist_ok=True)
        write_text(cache / f"{key}.json", result.model_dump_json())
    return result


def _cache_key(config: PilotConfig, base_options: dict[str, Any], steps: int, max_memory: int | None) -> str:
    """What a pilot's outcome depends on: the configuration, the run's options, the bytes of the data,
    the model's files, the budget and autopeft's version."""
    import hashlib
    import json

    from ..version import __version__

    options = {k: v for k, v in base_options.items() if k != "output_dir"}
    described = {"config": config.model_dump(mode="json", exclude={"init_steps", "step_ratio"}), "options": options,
                 "steps": steps, "max_memory": max_memory, "data": _stamp(options.get("data")),
                 "validation": _stamp(options.get("validation")), "model": _stamp(options.get("model")),
                 "version": __version__}
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _stamp(path: str | None) -> Any:
    """A data file's content hash, a model dir's file names, sizes and times, or the name itself (a Hub
    id, an embedded model)."""
    if not path:
        return None
    p = Path(path).expanduser()
    if p.is_file():
        stat = p.stat()
        return _content_hash(str(p.resolve()), stat.st_size, stat.st_mtime_ns)
    if p.is_dir():  # hashing gigabytes of weights would cost more than the pilot
        return [(str(f.relative_to(p)), f.stat().st_size, f.stat().st_mtime_ns)
                for f in sorted(p.rglob("*")) if f.is_file()]
    return path


@functools.lru_cache(maxsize=16)
def _content_hash(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file, read once per version of it (every pilot of a rung asks for the same file)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def successive_halving(configs: Sequence[PilotConfig], base_options: dict[str, Any], *,
                       budget: Callable[[float, float], float], total_steps: int,
                       rank: Callable[[list[PilotConfig], dict[str, PilotResult]], list[float]],
                       max_memory: int | None = None, max_fraction: float = MAX_FRACTION,
                       on_pilot: Callable[[PilotConfig, int, PilotResult], None] | None = None,
                       announce: Callable[[str], None] | None = None,
                       slots: Sequence[str | None] | None = None, cache: Path | None = None) -> list[Rung]:
    """Spend a time budget over ``configs``: a few steps each, then the best learning rate per
    method and the best third of the methods (by ``rank``, higher is better) at least twice as
    long, until one or two methods are left or the budget is spent (see :mod:`autopeft.halving`).
    Returns every rung's results.

    The first configuration runs first, for ``MIN_STEPS`` steps, to measure the process overhead and
    the step time; ``budget(overhead, seconds_per_step)`` then gives the seconds to spend, and the
    rungs are planned to fit what is left of it, each configuration priced by :class:`PilotCosts`.
    No pilot starts that would end well past the budget: a plan that priced a method too low costs
    that method its pilot, not the user the time. ``slots`` (default: :func:`pilot_slots`) run a
    rung's pilots side by side, which divides its wall time by their number. ``cache``: see
    :func:`run_pilot`.
    """
    configs = list(configs)
    slots = list(slots) if slots else pilot_slots()
    calibration = run_pilot(configs[0], base_options, MIN_STEPS, max_memory=max_memory, gpu=slots[0], cache=cache)
    if on_pilot:
        on_pilot(configs[0], MIN_STEPS, calibration)
    costs = PilotCosts(configs[0], calibration)
    budget_seconds = budget(*_costs(calibration))
    deadline = time.perf_counter() + budget_seconds
    parallel = len(slots)
    cap = max(MIN_STEPS, int(max_fraction * total_steps))
    rungs: list[Rung] = []
    alive = affordable(configs, budget_seconds * parallel, costs)
    left_out = sorted(dear_methods(configs, costs) - {c.method for c in alive},
                      key=[c.method for c in configs].index)
    if announce:
        side_by_side = f", {parallel} at a time" if parallel > 1 else ""
        overhead, per_step = costs.mean(alive)
        planned = min(budget_seconds, planned_cost(len(alive), _methods(alive), budget_seconds * parallel,
                                                   overhead=overhead, per_unit=per_step, shortest=MIN_STEPS,
                                                   cap=cap) / parallel)
        announce(f"pilots will take about {planned:.0f} s ({costs.start:.1f} s to start a pilot, "
                 f"{costs.unit:.2f} s a LoRA step{side_by_side})")
    if announce and len(alive) < len(configs):
        announce(f"the budget allows {len(alive)} of {len(configs)} pilot configurations: the rest are ranked "
                 f"without a pilot" + (f" ({', '.join(left_out)}: a pilot of each costs over {DEAR:g} typical ones)"
                                       if left_out else ""))
    # a pilot that would end later than this is not started: a tenth of the budget is the slack given to the prices
    grace = 0.1 * budget_seconds

    def too_late(config: PilotConfig, steps: int) -> bool:
        fixed, per_step = costs(config)
        return time.perf_counter() + fixed + steps * per_step > deadline + grace

    while len(alive) > 1 or not rungs:
        shortest = 2 * rungs[-1].steps if rungs else MIN_STEPS
        overhead, per_step = costs.mean(alive)
        # n slots side by side: the wall time left buys n times the pilot time
        length = next_length(len(alive), _methods(alive), parallel * (deadline - time.perf_counter()),
                             overhead=overhead, per_unit=per_step, shortest=shortest, cap=cap)
        if rungs and (length is None or int(length) < shortest):
            break  # no budget left for pilots longer than the last: decide on what is known
        steps = max(int(length or 0), MIN_STEPS)
        reuse = steps == MIN_STEPS and configs[0] in alive
        results = {configs[0].name: calibration} if reuse else {}
        todo = [c for c in alive if not (reuse and c is configs[0])]
        results.update(run_rung(todo, base_options, steps, slots=slots, max_memory=max_memory, on_pilot=on_pilot,
                                cache=cache, until=lambda c: too_late(c, steps),
                                timeout=lambda c: max(120.0, 5 * (costs(c)[0] + steps * costs(c)[1]))))
        for config in todo:
            if config.name in results:
                costs.update(config, results[config.name])
        if announce and any(c.name not in results for c in todo):
            announce(f"the pilot budget ran out: {sum(c.name not in results for c in todo)} of the {len(todo)} "
                     f"pilots of {steps} steps were not run")
        alive, chosen = _survivors([c for c in alive if c.name in results], results, rank)
        rungs.append(Rung(steps=steps, results=results, chosen=chosen, passed_over=[] if rungs else left_out))
        if steps >= cap:
            break
    return rungs


class PilotCosts:
    """What each configuration's pilot is expected to cost, as (seconds before step 1, seconds a step).

    Measured, for a configuration that has run; else the calibration pilot's figures scaled by the
    configuration's ``init_steps`` and ``step_ratio`` (each method's cost beside LoRA's, measured by
    ``benchmarks/pilot_costs.py`` and shipped in ``autopeft/resources/pilot_costs.json``: see
    :func:`expected_cost`). ``start`` is what starting a pilot costs (the process, the model), ``unit``
    the seconds of one LoRA step.
    """

    def __init__(self, calibration: PilotConfig, result: PilotResult):
        overhead, per_step = _costs(result)
        self.unit = per_step / max(calibration.step_ratio, 1e-6)
        self.start = max(0.0, overhead - calibration.init_steps * self.unit)
        self.measured: dict[str, tuple[float, float]] = {}
        self._starts: list[float] = []
        self.update(calibration, result)

    def update(self, config: PilotConfig, result: PilotResult) -> None:
        if result.status != "ok" or not result.seconds_per_step or result.seconds is None:
            return
        self.measured[config.name] = _costs(result)
        self._starts.append(max(0.0, self.measured[config.name][0] - (result.init_seconds or 0.0)))
        self.start = statistics.median(self._starts)

    def __call__(self, config: PilotConfig) -> tuple[float, float]:
        return self.measured.get(config.name) or (self.start + config.init_steps * self.unit,
                                                  config.step_ratio * self.unit)

    def mean(self, configs: Sequence[PilotConfig]) -> tuple[float, float]:
        """The mean of ``configs``' costs: a rung of them costs ``len(configs)`` times it."""
        return _mean_cost(configs, self) if configs else (self.start, self.unit)


def _mean_cost(configs: Sequence[PilotConfig],
               cost: Callable[[PilotConfig], tuple[float, float]]) -> tuple[float, float]:
    priced = [cost(c) for c in configs]
    return statistics.fmean(f for f, _ in priced), statistics.fmean(p for _, p in priced)


def base_options(options) -> dict[str, Any]:
    """What every pilot of a run shares: its :class:`autopeft.training.TrainOptions` less what a
    :class:`PilotConfig` sets, the output dir and the trackers (pilots report to none)."""
    return options.model_dump(exclude={"output_dir", "method", "settings", "learning_rate", "batch_size",
                                       "gradient_accumulation_steps", "gradient_checkpointing", "report_to"})


def dear_methods(configs: Sequence[PilotConfig], cost: Callable[[PilotConfig], tuple[float, float]]) -> set[str]:
    """The methods whose shortest pilot is priced over ``DEAR`` times the median method's: one of them
    costs as much as several others (EVA's or CorDA's initialisation), so a budget that cannot cover
    every method covers the others first."""
    prices: dict[str, float] = {}
    for c in configs:
        fixed, per_step = cost(c)
        prices.setdefault(c.method, fixed + MIN_STEPS * per_step)
    if len(prices) < 2:
        return set()
    typical = statistics.median(prices.values())
    return {m for m, price in prices.items() if price > DEAR * typical}


def expected_cost(task: str, method: str) -> tuple[float, float]:
    """A method's pilot beside LoRA's on the embedded model of ``task``'s kind, as (initialisation in
    LoRA steps, step time over LoRA's), from ``autopeft/resources/pilot_costs.json``; (0, 1) for a
    method it does not list (a third-party plugin, a task it was not measured on): priced as LoRA."""
    known = _pilot_costs().get("seq-cls" if task == "token-cls" else task, {}).get("methods", {}).get(method)
    return (known["init_steps"], known["step_ratio"]) if known else (0.0, 1.0)


@functools.lru_cache(maxsize=1)
def _pilot_costs() -> dict[str, Any]:
    import json
    from importlib.resources import files

    try:
        return json.loads(files("autopeft").joinpath("resources", "pilot_costs.json").read_text())
    except (FileNotFoundError, ValueError):  # an install without it prices every method as LoRA
        return {}


def affordable(configs: list[PilotConfig], seconds: float,
               cost: Callable[[PilotConfig], tuple[float, float]] | PilotCosts) -> list[PilotConfig]:
    """The configurations that ``seconds`` can afford, taken in the order given (most promising
    first; the first has already run, as the calibration): all of them; else one learning rate per
    method, every method that still fits once those before it are in, the :func:`dear_methods` last
    (one of them would cost the pilots of several others) unless they are among the first
    ``CONTENDERS`` methods, and a method too dear for what is left passed over for cheaper ones after
    it. They are returned in the order they run: the calibration, the others in the given order, then
    the dear ones. Affording a configuration takes its first
    rung (``AFFORDED_RUNGS``): longer rungs run where the budget is left for them, as a short budget
    is better spent on more methods than on longer pilots of a few. ``cost`` prices a
    configuration's pilot as (seconds before step 1, seconds a step)."""
    def plan(group):
        rest = group[1:]
        if not rest:
            return 0.0
        overhead, per_step = _mean_cost(rest, cost)
        return plan_cost(len(rest), _methods(group), overhead=overhead, per_unit=per_step, shortest=MIN_STEPS,
                         rungs=AFFORDED_RUNGS)

    if plan(configs) <= seconds:
        return configs
    firsts, seen = [], set()
    for c in configs:
        if c.method not in seen:
            seen.add(c.method)
            firsts.append(c)
    dear = dear_methods(firsts, cost) - {c.method for c in firsts[:CONTENDERS]}
    chosen = firsts[:1]
    for c in [c for c in firsts[1:] if c.method not in dear] + [c for c in firsts[1:] if c.method in dear]:
        if plan(chosen + [c]) <= seconds:
            chosen.append(c)
    return chosen


def _survivors(alive: list[PilotConfig], results: dict[str, PilotResult],
               rank) -> tuple[list[PilotConfig], dict[str, str]]:
    """The best learning rate of each method, then the best of the methods (``halving.survivors``),
    and each method's best configuration by name. One ranking of every configuration of the rung
    decides both, so that the recommender sees a method's rates side by side and weighs the early
    lead of the larger one as it learned to."""
    ok = [c for c in alive if results.get(c.name) and results[c.name].status == "ok" and results[c.name].curve]
    scores = rank(ok, {c.name: results[c.name] for c in ok}) if len(ok) > 1 else [0.0] * len(ok)
    best = best_of_each(ok, scores, lambda c: c.method)
    methods = list(best.values())  # best first
    return methods[:survivors(len(methods))], {m: c.name for m, c in best.items()}


def _methods(configs: Sequence[PilotConfig]) -> int:
    return len({c.method for c in configs})


def _costs(result: PilotResult, overhead: float = 10.0, per_step: float = 1.0) -> tuple[float, float]:
    """Seconds before and beside the steps (the process, the model, the first step's one-off costs) and
    seconds per step, measured by a pilot (the previous guesses if it failed): together they give back
    the pilot's own time."""
    if result.status != "ok" or not result.seconds_per_step or result.seconds is None:
        return overhead, per_step
    return max(0.0, result.seconds - result.steps * result.seconds_per_step), result.seconds_per_step


def _child(options: dict[str, Any], steps: int, result_path: str) -> None:
    """Entry point of a pilot process (capped by run_watched on CUDA): pilot, then write the result
    (or the failure) as JSON."""
    import logging

    from ..errors import first_line
    from ..logs import quiet_libraries

    quiet_libraries()
    # what the data lacks was said once, by the recommendation that runs this pilot: not once a pilot
    logging.getLogger("autopeft.data").setLevel(logging.ERROR)

    try:
        from ..training.run import pilot

        data = options.pop("data")
        output_dir = options.pop("output_dir")
        result = pilot(data, output_dir=output_dir, steps=steps, **options)
    except Exception as exc:  # the child reports every failure as its result; the parent decides
        status = "oom" if "out of memory" in str(exc).lower() or type(exc).__name__ == "OutOfMemoryError" else "failed"
        result = PilotResult(status=status, error=f"{type(exc).__name__}: {first_line(exc)}")
    Path(result_path).write_text(result.model_dump_json())
