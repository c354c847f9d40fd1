"""``autopeft bench``: train every candidate method on one task, each at a few learning rates, and
keep what happened as profile records (:mod:`autopeft.profiles`) the recommender can learn from.

A bench is a directory: ``bench.json`` (the task: data, model and training options, fixed when the
bench starts), ``records.jsonl`` (one record per finished run, failures included, appended as each
run ends, as the profile store is: a torn line is skipped with a warning) and
``runs/<experiment>.json`` (each run's ``run.json``). Starting the same bench again continues it:
finished runs are never repeated, so it can run in the background for hours, be stopped at any
point and be resumed. Each run is a full ``autopeft train`` in its own process, so a
crash or an out-of-memory marks that run only. Each run is scored by its validation (or ``--test``)
loss, or, with ``metrics`` (``--metric``), by the first task metric on what it generates.

The sweep is fair: every method gets the same number of learning rates, its default first and then
its nearest neighbours in its own search space, since untuned learning rates are the main reason
published comparisons disagree. A method whose best rate is the highest (or lowest) it tried has not
found its best yet, so the sweep goes on past that edge, one rate at a time, until a rate scores worse
or ``edge_rates`` more have been tried: otherwise a method whose search space sits too low for the
task would be ranked by its best *un*tuned rate. A method that scored the same at every rate (a
classifier that predicts the majority class at each) is pushed upwards the same way.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, Field

from ..errors import BadInputError, first_line
from ..profiles import ProfileRecord, append, read_store, record_from_run
from ..training.outputs import holding_output_dir

BENCH_FILE = "bench.json"
RECORDS_FILE = "records.jsonl"


class BenchRun(BaseModel):
    """One run of a bench: a method at one learning rate."""

    experiment: str = Field(description="unique in the bench, e.g. 'lora lr=0.0003'")
    method: str
    learning_rate: float


class BenchSpec(BaseModel):
    """What ``bench.json`` holds: the task every run of the bench shares."""

    benchmark: str
    data: str
    task: str
    options: dict[str, Any] = Field(description="training options shared by every run (model, epochs, ...)")
    learning_rates: int = Field(ge=1, description="learning rates per method")
    edge_rates: int = Field(default=2, ge=0, description="more rates past each edge where the best rate sits at it")


def plan(task: str, methods: list[str] | None, learning_rates: int, *, quantize: str | None = None) -> list[BenchRun]:
    """The runs of a bench: each available method for ``task`` (or those named) at ``learning_rates``
    learning rates from its search space, the default first; with ``quantize``, only methods that
    train on a quantised base."""
    from ..quantization import check_supported

    from ..methods.registry import check_method_names, get_method, get_methods

    if methods:
        check_method_names(methods, source="--methods")
        chosen = [get_method(name) for name in methods]
        wrong = [m.name for m in chosen if task not in m.tasks]
        if wrong:
            raise BadInputError(f"--methods: {', '.join(wrong)} cannot train a {task} model")
        if quantize:
            for method in chosen:
                check_supported(quantize, method)
    else:
        chosen = [m for m in get_methods().values() if task in m.tasks and m.unavailable_reason() is None
                  and (m.capabilities.quantized or not quantize)]
    return [BenchRun(experiment=f"{m.name} lr={lr:g}", method=m.name, learning_rate=lr)
            for m in chosen for lr in m.search_space.learning_rate_grid(task, learning_rates)]


#: the step past an edge: the method's own spacing there, within these bounds
EDGE_STEP = (2.0, 5.0)


def edge_runs(records: list[ProfileRecord], planned: dict[str, list[float]], limit: int) -> list[BenchRun]:
    """The next run of each planned method whose best learning rate is the highest or lowest it tried.

    :param planned: each method's planned learning rates; ``limit`` more may be tried past either end.

    A method needs two scored rates to have an edge, and its edge rate must score strictly better than
    every other: a rate past its best that failed or scored worse ends the search that way. A method
    that scored the same at every rate learned nothing at any of them, most often for a rate too low
    for a short run: its search goes up from its highest rate. The next
    rate is one step further, the step being the ratio between the edge rate and its neighbour
    (within :data:`EDGE_STEP`), rounded to 3 significant digits."""
    by_method: dict[str, list[ProfileRecord]] = {}
    for record in records:
        by_method.setdefault(record.method, []).append(record)
    runs = []
    for method, grid in planned.items():
        tried = by_method.get(method, [])
        scored = sorted((r for r in tried if r.score is not None), key=lambda r: r.learning_rate)
        if len(scored) < 2:
            continue
        best = max(scored, key=lambda r: r.quality())
        ties = sum(r.quality() == best.quality() for r in scored)
        if ties == len(scored):  # the same at every rate (the majority class, an F1 of 0): it learned nothing
            best = scored[-1]
        elif ties > 1:
            continue
        rates = sorted({r.learning_rate for r in tried})
        if best.learning_rate == rates[-1] and sum(lr > max(grid) for lr in rates) < limit:
            up, neighbour = True, scored[-2].learning_rate
        elif best.learning_rate == rates[0] and sum(lr < min(grid) for lr in rates) < limit:
            up, neighbour = False, scored[1].learning_rate
        else:
            continue
        step = min(max(max(best.learning_rate, neighbour) / min(best.learning_rate, neighbour), EDGE_STEP[0]),
                   EDGE_STEP[1])
        rate = float(f"{best.learning_rate * step if up else best.learning_rate / step:.3g}")
        runs.append(BenchRun(experiment=f"{method} lr={rate:g}", method=method, learning_rate=rate))
    return runs


@holding_output_dir("bench")  # one bench at a time in a directory: two would run the same runs
def bench(data: str, *, benchmark: str, output_dir: str, methods: list[str] | None = None, learning_rates: int = 3,
          edge_rates: int = 2, timeout: float | None = None, say: Callable[[str], None] = print,
          **options) -> list[ProfileRecord]:
    """Run (or continue) the bench in ``output_dir`` and return every record it holds.

    :param benchmark: the name the records share, e.g. ``autopeft/sst2-2k-minilm-l6``.
    :param edge_rates: at most this many more learning rates past each edge of a method's sweep where
        its best rate sits at that edge (:func:`edge_runs`); 0 keeps to the planned rates.
    :param options: training options shared by every run (any field of ``TrainOptions``).
    :param timeout: seconds after which one run is stopped and recorded as failed.
    """
    from ..data import data_task

    out = Path(output_dir).expanduser()
    task = options.get("task") or data_task(data)
    if options.get("metrics"):  # every run is then scored by the first metric: check them once, up front
        from ..training.generation import check_request

        check_request(data, options["metrics"], task)
    spec = BenchSpec(benchmark=benchmark, data=str(data), task=task, options=options, learning_rates=learning_rates,
                     edge_rates=edge_rates)
    if options.get("quantize"):
        from ..quantization import require_here

        require_here(options["quantize"])
    runs = plan(task, methods, learning_rates, quantize=options.get("quantize"))  # bad names: before any write
    _start_or_continue(out, spec)
    records_path = out / RECORDS_FILE
    done = {r.experiment for r in read_store(records_path)} if records_path.is_file() else set()
    todo = [r for r in runs if r.experiment not in done]
    say(f"bench {benchmark}: {len(runs)} runs ({len({r.method for r in runs})} methods x up to {learning_rates} "
        f"learning rates), {len(runs) - len(todo)} already finished, {len(todo)} to go"
        + (f"; {_time_to_go(out, done, len(todo))}" if todo else ""))
    _run_each(spec, todo, out, timeout, say)
    planned: dict[str, list[float]] = {}
    for run in runs:
        planned.setdefault(run.method, []).append(run.learning_rate)
    while edge_rates:
        past = [r for r in edge_runs(read_store(records_path), planned, edge_rates) if r.experiment not in done]
        if not past:
            break
        say(f"bench {benchmark}: {_methods_at_the_edge(len(past))}; one rate further for "
            f"{'each' if len(past) > 1 else 'it'}: {', '.join(r.experiment for r in past)}")
        _run_each(spec, past, out, timeout, say)
        done.update(r.experiment for r in past)
    return read_store(records_path)


def _time_to_go(out: Path, done: set[str], count: int) -> str:
    """How long ``count`` more runs will take, from the wall time of the bench's finished runs (their
    ``run.json``), or that the first run will tell."""
    seconds = []
    for experiment in done:
        try:
            seconds.append(float(json.loads(run_file(out, experiment).read_text())["seconds"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a failed run keeps no run.json
    if not seconds:
        return "the first run's time sets the estimate for the rest"
    typical = sorted(seconds)[len(seconds) // 2]
    return (f"about {_minutes(count * typical)} at the {typical:.0f} s a run the {len(seconds)} finished "
            f"run{'s' * (len(seconds) != 1)} took (median)")


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def _methods_at_the_edge(count: int) -> str:
    if count == 1:
        return "1 method scores best at the edge of the learning rates it tried (or the same at each)"
    return f"{count} methods score best at the edge of the learning rates they tried (or the same at each)"


def _run_each(spec: BenchSpec, runs: list[BenchRun], out: Path, timeout: float | None,
              say: Callable[[str], None]) -> None:
    """Train each run in turn, appending its record as it ends and saying how long is left. On Ctrl-C
    or SIGTERM the run in progress is dropped and the finished ones are kept."""
    from ..processes import deferring_stop

    spent: list[float] = []
    for i, run in enumerate(runs, 1):
        started = time.perf_counter()
        # a run that finished is recorded before a stop takes effect
        with deferring_stop("stopping the bench; its finished runs are kept (the same command again continues it)"):
            record = run_one(spec, run, out, timeout)
            append([record], out / RECORDS_FILE)
        spent.append(time.perf_counter() - started)
        left = (len(runs) - i) * sum(spent) / len(spent)
        outcome = f"{record.metric} {record.score:.4f}" if record.score is not None else f"failed: {record.error}"
        say(f"  [{i}/{len(runs)}] {run.experiment}: {outcome} ({spent[-1]:.0f} s; about {_minutes(left)} left)")


def _start_or_continue(out: Path, spec: BenchSpec) -> None:
    """Write ``bench.json`` in a new bench; in an existing one, insist on the same task. Only the
    numbers of learning rates may change: a bench continued with more keeps its finished runs."""
    path = out / BENCH_FILE
    if path.is_file():
        stored = BenchSpec.model_validate_json(path.read_text())
        counts = {"learning_rates": spec.learning_rates, "edge_rates": spec.edge_rates}
        if stored.model_copy(update=counts) != spec:
            raise BadInputError(f"this bench was started with other settings ({stored.model_dump_json()}); give "
                                f"the same ones to continue it, or another --output", source=str(path))
        if path.read_text() == spec.model_dump_json(indent=2):
            return
    elif out.exists() and any(out.iterdir()):
        raise BadInputError("not a bench directory (no bench.json) and not empty", source=str(out))
    out.mkdir(parents=True, exist_ok=True)
    from ..training.outputs import write_text

    write_text(path, spec.model_dump_json(indent=2))


def run_file(out: Path, experiment: str) -> Path:
    """Where a bench in ``out`` keeps the ``run.json`` of ``experiment``."""
    return out / "runs" / ("".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in experiment) + ".json")


def run_one(spec: BenchSpec, run: BenchRun, out: Path, timeout: float | None = None) -> ProfileRecord:
    """Train ``run`` with ``spec``'s options in a watched child process; a failure becomes a record
    with no score. The run's ``run.json`` is kept as ``out/runs/<its experiment>.json``; its adapter
    is not (the record holds what counts). ``benchmarks/seed_noise.py`` reruns a bench's runs so."""
    from ..processes import run_watched

    with tempfile.TemporaryDirectory(prefix="autopeft-bench-") as tmp:
        result_path = Path(tmp) / "record.json"
        name = run_file(out, run.experiment).stem  # trackers name each run after its output dir
        # a bench measures training: the forgetting check and sample generations only cost time here
        options = {"forgetting": False, "samples": 0, **spec.options, "data": spec.data,
                   "output_dir": str(Path(tmp) / name), "method": run.method, "learning_rate": run.learning_rate,
                   "profile_store": False}
        # TensorBoard's event files outlive the run's scratch dir
        from ..training.tracking import split_trackers

        board = ({"TENSORBOARD_LOGGING_DIR": str(out / "logs" / name)}
                 if "tensorboard" in split_trackers(spec.options.get("report_to")) else None)
        peak, failure = run_watched(_child, (options, spec.benchmark, run.experiment, str(result_path)),
                                    timeout=timeout, env=board)
        if failure is None and result_path.is_file():
            from ..training.outputs import write_text

            kept = run_file(out, run.experiment)
            kept.parent.mkdir(parents=True, exist_ok=True)
            write_text(kept, (Path(tmp) / "run.json").read_text())
            return ProfileRecord.model_validate_json(result_path.read_text())
        error = (failure[1] if failure else None) or "the run ended with no result"
        if result_path.with_suffix(".error").is_file():
            error = result_path.with_suffix(".error").read_text()
        return ProfileRecord(benchmark=spec.benchmark, experiment=run.experiment, task=spec.task,
                             model=str(spec.options.get("model") or "default"), dataset=spec.data, method=run.method,
                             learning_rate=run.learning_rate, total_steps=1, peak_memory_bytes=peak or None,
                             metric="none", score=None, error=error, source="autopeft bench on this machine")


def _child(options: dict[str, Any], benchmark: str, experiment: str, result_path: str) -> None:
    """Entry point of a bench run's process: train, then write the record (or the error)."""
    from ..logs import quiet_libraries

    quiet_libraries()
    try:
        from ..training.run import train

        data = options.pop("data")
        output_dir = options.pop("output_dir")
        run = train(data, output_dir=output_dir, progress=False, **options)
        record = record_from_run(run, benchmark).model_copy(
            update={"experiment": experiment, "source": "autopeft bench on this machine"})
        Path(result_path).write_text(record.model_dump_json())
        Path(result_path).with_name("run.json").write_text(json.dumps(run.model_dump(mode="json")))
    except Exception as exc:  # the child reports every failure; the parent records it
        Path(result_path).with_suffix(".error").write_text(f"{type(exc).__name__}: {first_line(exc)}")
