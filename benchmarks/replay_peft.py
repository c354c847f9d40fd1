"""Judge the recommender on the PEFT method-comparison results it never learned from.

For each memory cap (none, 24, 22.3, 21 and 20.5 GB), ``autopeft replay`` picks among the runs that
fit, with pilots that spend ``--budget-fraction`` of training them all (successive halving, as
``tune`` plans it), the measured peak memory, the static facts and the profiles of *other*
benchmarks. It prints each cap's choice and regret (oracle test accuracy minus the choice's, in
points) beside the baselines, and the means.

A second table replays the halving plan's reduction factor (``autopeft.choose.halving.ETA``) on
autopeft's own profiles, where every candidate's whole curve is known: the mean regret, as a
fraction of the task's best-to-worst spread, over random two-thirds subsets of the candidates.

    python benchmarks/replay_peft.py [--results ../shared/data/peft-method-comparison/MetaMathQA]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from autopeft.profiles import load_records
from autopeft.choose.replay import replay

ROOT = Path(__file__).resolve().parents[1]
CAPS = (None, 24e9, 22.3e9, 21e9, 20.5e9)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(ROOT.parent / "shared" / "data" / "peft-method-comparison" / "MetaMathQA"))
    parser.add_argument("--budget-fraction", type=float, default=0.1)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    records = load_records(store=False)  # the shipped profiles only, not this machine's own runs
    rows = [replay(args.results, args.budget_fraction, int(cap) if cap else None, records=records) for cap in CAPS]
    lines = [f"# `python benchmarks/replay_peft.py` ({time.strftime('%Y-%m-%d')})", "",
             f"{rows[0].benchmark}, pilot {args.budget_fraction:.0%} of the steps; the recommender ran in "
             f"`{rows[0].mode}` mode, learned from: {', '.join(rows[0].trained_on) or 'nothing'}.", "",
             "| cap | fit | pilots (candidates x fraction) | chosen | regret | oracle | LoRA default (regret) "
             "| lowest flat-pilot loss (regret) | halving by pilot loss (regret) |",
             "|---|---:|---|---|---:|---|---|---|---|"]
    for cap, r in zip(CAPS, rows):
        base = r.baselines
        plan = ", ".join(f"{n} x {x:.0%}" for n, x in r.rungs)
        lines.append(f"| {f'{cap / 1e9:g} GB' if cap else 'none'} | {r.feasible} | {plan} | {r.chosen_method}: {r.chosen} | "
                     f"{r.regret:.2f} | {r.oracle_method}: {r.oracle} ({100 * r.oracle_score:.1f}) | {_pick(base['lora_default'])} | "
                     f"{_pick(base['lowest_pilot_loss'])} | {_pick(base['halving_pilot_loss'])} |")
    means = {"recommender": _mean([r.regret for r in rows]),
             **{k: _mean([r.baselines[k].regret for r in rows]) for k in rows[0].baselines}}
    lines += ["", "Mean regret (points; LoRA default over the caps where it fits): " +
              ", ".join(f"{k} {v:.2f}" for k, v in means.items() if v is not None), ""]
    lines += _reduction_factors(records, (args.budget_fraction, 1.5 * args.budget_fraction, 2 * args.budget_fraction))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "replay_peft.md").write_text("\n".join(lines))
    (out / "replay_peft.json").write_text(json.dumps({"caps": [c for c in CAPS], "runs": [r.model_dump() for r in rows],
                                                      "mean_regret": means}, indent=2))
    print("\n".join(lines))
    return 0


def _reduction_factors(records, budgets, subsets: int = 40) -> list[str]:
    """Mean regret (fraction of the spread) of the halving plan at several reduction factors, and of a
    flat pilot, ranked by pilot loss, over random subsets of each own task's candidates."""
    import numpy as np

    from autopeft.choose import halving

    etas = (2, 3, 4)
    lines = [f"Halving's reduction factor on autopeft's own profiles (ranked by pilot loss; mean regret as a fraction "
             f"of the task's spread over {subsets} random two-thirds subsets of the candidates):", "",
             "| task | budget | " + " | ".join(f"ETA {e}" for e in etas) + " | flat pilot |",
             "|---|---:|" + "---:|" * (len(etas) + 1)]
    rng = np.random.default_rng(0)
    rows = []
    original = halving.ETA
    try:
        for task in sorted({r.benchmark for r in records if r.benchmark.startswith("autopeft/")}):
            group = [r for r in records if r.benchmark == task and r.quality() is not None and r.curve]
            quality = np.array([r.quality() for r in group])
            spread = quality.max() - quality.min()
            picks = [sorted(rng.choice(len(group), size=2 * len(group) // 3, replace=False)) for _ in range(subsets)]
            for budget_fraction in budgets:
                cells = [_subset_regrets(group, picks, eta, budget_fraction, spread) for eta in (*etas, None)]
                rows.append(cells)
                lines.append(f"| {task} | {budget_fraction:g} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    finally:
        halving.ETA = original
    means = np.mean(rows, axis=0)
    return lines + ["| mean | | " + " | ".join(f"{m:.3f}" for m in means) + " |", ""]


def _subset_regrets(group, picks, eta, budget_fraction, spread) -> float:
    """Mean regret over ``picks`` (index subsets of ``group``) of halving at ``eta`` (None: a flat pilot)."""
    import numpy as np

    from autopeft.choose import halving
    from autopeft.profiles import end_loss
    from autopeft.choose.replay import _halving

    def by_loss(runs, fraction):
        return -np.array([end_loss(r.pilot(fraction)) for r in runs])

    regrets = []
    for pick in picks:
        sub = [group[i] for i in pick]
        if eta is None:
            chosen = min(sub, key=lambda r: end_loss(r.pilot(budget_fraction)))
        else:
            halving.ETA = eta
            chosen = _halving(sub, budget_fraction, by_loss)[0]
        regrets.append((max(r.quality() for r in sub) - chosen.quality()) / spread)
    return float(np.mean(regrets))


def _pick(p) -> str:
    """A baseline's pick named by its autopeft method and its experiment, with its regret."""
    name = f"{p.method}: {p.choice}" if p.method else p.choice or "-"
    return f"{name} ({p.regret:.2f})" if p.regret is not None else name


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


if __name__ == "__main__":
    raise SystemExit(main())
