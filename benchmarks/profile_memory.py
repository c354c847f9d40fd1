"""Checks today's cost model against the measured peak of every bench run kept in benchmarks/results/bench.

Each bench run's ``run.json`` holds its options, the longest tokenised example and the peak resident
memory of its whole ``autopeft train`` process. This estimates the same configuration again with the
current cost model (the estimate stored in the record is the one of the day the run was made) and
prints every run's error, then the median per bench and overall. Takes about a minute:

    python benchmarks/profile_memory.py [BENCH_DIR ...] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHES = ROOT / "benchmarks" / "results" / "bench"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("benches", nargs="*", type=Path, help=f"bench dirs (default: every one in {BENCHES})")
    parser.add_argument("--json", dest="json_out", help="also write every row as JSON here")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    import autopeft

    benches = args.benches or sorted(p for p in BENCHES.iterdir() if (p / "bench.json").is_file())
    rows = []
    for bench in benches:
        for path in sorted((bench / "runs").glob("*.json")):
            run = json.loads(path.read_text())
            if not run.get("peak_memory_bytes"):
                continue
            options = run["options"]
            try:
                predicted = autopeft.estimate(
                    options["model"], run["method"], settings=run["settings"], task=run["task"],
                    batch_size=options["batch_size"], seq_len=run["data"]["tokens"]["max"],
                    device=run["hardware"]["device"], gradient_checkpointing=options["gradient_checkpointing"],
                    num_labels=len(run["data"].get("labels") or []) or 2).peak_memory_bytes
            except autopeft.AutopeftError as exc:  # e.g. settings the plugin adapted to the real model
                print(f"{bench.name}/{path.stem}: no estimate: {exc}", file=sys.stderr)
                continue
            rows.append({"bench": bench.name, "run": path.stem, "measured": run["peak_memory_bytes"],
                         "recorded": run.get("estimated_peak_memory_bytes"), "predicted": predicted})
    if not rows:
        print("no bench runs with a measured peak", file=sys.stderr)
        return 1

    def error(row, key="predicted"):
        return (row[key] - row["measured"]) / row["measured"]

    print("| bench | run | measured (MiB) | predicted today (MiB) | error | predicted on the day (MiB) | error |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        then = (f"{r['recorded'] / 2**20:,.0f} | {100 * error(r, 'recorded'):+.1f}%" if r["recorded"] else "- | -")
        print(f"| {r['bench']} | {r['run']} | {r['measured'] / 2**20:,.0f} | {r['predicted'] / 2**20:,.0f} "
              f"| {100 * error(r):+.1f}% | {then} |")
    print()
    for name in sorted({r["bench"] for r in rows}) + [None]:
        mine = [r for r in rows if name is None or r["bench"] == name]
        errors = [abs(error(r)) for r in mine]
        signed = statistics.median(error(r) for r in mine)
        print(f"{name or 'all runs'}: {len(mine)} runs, median absolute error {100 * statistics.median(errors):.1f}% "
              f"(median signed {100 * signed:+.1f}%), max {100 * max(errors):.1f}%")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
