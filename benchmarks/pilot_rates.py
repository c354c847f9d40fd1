"""Where the pilots' learning rates come from: each method's own range, or the best rates of stored
benches like the job (``Recommender.rates``), judged on every shipped bench with its data source left
out of what the rates are learned from.

For each bench and method, the two rates the pilots would try are matched to the bench's runs at the
nearest rate tried; the better of the two is the best the pilots could find for that method. The table
gives, per bench, how far the best of those (over the methods) and their mean (over the methods) fall
short of the bench's best run: in points for accuracy and F1, else in % of the best-to-worst spread.
No training runs: this reads the shipped profiles, in seconds.

    python benchmarks/pilot_rates.py

Writes ``benchmarks/results/pilot_rates.md`` and ``.json``.
"""

from __future__ import annotations

import json
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PER_METHOD = 2  # the pilots' rates per method (``recommend``'s default)


def shortfalls(records) -> list[dict]:
    from autopeft.choose.ranking import Recommender, pilot_learning_rates
    from autopeft.choose.replay import judged_in_points
    from autopeft.methods.registry import get_methods
    from autopeft.profiles import data_source

    methods = get_methods()
    scored = [r for r in records if r.quality() is not None and r.seed is None and r.learning_rate]
    by_bench: dict[str, list] = defaultdict(list)
    for r in scored:
        by_bench[r.benchmark].append(r)
    rows = []
    for bench, runs in sorted(by_bench.items()):
        first = runs[0]
        if not bench.startswith("autopeft/") or len({r.method for r in runs}) < 3:
            continue  # imported results (PEFT's suite) and single-method stores: nothing to place
        source = data_source(first)
        rates = Recommender().fit([r for r in records if data_source(r) != source]).rates(
            first.model, first.task, first.total_steps)
        quality = np.array([r.quality() for r in runs])
        top, scale = quality.max(), (100.0 if judged_in_points(first.metric) else 100.0 / np.ptp(quality))
        found = {"own range": [], "stored benches": []}
        for method in sorted({r.method for r in runs if r.method in methods}):
            space = methods[method].search_space
            tried = [r for r in runs if r.method == method]
            for way, evidence in (("own range", None), ("stored benches", rates)):
                grid = pilot_learning_rates(method, space, first.task, PER_METHOD, evidence)
                nearest = [min(tried, key=lambda r: abs(math.log(r.learning_rate / lr))) for lr in grid]
                found[way].append(max(r.quality() for r in nearest))
        rows.append({"benchmark": bench, "steps": first.total_steps, "metric": first.metric,
                     "evidence": len(rates.benchmarks) if rates else 0,
                     "shift": round(10 ** rates.shift, 2) if rates else None,
                     **{f"{way}: best": round(float(scale * (top - max(v))), 2) for way, v in found.items()},
                     **{f"{way}: mean": round(float(scale * (top - np.mean(v))), 2) for way, v in found.items()}})
    return rows


def main() -> int:
    from autopeft.profiles import load_records

    rows = shortfalls(load_records(store=False))
    lines = ["# Pilot learning rates: the methods' own ranges against stored benches like the job", "",
             "Written by `python benchmarks/pilot_rates.py` from the shipped profiles. Each bench's own data "
             "source is left out of the rates' evidence. Shortfall from the bench's best run of the best "
             "rate the pilots could find (two per method), best method and mean over methods; points of "
             "accuracy or F1, else % of the spread.", "",
             "| bench | steps | benches as evidence | their median best rate / default | best method: own range | "
             "best method: stored benches | mean: own range | mean: stored benches |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['benchmark']} | {r['steps']} | {r['evidence']} | "
                     f"{'%gx' % r['shift'] if r['shift'] else '–'} | {r['own range: best']:.2f} | "
                     f"{r['stored benches: best']:.2f} | {r['own range: mean']:.2f} | {r['stored benches: mean']:.2f} |")
    placed = [r for r in rows if r["evidence"]]
    if placed:
        lines += ["", f"Over the {len(placed)} benches with evidence: best method "
                      f"{np.mean([r['own range: best'] for r in placed]):.2f} → "
                      f"{np.mean([r['stored benches: best'] for r in placed]):.2f}, mean over methods "
                      f"{np.mean([r['own range: mean'] for r in placed]):.2f} → "
                      f"{np.mean([r['stored benches: mean'] for r in placed]):.2f}; worse on "
                      f"{sum(r['stored benches: best'] > r['own range: best'] for r in placed)} (best method)."]
    out = ROOT / "benchmarks" / "results" / "pilot_rates.md"
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
