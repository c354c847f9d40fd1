"""Judge the recommender on the PEFT method-comparison results it never learned from.

For each memory cap (none, 24, 22.3, 21 and 20.5 GB), ``autopeft replay`` picks among the runs that
fit, seeing only the first ``--budget-fraction`` of each run's loss curve, the measured peak memory,
the static facts and the profiles of *other* benchmarks. It prints each cap's choice and regret
(oracle test accuracy minus the choice's, in points) beside the two baselines, and the means.

    python benchmarks/replay_peft.py [--results ../shared/data/peft-method-comparison/MetaMathQA]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from autopeft.profiles import load_records
from autopeft.replay import replay

ROOT = Path(__file__).resolve().parents[1]
CAPS = (None, 24e9, 22.3e9, 21e9, 20.5e9)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(ROOT.parent / "shared" / "data" / "peft-method-comparison" / "MetaMathQA"))
    parser.add_argument("--budget-fraction", type=float, default=0.1)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    records = load_records()
    rows = [replay(args.results, args.budget_fraction, int(cap) if cap else None, records=records) for cap in CAPS]
    lines = [f"# `python benchmarks/replay_peft.py` ({time.strftime('%Y-%m-%d')})", "",
             f"{rows[0].benchmark}, pilot {args.budget_fraction:.0%} of the steps; the recommender ran in "
             f"`{rows[0].mode}` mode, learned from: {', '.join(rows[0].trained_on) or 'nothing'}.", "",
             "| cap | fit | chosen | regret | oracle | LoRA default (regret) | lowest pilot loss (regret) |",
             "|---|---:|---|---:|---|---|---|"]
    for cap, r in zip(CAPS, rows):
        base = r.baselines
        lines.append(f"| {f'{cap / 1e9:g} GB' if cap else 'none'} | {r.feasible} | {r.chosen} | {r.regret:.2f} | "
                     f"{r.oracle} ({100 * r.oracle_score:.1f}) | {_pick(base['lora_default'])} | "
                     f"{_pick(base['lowest_pilot_loss'])} |")
    means = {"recommender": _mean([r.regret for r in rows]),
             "lora_default": _mean([r.baselines["lora_default"].regret for r in rows]),
             "lowest_pilot_loss": _mean([r.baselines["lowest_pilot_loss"].regret for r in rows])}
    lines += ["", "Mean regret (points; LoRA default over the caps where it fits): " +
              ", ".join(f"{k} {v:.2f}" for k, v in means.items() if v is not None), ""]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "replay_peft.md").write_text("\n".join(lines))
    (out / "replay_peft.json").write_text(json.dumps({"caps": [c for c in CAPS], "runs": [r.model_dump() for r in rows],
                                                      "mean_regret": means}, indent=2))
    print("\n".join(lines))
    return 0


def _pick(p) -> str:
    return f"{p.choice} ({p.regret:.2f})" if p.regret is not None else f"{p.choice or '-'}"


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


if __name__ == "__main__":
    raise SystemExit(main())
