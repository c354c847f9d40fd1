"""Leave-one-task-out evaluation of the recommender over every profile task.

For each benchmark in the profiles (shipped ones, plus any given with ``--profiles``), the
recommender learns from all the *other* benchmarks, then chooses among that benchmark's runs with
pilots that spend ``--budget-fraction`` of training them all (successive halving, as ``tune`` does).
It prints the top-1 hit, the regret (in the metric's points, and as a share of the best-to-worst
spread), the Spearman correlation of predicted against final quality at a flat pilot, and the
baselines: always LoRA (default settings), the lowest loss after a flat pilot, and a random pick.
A second table repeats the choice at other budgets (``BUDGETS``): with a few tasks to judge on, how
much a verdict moves with the budget tells how much of it is noise. A third judges each task over
``SUBSETS`` random two-thirds of its runs at each budget: the mean regret and its standard error, for
the choice and the baselines alike, so that one lucky or unlucky draw of candidates does not decide a
verdict. Last, where ``benchmarks/seed_noise.py`` retrained a classification task's best configurations
at other seeds, the task's regret beside that seed-noise floor, and the choices judged by their
configuration's mean over the seeds.

    python benchmarks/leave_one_task_out.py [--budget-fraction 0.1] [--profiles DIR_OR_FILE ...]

With ``--sources``, leave out a whole data source at a time instead (SST-2 tasks teach each other their
answers, GSM8K-derived tasks too), judge each choice by its configuration's mean over the stored seeds
against the best mean, list every task with its seed-noise floor, and fit and check the probability a
recommendation states (``autopeft/choose/confidence.py``): its calibration table, and with
``--write-calibration`` the shipped ``autopeft/resources/confidence.json``. Writes
``benchmarks/results/leave_one_source_out.md`` (and .json).

    python benchmarks/leave_one_task_out.py --sources [--write-calibration]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import NamedTuple

from autopeft.profiles import load_records
from autopeft.choose.replay import leave_one_task_out, leave_one_task_out_subsets

ROOT = Path(__file__).resolve().parents[1]
#: the budgets of the second table: 0.15 is what ``tune`` spends by default
BUDGETS = (0.1, 0.15, 0.2)
SUBSETS = 40


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-fraction", type=float, default=0.1)
    parser.add_argument("--profiles", action="append", default=[])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--sources", action="store_true", help="leave one data source out, judged by seed means")
    parser.add_argument("--subsets", type=int, default=20, help="with --sources: random subsets per task")
    parser.add_argument("--write-calibration", action="store_true",
                        help="with --sources: write autopeft/resources/confidence.json from these folds")
    args = parser.parse_args()
    records = load_records(args.profiles, store=False)
    if args.sources:
        from source_folds import source_report

        return source_report(records, Path(args.out), args.subsets, args.write_calibration, _seed_noise)
    rows = leave_one_task_out(records, args.budget_fraction)
    lines = [f"# `python benchmarks/leave_one_task_out.py` ({time.strftime('%Y-%m-%d')})", "",
             f"Pilot budget {args.budget_fraction:g} of training every candidate, spent by successive halving. "
             "Regret: oracle minus choice (points of accuracy x100, or of the loss); the baselines' regrets are "
             "shares of the task's best-to-worst spread, as is the recommender's second regret column.", "",
             "| task (metric) | runs | chosen | oracle | top-1 | regret | regret / spread | Spearman | pilot cost "
             "| always LoRA | lowest flat-pilot loss | random |",
             "|---|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    wins, ties = _verdicts(rows)
    for r in rows:
        base = r.baselines
        lines.append(
            f"| {r.benchmark} ({r.metric}) | {r.candidates} | {r.chosen} | {r.oracle} | {'yes' if r.top1 else 'no'} "
            f"| {r.regret:.3f} | {r.regret_of_spread:.3f} | {_num(r.spearman)} | {r.compute_fraction:.1%} | "
            + " | ".join(_num(base[k]) for k in ("always_lora", "lowest_pilot_loss", "random")) + " |")
    lines += ["", f"Better than every baseline on {wins} of {len(rows)} tasks; no worse than any on {ties}. "
              + _summary(rows), ""]
    lines += _budget_table(records, rows)
    subsets = {budget: leave_one_task_out_subsets(records, budget, SUBSETS) for budget in BUDGETS}
    lines += _subset_table(subsets)
    lines += _noise_table(subsets, _seed_noise(ROOT / "benchmarks" / "results"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "leave_one_task_out.md").write_text("\n".join(lines))
    (out / "leave_one_task_out.json").write_text(json.dumps(
        {"tasks": [r.model_dump() for r in rows],
         "subsets": {str(b): [r.model_dump() for r in at] for b, at in subsets.items()}}, indent=2))
    print("\n".join(lines))
    return 0


def _verdicts(rows) -> tuple[int, int]:
    """On how many tasks the choice beat every baseline, and on how many it was no worse than any."""
    wins = sum(all(v is None or r.regret_of_spread < v for v in r.baselines.values()) for r in rows)
    ties = sum(all(v is None or r.regret_of_spread <= v for v in r.baselines.values()) for r in rows)
    return wins, ties


def _summary(rows) -> str:
    """The issue's measures over all tasks: top-1 hit rate, mean regret in accuracy points on the
    classification tasks and as a share of the spread on the others, mean Spearman."""
    accuracy = [r.regret for r in rows if r.task == "seq-cls"]
    other = [r.regret_of_spread for r in rows if r.task != "seq-cls"]
    rhos = [r.spearman for r in rows if r.spearman is not None]
    parts = [f"Top-1 hit rate {sum(r.top1 for r in rows)} of {len(rows)}."]
    if accuracy:
        parts.append(f"Mean regret on the classification task{'s' * (len(accuracy) > 1)} ({len(accuracy)}): "
                     f"{sum(accuracy) / len(accuracy):.2f} points of accuracy.")
    if other:
        parts.append(f"On the other task{'s' * (len(other) > 1)} ({len(other)}): {sum(other) / len(other):.1%} "
                     "of the best-to-worst spread.")
    if rhos:
        parts.append(f"Mean Spearman {sum(rhos) / len(rhos):.2f}.")
    return " ".join(parts)


def _budget_table(records, rows) -> list[str]:
    """Regret / spread of the choice and of the flat pilot's lowest loss at each of ``BUDGETS``."""
    runs = {budget: leave_one_task_out(records, budget) for budget in BUDGETS}
    lines = ["## At other budgets", "",
             "Regret / spread of the recommender's choice (and of the lowest flat-pilot loss, the baseline that "
             "depends on the budget) at each pilot budget; last row: on how many tasks the choice beat every "
             "baseline.", "",
             "| task | " + " | ".join(f"{b:g}" for b in BUDGETS) + " |", "|---|" + "---:|" * len(BUDGETS)]
    for i, r in enumerate(rows):
        cells = [f"{at[i].regret_of_spread:.3f} ({_num(at[i].baselines['lowest_pilot_loss'])})" for at in runs.values()]
        lines.append(f"| {r.benchmark} | " + " | ".join(cells) + " |")
    lines.append("| better than every baseline | "
                 + " | ".join(f"{_verdicts(at)[0]} of {len(at)}" for at in runs.values()) + " |")
    return lines + [""]


def _subset_table(subsets) -> list[str]:
    """Per budget and task: the mean regret / spread over random subsets (with its standard error) of
    the choice and of each baseline; then the issue's measures on those means."""
    first = next(iter(subsets.values()))
    lines = ["## Over random two-thirds of each task's runs", "",
             f"Each task judged on {first[0].subsets} random subsets of two-thirds of its runs, each subset against "
             "its own best run: mean regret / spread (the whole task's), with its standard error for the choice. "
             "A verdict here is about the mean, not one draw.", "",
             "| budget | task | chosen | always LoRA | lowest flat-pilot loss | random | better than every baseline |",
             "|---:|---|---:|---:|---:|---:|---|"]
    for budget, rows in subsets.items():
        for r in rows:
            lines.append(f"| {budget:g} | {r.benchmark} | {r.regret_of_spread:.3f} ± {r.stderr_of_spread:.3f} | "
                         + " | ".join(_num(r.baselines[k]) for k in ("always_lora", "lowest_pilot_loss", "random"))
                         + f" | {'yes' if r.better_than_every_baseline() else 'no'} |")
    lines += [""]
    for budget, rows in subsets.items():
        accuracy = [r.regret for r in rows if r.task == "seq-cls"]
        other = [r.regret_of_spread for r in rows if r.task != "seq-cls"]
        wins = sum(r.better_than_every_baseline() for r in rows)
        lines.append(f"- Budget {budget:g}: better than every baseline on {wins} of {len(rows)} tasks; mean regret "
                     + (f"{sum(accuracy) / len(accuracy):.2f} points of accuracy on the {len(accuracy)} classification "
                        "tasks" if accuracy else "")
                     + (f", {sum(other) / len(other):.1%} of the spread on the other {len(other)}" if other else "")
                     + ".")
    return lines + [""]


class SeedNoise(NamedTuple):
    """What ``benchmarks/seed_noise.py`` measured on one benchmark, in the metric's points."""

    floor: float  #: how far below a seed's best run the best configuration on average lands, on average
    means: dict[str, float]  #: each retrained configuration's mean score over the seeds


def _seed_noise(results: Path) -> dict[str, SeedNoise]:
    """Each benchmark's seed-noise report (``seed_noise-*.json``), by benchmark."""
    found = {}
    for path in sorted(results.glob("seed_noise-*.json")):
        kept = json.loads(path.read_text())
        if "steady_floor" in kept:
            found[kept["benchmark"]] = SeedNoise(100 * kept["steady_floor"],
                                                 {k: 100 * sum(v) / len(v) for k, v in kept["scores"].items()})
    return found


def _noise_table(subsets, noise: dict[str, SeedNoise]) -> list[str]:
    """The classification tasks' regret in points at each budget beside their seed-noise floor; then
    the choices judged by their configuration's mean over the seeds, where it was retrained."""
    judged = [b.benchmark for b in next(iter(subsets.values())) if b.task == "seq-cls" and b.benchmark in noise]
    if not judged:
        return []
    at = {budget: {r.benchmark: r for r in rows} for budget, rows in subsets.items()}
    lines = ["## Against training noise", "",
             "Mean regret in points over the subsets, beside the task's seed-noise floor (`benchmarks/seed_noise.py`: "
             "the bench's best configurations trained again at other seeds; the one with the best mean lands this "
             "far below a seed's best run, on average, and no choice made without seeing a seed's runs does "
             "better on average). It counts only the configurations retrained, the bench's best at seed 0 and a few "
             "others, so it is an estimate, not a bound.", "",
             "| task | seed-noise floor | " + " | ".join(f"regret at {b:g}" for b in subsets) + " |",
             "|---|---:|" + "---:|" * len(subsets)]
    for task in judged:
        lines.append(f"| {task} | {noise[task].floor:.2f} | "
                     + " | ".join(f"{rows[task].regret:.2f}" for rows in at.values()) + " |")
    lines.append(f"| mean of these {len(judged)} | {sum(noise[t].floor for t in judged) / len(judged):.2f} | "
                 + " | ".join(f"{sum(rows[t].regret for t in judged) / len(judged):.2f}" for rows in at.values()) + " |")
    lines += ["", "The same choices judged by what their configuration scores on average over those seeds: how far "
              "that mean sits below the best mean, averaged over the subsets whose choice was retrained (how many of "
              "them, in brackets). One seed's regret can reward a lucky pick and punish a sound one.", "",
              "| task | best mean over seeds | " + " | ".join(f"at {b:g}" for b in subsets) + " |",
              "|---|---|" + "---:|" * len(subsets)]
    for task in judged:
        means = noise[task].means
        best = max(means, key=means.get)
        cells = []
        for rows in at.values():
            retrained = {k: n for k, n in rows[task].picks.items() if k in means}
            count = sum(retrained.values())
            below = sum(n * (means[best] - means[k]) for k, n in retrained.items()) / count if count else None
            cells.append(f"{below:.2f} ({count} of {rows[task].subsets})" if count else f"- (0 of {rows[task].subsets})")
        lines.append(f"| {task} | {best}: {means[best]:.1f} | " + " | ".join(cells) + " |")
    return lines + [""]


def _num(value) -> str:
    return "-" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    raise SystemExit(main())
