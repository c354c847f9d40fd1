"""How many methods the pilots cover, and what the choice costs, with the default budget against the
budget before it had a floor (15% of the run, nothing more), side by side in one run.

Two kinds of job:

- the README's main job (``recommend --max-vram 3GB examples/instructions.jsonl``: SmolLM2, 51 steps);
- classification tasks of 900 training examples for 2 epochs, from ``benchmarks/new_tasks.py`` (its
  bench options and methods), where that task's finished bench (``benchmarks/results/bench/<task>``)
  tells how good each choice is: the regret is the best run's test score less the score of the run
  of the chosen method at the learning rate nearest the chosen one. The task's own profile is left out
  of what the recommender learns from (``--leave-out``), with every other task of its data source.

Each ``recommend`` runs with an empty pilot cache, so that neither plan reuses the other's pilots.

    python benchmarks/pilot_coverage.py [--tasks trec,tweeteval-emotion,banking77,trec-fine,clinc150-oos] [--skip-main-job]

Writes ``benchmarks/results/pilot_coverage.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import new_tasks  # noqa: E402  (a sibling script)

PLANS = {"default (15%, at least 4 min)": [], "before: 15% of the run": ["--pilot-budget", "0.15"]}


def recommend(args: list[str], home: Path) -> tuple[dict, float, float | None]:
    """``autopeft recommend ... --json`` with an empty pilot cache; its JSON, wall seconds and the
    seconds it announced its pilots would take."""
    shutil.rmtree(home / "pilots", ignore_errors=True)
    env = {**os.environ, "AUTOPEFT_HOME": str(home), "PYTHONWARNINGS": "ignore"}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "autopeft", "recommend", *args, "--json"], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"recommend {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    announced = re.search(r"pilots will take about (\d+) s", done.stderr)
    return json.loads(done.stdout), took, float(announced.group(1)) if announced else None


def recommend_options(options) -> list[str]:
    """A bench's options that ``recommend`` takes too (evaluation and checkpoint steps are the runs')."""
    options, kept = list(options), []
    for i in range(0, len(options), 2):
        if options[i] not in ("--eval-steps", "--early-stopping", "--save-steps"):
            kept += options[i:i + 2]
    return kept


def piloted(rec: dict) -> int:
    return sum(1 for c in rec["candidates"] if (c.get("measured") or {}).get("status") == "ok")


def feasible(rec: dict) -> int:
    return sum(1 for c in rec["candidates"] if c["feasible"] or c.get("measured"))


def regret(rec: dict, bench: Path) -> tuple[float, str] | None:
    """The best bench score less that of the chosen method's run nearest the chosen rate, and that run."""
    path = bench / "records.jsonl"
    if not path.is_file():
        return None
    runs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    runs = [r for r in runs if r.get("score") is not None]
    mine = [r for r in runs if r["method"] == rec["chosen"]]
    if not mine:
        return None
    lr = rec.get("learning_rate") or mine[0]["learning_rate"]
    run = min(mine, key=lambda r: abs(math.log(r["learning_rate"] / lr)))
    best = max(r["score"] for r in runs)
    return 100 * (best - run["score"]), f"{run['method']} {run['learning_rate']:g}: {run['score']:.3f}"


def same_source(benchmark: str) -> list[str]:
    """The shipped benchmarks from ``benchmark``'s data source, itself included (none if it is not
    shipped): tasks of one source teach each other their answers and their best learning rates."""
    from autopeft.profiles import data_source, load_records

    records = load_records(store=False)
    sources = {data_source(r) for r in records if r.benchmark == benchmark}
    return sorted({r.benchmark for r in records if data_source(r) in sources})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="trec,tweeteval-emotion,banking77,trec-fine,clinc150-oos",
                        help="classification tasks of benchmarks/new_tasks.py (comma-separated)")
    parser.add_argument("--skip-main-job", action="store_true")
    args = parser.parse_args(argv)
    tasks = new_tasks.check_tasks([t for t in args.tasks.split(",") if t])

    lines = ["# Pilot coverage: the default budget against 15% of the run", "",
             "Written by `python benchmarks/pilot_coverage.py`. Each row is one `autopeft recommend --json` with an "
             "empty pilot cache, on this machine "
             f"({os.cpu_count()} CPU cores, shared), {time.strftime('%Y-%m-%d')}.", "",
             "| job | plan | methods piloted | of | pilots announced s | pilot s | recommend s | chosen (lr) | "
             "regret, points | run |",
             "|---|---|---:|---:|---:|---:|---:|---|---:|---|"]
    with tempfile.TemporaryDirectory(prefix="autopeft-coverage-") as tmp:
        home = Path(tmp)
        jobs = []
        if not args.skip_main_job:
            jobs.append(("README main job", ["examples/instructions.jsonl", "--max-vram", "3GB"], None))
        for task in tasks:
            paths = new_tasks.convert(task, new_tasks.work_dir(None))
            leave = [arg for name in same_source(task.benchmark) for arg in ("--leave-out", name)]
            jobs.append((f"{task.name} (900 x 2 epochs)",
                         [str(paths["train"]), "--model", task.model, *recommend_options(task.options),
                          "--methods", task.methods, *leave],
                         new_tasks.BENCHES / task.name))
        for name, job, bench in jobs:
            for plan, extra in PLANS.items():
                rec, took, announced = recommend([*job, *extra], home)
                judged = regret(rec, bench) if bench else None
                lr = rec.get("learning_rate")
                row = (f"| {name} | {plan} | {piloted(rec)} | {feasible(rec)} | "
                       f"{'%.0f' % announced if announced is not None else ''} | {rec.get('pilot_seconds', 0):.0f} | "
                       f"{took:.0f} | {rec['chosen']}{f' ({lr:g})' if lr else ''} | ")
                row += (f"{judged[0]:.1f} | {judged[1]} |" if judged else " | |")
                print(row, flush=True)
                lines.append(row)
    out = ROOT / "benchmarks" / "results" / "pilot_coverage.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
