"""Leave-one-source-out, judged by means over seeds, and the calibration of the stated confidence.

Run through ``python benchmarks/leave_one_task_out.py --sources [--write-calibration]``.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from autopeft.choose.confidence import fit, probability
from autopeft.choose.replay import judged_in_points, leave_one_source_out

ROOT = Path(__file__).resolve().parents[1]
BUDGETS = (0.1, 0.15, 0.2)
#: the stated probabilities' bins of the calibration table
BINS = ((0.0, 1 / 3, "low"), (1 / 3, 2 / 3, "middle"), (2 / 3, 1.0 + 1e-9, "high"))


def source_report(records, out: Path, subsets: int, write: bool, seed_noise) -> int:
    started = time.perf_counter()
    rows = leave_one_source_out(records, BUDGETS, subsets=subsets)
    same = leave_one_source_out(records, BUDGETS, subsets=subsets, same_data=True)
    # as tune chooses: among each method's runs at the two rates its pilots would try
    grid = leave_one_source_out(records, BUDGETS, subsets=subsets, pilot_rates=2)
    grid_same = leave_one_source_out(records, BUDGETS, subsets=subsets, same_data=True, pilot_rates=2)
    took = time.perf_counter() - started
    noise = seed_noise(ROOT / "benchmarks" / "results")
    lines = [f"# `python benchmarks/leave_one_task_out.py --sources` ({time.strftime('%Y-%m-%d')})", "",
             "Each task judged by a recommender that learned from every *other* data source (SST-2 tasks teach each "
             "other their answers, GSM8K-derived ones too), on all its runs and on "
             f"{subsets} random two-thirds of them. A choice scores its configuration's mean over the stored seeds "
             "(`profiles/seeds-*.jsonl`, from `benchmarks/seed_noise.py`; one seed where only one was run); regret is "
             "the best mean minus that, in points of accuracy (x100) for accuracy and F1, else as a share of the "
             "task's best-to-worst spread (%). Mean over the subsets. Floor: the task's seed-noise floor in points, or "
             "as a share of the spread for the other metrics (`benchmarks/seed_noise.py`; - where no seeds were "
             "run).", ""]
    lines += _task_table(rows, noise)
    lines += ["## With runs on the same data as evidence", "",
              "Tasks whose source holds runs of the same model on the same training file (another budget): those "
              "runs weigh in (`Recommender.match`), as a user's stored runs or a shipped bench of the job would; "
              "the recommender still learns from the other sources only.", ""]
    lines += _task_table(same, noise) if same else ["None in these profiles.", ""]
    calibration, model = _calibration(rows + same)
    lines += calibration
    lines += ["## Among the rates tune pilots", "",
              "The same folds, choosing as `tune` does among each method's runs nearest the two rates its pilots "
              "would try (`autopeft.choose.replay.pilot_grid`: placed by the stored benches like the task, from the "
              "other sources, where there are three or more); regret still against the best of all the runs. "
              "PEFT's MetaMathQA runs sit at rates of their own, so their nearest runs are not what a pilot grid "
              "would pick there.", ""]
    lines += _task_table(grid, noise)
    lines += [line for line in _calibration(grid + grid_same)[0] if line.startswith("|")] + [""]
    started = time.perf_counter()
    lines += _longer_pilots(records, subsets, noise)
    took += time.perf_counter() - started
    lines += [f"Folds computed in {took:.0f} s."]
    out.mkdir(parents=True, exist_ok=True)
    (out / "leave_one_source_out.md").write_text("\n".join(lines) + "\n")
    (out / "leave_one_source_out.json").write_text(json.dumps(
        {"choices": [r.model_dump() for r in rows], "same_data": [r.model_dump() for r in same],
         "confidence_model": model}, separators=(",", ":")))
    if write:
        target = ROOT / "autopeft" / "resources" / "confidence.json"
        target.write_text(json.dumps({**model, "fitted_on": f"{sum(bool(r.features) for r in rows + same)} leave-one-source-out choices on "
                                      f"{len({r.benchmark for r in rows})} benchmarks, {time.strftime('%Y-%m-%d')}"},
                                     indent=1) + "\n")
        lines.append(f"Wrote {target.relative_to(ROOT)}.")
    print("\n".join(lines))
    return 0


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _task_table(rows, noise) -> list[str]:
    by: dict[tuple[str, str], list] = defaultdict(list)
    for r in rows:
        by[r.benchmark, r.way].append(r)
    tasks = sorted({r.benchmark for r in rows}, key=lambda b: (next(r.source for r in rows if r.benchmark == b), b))
    head = ["task", "source", "metric", "floor", *[f"pilots {b:g}" for b in BUDGETS], "static", "always LoRA",
            "lowest pilot loss", "within 1 pt (pilots 0.15)"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|---|" + "---:|" * (len(head) - 3)]
    beat_lora = beat_loss = judged_lora = judged_floor = on_target = 0
    regrets: dict[str, list[float]] = defaultdict(list)
    for task in tasks:
        first = next(r for r in rows if r.benchmark == task)
        points = judged_in_points(first.metric)

        def cell(way: str) -> tuple[str, float | None]:
            picks = by.get((task, way), [])
            value = _mean([r.regret if points else 100 * r.regret_of_spread for r in picks])
            return ("-" if value is None else f"{value:.2f}" + ("" if points else "%")), value

        cells = {w: cell(w) for w in (*[f"{b:g}" for b in BUDGETS], "static", "always_lora", "lowest_pilot_loss")}
        chosen = cells["0.15"][1]
        if chosen is not None:
            regrets["points" if points else "spread"].append(chosen)
        if cells["always_lora"][1] is not None and chosen is not None:
            judged_lora += 1
            beat_lora += chosen < cells["always_lora"][1]
        if cells["lowest_pilot_loss"][1] is not None and chosen is not None:
            beat_loss += chosen < cells["lowest_pilot_loss"][1]
        floor = _floor(task, points, rows, noise)
        if floor is not None and chosen is not None:
            judged_floor += 1
            on_target += _on_target(chosen, floor, points)
        within = _mean([r.within for r in by.get((task, "0.15"), [])])
        lines.append(f"| {task} | {first.source} | {first.metric} | "
                     f"{'-' if floor is None else f'{floor:.2f}' + ('' if points else '%')} | "
                     + " | ".join(c for c, _ in cells.values())
                     + f" | {'-' if within is None else f'{within:.0%}'} |")
    lines += ["", f"At the default budget (0.15): better than always-LoRA on {beat_lora} of {judged_lora} tasks with a "
              f"LoRA run, than the lowest pilot loss on {beat_loss} of {len(tasks)}; mean regret "
              + ", ".join(f"{np.mean(v):.2f} {'points' if k == 'points' else '% of the spread'} over {len(v)} tasks"
                          for k, v in regrets.items())
              + f"; within its floor plus 1 point (plus 5% of the spread for other metrics) on {on_target} of "
                f"{judged_floor} tasks with a floor.", ""]
    return lines


#: pilot budgets of the section on longer pilots: the default, then 2x, 3.3x and enough for every full run
LONGER = (0.15, 0.3, 0.5, 1.0)


def _longer_pilots(records, subsets: int, noise) -> list[str]:
    """The choice at budgets past the default, beside the lowest loss of flat pilots of the same total
    compute (every run for that share of its steps; at 1.0, its whole run): how near the target each
    gets, and so how much of the shortfall a larger budget, not the ranking, would take away."""
    lines = ["## What longer pilots buy", "",
             "The same folds (all rates) at larger pilot budgets, in the share of training every run that the "
             "pilots spend. `tune` stops a pilot at half its run (`halving.MAX_FRACTION`); a flat pilot runs every "
             "configuration for the budget's share of its steps, so at 1.0 it reads each run's training loss at "
             "its end. Mean regret in points over the accuracy and F1 tasks, and on how many tasks with a floor it "
             "is within the floor plus 1 point (plus 5% of the spread).", "",
             "| budget | choice: mean regret | choice: within floor + margin | lowest flat-pilot loss: mean regret "
             "| lowest flat-pilot loss: within floor + margin |", "|---:|---:|---:|---:|---:|"]
    for budget in LONGER:
        rows = leave_one_source_out(records, (budget,), subsets=subsets)
        cells = []
        for way in (f"{budget:g}", "lowest_pilot_loss"):
            regrets, on, judged = _regrets(rows, way, noise)
            cells += [f"{np.mean(regrets):.2f}" if regrets else "-", f"{on} of {judged}"]
        lines.append(f"| {budget:g} | " + " | ".join(cells) + " |")
    return lines + [""]


def _regrets(rows, way: str, noise) -> tuple[list[float], int, int]:
    """The mean regret of ``way`` on each accuracy or F1 task, and on how many of the tasks with a floor
    it lands within the floor plus its margin."""
    regrets, on, judged = [], 0, 0
    for task in sorted({r.benchmark for r in rows}):
        picks = [r for r in rows if r.benchmark == task and r.way == way]
        if not picks:
            continue
        points = judged_in_points(picks[0].metric)
        value = float(np.mean([r.regret if points else 100 * r.regret_of_spread for r in picks]))
        if points:
            regrets.append(value)
        floor = _floor(task, points, rows, noise)
        if floor is not None:
            judged += 1
            on += _on_target(value, floor, points)
    return regrets, on, judged


def _on_target(regret: float, floor: float, points: bool) -> bool:
    """The issue's target: within the seed-noise floor plus 1 point (plus 5% of the spread for a metric
    judged by its spread)."""
    return regret <= floor + (1.0 if points else 5.0) + 1e-9


def _floor(task: str, points: bool, rows, noise) -> float | None:
    """The task's seed-noise floor: in points, or for a metric judged by its spread, as a share (%) of the
    best-to-worst spread of the configurations' means that the regret is measured against."""
    if task not in noise:
        return None
    if points:
        return noise[task].floor
    # the floor is in points (hundredths of the metric), so floor / spread is its share of the spread in %
    spread = next((r.spread for r in rows if r.benchmark == task), 0.0)
    return noise[task].floor / spread if spread else None


def _calibration(rows) -> tuple[list[str], dict]:
    """Nested: each source's choices get the probability a model fitted on the other sources' choices
    states; then the stated against the observed frequency of landing within a point, in three bins."""
    judged = [r for r in rows if r.features]
    sources = sorted({r.source for r in judged})
    stated: list[tuple[float, bool, str]] = []
    for source in sources:
        train = [r for r in judged if r.source != source]
        model = fit([r.features for r in train], [r.within for r in train])
        for r in judged:
            if r.source == source:
                stated.append((probability(r.features, model), r.within, r.way))
    cuts = np.quantile([p for p, _, _ in stated], [1 / 3, 2 / 3]) if stated else [1 / 3, 2 / 3]
    tertiles = ((0.0, float(cuts[0]), "low third"), (float(cuts[0]), float(cuts[1]), "middle third"),
                (float(cuts[1]), 1.0 + 1e-9, "high third"))
    lines = ["## How sure: the stated probability against what happened", "",
             "The probability a recommendation states that its pick lands within 1 point of the best (1 point of "
             "accuracy or F1, else 1% of the spread), from a logistic model of the pick's predicted lead over the "
             "runner-up, the share of candidates piloted, matching evidence and the number of candidates "
             "(`autopeft/choose/confidence.py`). Here each source's choices (pilots at every budget and static, "
             "over all subsets) get the probability a model fitted on the *other* sources' choices states.", "",
             "Bins: the three thirds of the stated probabilities, then fixed thirds of [0, 1].", "",
             "| bin | choices | mean stated | observed | gap |", "|---|---:|---:|---:|---:|"]
    for low, high, name in (*tertiles, *BINS):
        inside = [(p, w) for p, w, _ in stated if low <= p < high]
        if not inside:
            lines.append(f"| {name} ({low:.2f}-{min(high, 1):.2f}) | 0 | - | - | - |")
            continue
        p_mean, observed = float(np.mean([p for p, _ in inside])), float(np.mean([w for _, w in inside]))
        lines.append(f"| {name} ({low:.2f}-{min(high, 1):.2f}) | {len(inside)} | {p_mean:.0%} | {observed:.0%} | "
                     f"{100 * abs(p_mean - observed):.0f} pts |")
    overall = float(np.mean([w for _, w, _ in stated])) if stated else 0.0
    brier = float(np.mean([(p - w) ** 2 for p, w, _ in stated])) if stated else 0.0
    base = float(np.mean([(overall - w) ** 2 for _, w, _ in stated])) if stated else 0.0
    model = fit([r.features for r in judged], [r.within for r in judged])
    # what a model without features could state: each fold, the other sources' frequency
    rate = {s: float(np.mean([r.within for r in judged if r.source == s])) for s in sources}
    elsewhere = {s: float(np.mean([r.within for r in judged if r.source != s])) for s in sources}
    base_oos = float(np.mean([(elsewhere[r.source] - r.within) ** 2 for r in judged])) if judged else 0.0
    lines += ["", f"Over {len(stated)} choices, {overall:.0%} landed within a point; Brier score {brier:.3f} "
              f"(stating the overall frequency for every choice: {base:.3f}; stating each source the other sources' "
              f"frequency: {base_oos:.3f}). Fitted on all of them (shipped): "
              + ", ".join(f"{n} {w:+.2f}" for n, w in zip(model["features"], model["coef"]))
              + f", intercept {model['intercept']:+.2f}.", "",
              "How often a choice landed within a point, by source: "
              + ", ".join(f"{s} {rate[s]:.0%}" for s in sorted(sources, key=rate.get))
              + ". Where the sources differ this much and the features do not tell them apart, a probability "
              "learned from the other sources is off by the held-out source's difference from them.", ""]
    return lines, model
