"""How much of a bench's ranking is training noise: the best runs of a bench again, at other seeds.

Leave-one-task-out judges a choice by its regret against the best run of the bench, and every bench
trains each configuration once. This reruns the ``--top`` best configurations of a bench (and any
named with ``--also``) with ``--seeds`` other training seeds, on the same data sample and split, and
prints each one's scores, their spread, and what that spread means for regret: how far below the
best of a fresh seed's runs the configuration that was best at seed 0 lands, and how far below each
seed's best the configuration with the best mean lands. No choice judged on one seed's runs can count
on doing better than that.

    python benchmarks/seed_noise.py [--bench DIR] [--top 5] [--seeds 3] [--also METHOD@RATE ...]

The bench directory's ``bench.json`` gives the task and training options, and each rerun trains as
the bench's own runs did (``autopeft.choose.bench.run_one``), with only the training seed changed. Each
run's ``run.json`` is kept in ``benchmarks/results/seed_noise/<bench directory>/runs/``; a run found
there is not repeated. The report is ``benchmarks/results/seed_noise-<bench directory>.md`` (and .json).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BENCH = ROOT / "benchmarks" / "results" / "bench" / "sst2-heldout-minilm"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", default=str(DEFAULT_BENCH), help="a bench directory (its bench.json and records)")
    parser.add_argument("--top", type=int, default=5, help="rerun the N best configurations of the bench")
    parser.add_argument("--also", action="append", default=[], metavar="METHOD@RATE",
                        help="rerun this configuration too (e.g. one a choice picked)")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds 1..N beside the bench's own 0")
    parser.add_argument("--runs", help="where reruns are kept (default: benchmarks/results/seed_noise/<bench directory>)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()

    from autopeft.choose.bench import BENCH_FILE, RECORDS_FILE, BenchSpec, run_file
    from autopeft.profiles import read_jsonl

    bench = Path(args.bench)
    if not (bench / BENCH_FILE).is_file() or not (bench / RECORDS_FILE).is_file():
        parser.error(f"--bench {bench}: not a bench directory (no {BENCH_FILE} and {RECORDS_FILE} there)")
    spec = BenchSpec.model_validate_json((bench / BENCH_FILE).read_text())
    records = [r for r in read_jsonl(bench / RECORDS_FILE) if r.score is not None]
    chosen = sorted(records, key=lambda r: -r.quality())[:args.top]
    for name in args.also:
        method, _, rate = name.partition("@")
        try:
            wanted = float(rate)
        except ValueError:
            parser.error(f"--also {name}: give METHOD@RATE, e.g. lora@0.0111")
        match = [r for r in records if r.method == method and r.learning_rate and abs(r.learning_rate / wanted - 1) < 0.01]
        if not match:
            parser.error(f"--also {name}: no run of {spec.benchmark} has that method and rate")
        chosen += [r for r in match if r not in chosen]
    runs = Path(args.runs) if args.runs else ROOT / "benchmarks" / "results" / "seed_noise" / bench.resolve().name
    total = len(chosen) * args.seeds
    todo = [(r, seed) for r in chosen for seed in range(1, args.seeds + 1)
            if not run_file(runs, f"{r.experiment} seed={seed}").is_file()]
    # each rerun takes about what the bench's run took (its training time, plus loading and scoring)
    minutes = sum(r.train_seconds or 60 for r, _ in todo) * 1.3 / 60
    print(f"{total} runs ({len(chosen)} configurations x {args.seeds} seeds), {len(todo)} not kept yet: "
          f"about {minutes:.0f} min", flush=True)
    scores: dict[str, list[float]] = {}
    for record in chosen:
        scores[record.experiment] = [record.score]
        for seed in range(1, args.seeds + 1):
            scores[record.experiment].append(_score(runs, spec, record, seed))
    lines = _report(spec.benchmark, records[0].metric, scores,
                    " ".join(["python", "benchmarks/seed_noise.py", *sys.argv[1:]]), top=args.top)
    out = Path(args.out)
    (out / f"seed_noise-{bench.resolve().name}.md").write_text("\n".join(lines))
    (out / f"seed_noise-{bench.resolve().name}.json").write_text(
        json.dumps({"benchmark": spec.benchmark, "scores": scores, "steady_floor": steady_floor(scores)[1]}, indent=2))
    print("\n".join(lines))
    return 0


def seeded(spec, seed: int):
    """``spec`` with training seed ``seed``, on the data sample and split the bench's runs had."""
    from autopeft.training.options import TrainOptions

    sample_seed = TrainOptions(data=spec.data, output_dir="-", **spec.options).sample_seed
    return spec.model_copy(update={"options": {**spec.options, "data_seed": sample_seed, "seed": seed}})


def _score(runs: Path, spec, record, seed: int) -> float:
    """The score of ``record``'s configuration trained with ``seed`` (trained once; its ``run.json`` is
    kept under ``runs``, the adapter is not)."""
    from autopeft.choose.bench import BenchRun, run_file, run_one

    experiment = f"{record.experiment} seed={seed}"
    kept = run_file(runs, experiment)
    if not kept.is_file():
        started = time.perf_counter()
        result = run_one(seeded(spec, seed), BenchRun(experiment=experiment, method=record.method,
                                                      learning_rate=record.learning_rate), runs)
        if result.score is None:
            sys.exit(f"{experiment}: {result.error}")
        print(f"  {experiment}: {time.perf_counter() - started:.0f} s", flush=True)
    return json.loads(kept.read_text())["metrics"][record.metric]


def _report(benchmark: str, metric: str, scores: dict[str, list[float]], shown: str, top: int | None = None) -> list[str]:
    """The table, and the floor; ``top``: how many of ``scores`` (the first) are the bench's best, whose
    spread is given apart from that of the configurations named besides."""
    seeds = len(next(iter(scores.values())))
    lines = [f"# `{shown}` ({time.strftime('%Y-%m-%d')})", "",
             f"{benchmark}: the bench's best configurations (and any named) trained again at training seeds "
             f"1 to {seeds - 1}, on the bench's data sample and split; seed 0 is the bench's own run. "
             f"Metric: {metric}, in points.", "",
             "| configuration | " + " | ".join(f"seed {s}" for s in range(seeds)) + " | mean | SD |",
             "|---|" + "---:|" * (seeds + 2)]
    for name, values in scores.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * v:.1f}" for v in values)
                     + f" | {100 * statistics.fmean(values):.1f} | {100 * statistics.stdev(values):.2f} |")
    def pooled(values: list[list[float]]) -> float:
        return statistics.fmean(statistics.variance(v) for v in values) ** 0.5

    groups = [("all", list(scores.values()))]
    if top is not None and 0 < top < len(scores):
        groups = [(f"the {top} best", list(scores.values())[:top]), ("the others", list(scores.values())[top:])]
    first = max(scores, key=lambda k: scores[k][0])
    regrets = [max(v[s] for v in scores.values()) - scores[first][s] for s in range(1, seeds)]
    winners = [max(scores, key=lambda k: scores[k][s]) for s in range(seeds)]
    steady, floor = steady_floor(scores)
    lines += ["", "Pooled SD of one run's score: " + ", ".join(f"{name} {100 * pooled(v):.2f} points" for name, v in groups)
              + ". Best at each seed: "
              + ", ".join(f"{s}: {w}" for s, w in enumerate(winners)) + ".",
              f"The best at seed 0 ({first}) lands {100 * statistics.fmean(regrets):.2f} points below the best of "
              f"these at a fresh seed, on average (seeds 1 to {seeds - 1}: "
              + ", ".join(f"{100 * r:.2f}" for r in regrets) + "): a floor on the regret of any choice judged "
              "on one seed's runs.",
              f"A choice that knew each configuration's mean over the {seeds} seeds: the best on average "
              f"({steady}) lands {100 * floor:.2f} points below the best run of a seed, on average over seeds 0 "
              f"to {seeds - 1}; no configuration picked without seeing a seed's runs lands closer, on average "
              "(among these configurations; the bench tried more).", ""]
    return lines


def steady_floor(scores: dict[str, list[float]]) -> tuple[str, float]:
    """The configuration with the best mean score over the seeds, and how far it lands below each seed's
    best, on average: the mean best of a seed less the best mean, the least regret over a seed's runs
    of any configuration chosen before that seed is trained."""
    seeds = len(next(iter(scores.values())))
    steady = max(scores, key=lambda k: statistics.fmean(scores[k]))
    best_of_seed = statistics.fmean(max(v[s] for v in scores.values()) for s in range(seeds))
    return steady, best_of_seed - statistics.fmean(scores[steady])


if __name__ == "__main__":
    raise SystemExit(main())
