"""How much of a bench's ranking is training noise: the best runs of a bench again, at other seeds.

Leave-one-task-out judges a choice by its regret against the best run of the bench, and every bench
trains each configuration once. This reruns the ``--top`` best configurations of a bench (and any
named with ``--also``) with ``--seeds`` other training seeds, on the same data sample and split
(``--data-seed 0``, the bench's), and prints each one's scores, their spread, and what that spread
means for regret: how far below the best of a fresh seed's runs the configuration that was best at
seed 0 lands. No choice judged on one seed's runs can count on doing better than that.

    python benchmarks/seed_noise.py [--benchmark NAME] [--top 5] [--seeds 3] [--also METHOD@RATE ...]

Each run's ``run.json`` is kept in ``benchmarks/results/seed_noise/``; a run found there is not repeated.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from run_all import SST2_HELDOUT  # noqa: E402

#: the benches this script knows how to rerun: name -> the ``autopeft bench`` command that made it
BENCHES = {"autopeft/sst2-900-2ep-heldout-minilm-l6": SST2_HELDOUT}
#: flags of ``autopeft bench`` that choose runs or name the bench, with whether each takes a value
_BENCH_ONLY = {"--benchmark": True, "--learning-rates": True, "--edge-rates": True, "--methods": True, "-o": True,
               "--output": True, "--run-timeout": True, "--json": False}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benchmark", default="autopeft/sst2-900-2ep-heldout-minilm-l6", choices=sorted(BENCHES))
    parser.add_argument("--top", type=int, default=5, help="rerun the N best configurations of the bench")
    parser.add_argument("--also", action="append", default=[], metavar="METHOD@RATE",
                        help="rerun this configuration too (e.g. one a choice picked)")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds 1..N beside the bench's own 0")
    parser.add_argument("--runs", default=str(ROOT / "benchmarks" / "results" / "seed_noise"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()

    from autopeft.profiles import load_records

    records = [r for r in load_records(store=False) if r.benchmark == args.benchmark and r.score is not None]
    chosen = sorted(records, key=lambda r: -r.quality())[:args.top]
    for name in args.also:
        method, _, rate = name.partition("@")
        try:
            wanted = float(rate)
        except ValueError:
            parser.error(f"--also {name}: give METHOD@RATE, e.g. lora@0.0111")
        match = [r for r in records if r.method == method and r.learning_rate and abs(r.learning_rate / wanted - 1) < 0.01]
        if not match:
            parser.error(f"--also {name}: no run of {args.benchmark} has that method and rate")
        chosen += [r for r in match if r not in chosen]
    command, data = _train_command(BENCHES[args.benchmark])
    runs = Path(args.runs)
    total = len(chosen) * args.seeds
    print(f"{total} runs ({len(chosen)} configurations x {args.seeds} seeds); about 40 s each on 2 CPU cores",
          flush=True)
    scores: dict[str, list[float]] = {}
    for record in chosen:
        scores[record.experiment] = [record.score]
        for seed in range(1, args.seeds + 1):
            scores[record.experiment].append(_score(runs, command, data, record, seed))
    lines = _report(args.benchmark, records[0].metric, scores, " ".join(["python", "benchmarks/seed_noise.py", *sys.argv[1:]]),
                    top=args.top)
    out = Path(args.out)
    (out / "seed_noise.md").write_text("\n".join(lines))
    (out / "seed_noise.json").write_text(json.dumps({"benchmark": args.benchmark, "scores": scores}, indent=2))
    print("\n".join(lines))
    return 0


def _train_command(bench: list[str]) -> tuple[list[str], str]:
    """``autopeft train`` with the bench's training options, and the bench's data."""
    rest, data, i = [], None, 2
    while i < len(bench):
        arg = bench[i]
        if arg in _BENCH_ONLY:
            i += 2 if _BENCH_ONLY[arg] else 1
            continue
        if data is None and not arg.startswith("-"):
            data = arg
        else:
            rest.append(arg)
        i += 1
    return ["autopeft", "train", *rest], data


def _score(runs: Path, command: list[str], data: str, record, seed: int) -> float:
    """The score of ``record``'s configuration trained with ``seed`` (trained once; its ``run.json`` is
    kept in ``runs``, the adapter is not)."""
    import shutil
    import tempfile

    name = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in record.experiment) + f"-seed{seed}"
    kept = runs / f"{name}.json"
    if not kept.is_file():
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="autopeft-seed-") as tmp:
            # the bench trains every method with its default settings, as this does
            subprocess.run([*command, data, "--method", record.method, "--lr", repr(record.learning_rate),
                            "--seed", str(seed), "--data-seed", "0", "--no-profile-store", "-o", f"{tmp}/run"],
                           cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
            runs.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f"{tmp}/run/run.json", kept)
        print(f"  {record.experiment} seed {seed}: {time.perf_counter() - started:.0f} s", flush=True)
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
    lines += ["", "Pooled SD of one run's score: " + ", ".join(f"{name} {100 * pooled(v):.2f} points" for name, v in groups)
              + ". Best at each seed: "
              + ", ".join(f"{s}: {w}" for s, w in enumerate(winners)) + ".",
              f"The best at seed 0 ({first}) lands {100 * statistics.fmean(regrets):.2f} points below the best of "
              f"these at a fresh seed, on average (seeds 1 to {seeds - 1}: "
              + ", ".join(f"{100 * r:.2f}" for r in regrets) + "): a floor on the regret of any choice judged "
              "on one seed's runs.", ""]
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
