"""Is `recommend` worth it? On SST-2 with MiniLM, its pick against training every method (brute force).

The brute force is ``benchmarks/train_quality.py --task seq-cls``: every method trained fully once
(2,000 sentences, 2 epochs, batch 32, each method's default learning rate), dev accuracy measured.
Here ``autopeft recommend`` runs with the same data and settings, learning only from profiles of
*other* tasks (SST-2's own records are left out; the PEFT MetaMathQA results are added), under a
pilot budget. Its pick is then trained fully if the brute force did not train that learning rate.
Printed: the pick, its regret against the best method, and its cost (the whole `recommend` wall
time) as a fraction of the brute force's (the sum of every method's run). Each pilot budget's run
is kept (``sst2_choice.json``), and the table shows them all.

    python benchmarks/sst2_choice.py [--pilot-budget 4m]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT / "benchmarks"))
from train_quality import TASKS  # noqa: E402  the brute force's exact settings


def sst2_benchmarks() -> list[str]:
    """Every SST-2 benchmark in the profiles, whatever the model: the recommender must not have learned
    from this data."""
    from autopeft.profiles import load_records

    return sorted({r.benchmark for r in load_records(store=False) if "sst2" in r.dataset.lower()})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pilot-budget", default="4m")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    results = json.loads((ROOT / "benchmarks" / "results" / "train_quality.json").read_text())
    brute = {k.split("/", 1)[1]: v for k, v in results.items() if k.startswith("seq-cls/") and "metrics" in v}
    if not brute:
        sys.exit("run `python benchmarks/train_quality.py --task seq-cls` first (the brute force)")
    spec = TASKS["seq-cls"]
    settings = [a for a in spec["args"] if a not in ("--eval-steps", "1000")]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "autopeft", "recommend", str(spec["data"]), *settings, "--json",
           "--pilot-budget", args.pilot_budget, *(arg for name in sst2_benchmarks() for arg in ("--leave-out", name))]
    with tempfile.TemporaryDirectory() as home:
        # a machine that has never run autopeft: no stored SST-2 runs to learn from, no cached pilots
        started = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**env, "AUTOPEFT_HOME": home})
        recommend_seconds = time.perf_counter() - started
    if proc.returncode:
        sys.exit(f"recommend failed: {proc.stderr.strip().splitlines()[-1]}")
    rec = json.loads(proc.stdout)
    chosen, lr = rec["chosen"], rec["learning_rate"]
    best_name, best = max(brute.items(), key=lambda kv: kv[1]["metrics"]["accuracy"])
    known = brute.get(chosen)
    if known and abs(known["learning_rate"] - lr) <= 1e-12 * max(lr, 1):
        pick_acc, trained = known["metrics"]["accuracy"], "brute force run"
    else:
        with tempfile.TemporaryDirectory() as tmp:
            run = subprocess.run([sys.executable, "-m", "autopeft", "train", str(spec["data"]), "--method", chosen,
                                  "--learning-rate", str(lr), "-o", str(Path(tmp) / "run"), "--json",
                                  "--no-profile-store", *spec["args"]], capture_output=True, text=True, env=env)
            if run.returncode:
                sys.exit(f"training the pick failed: {run.stderr.strip().splitlines()[-1]}")
            pick_acc, trained = json.loads(run.stdout)["metrics"]["accuracy"], "trained here at the chosen lr"
    brute_seconds = sum(v["seconds"] for v in brute.values())
    summary = {
        "chosen": chosen, "learning_rate": lr, "chosen_accuracy": pick_acc, "pick_source": trained,
        "best": best_name, "best_accuracy": best["metrics"]["accuracy"],
        "regret_points": 100 * (best["metrics"]["accuracy"] - pick_acc),
        "recommend_seconds": recommend_seconds, "pilot_seconds": rec["pilot_seconds"],
        "brute_force_seconds": brute_seconds, "cost_fraction": recommend_seconds / brute_seconds,
        "mode": rec["mode"], "trained_on": rec["trained_on"], "explanation": rec["explanation"],
        "piloted": sum(1 for c in rec["candidates"] if (c.get("measured") or {}).get("status") == "ok"),
        "methods": len(brute),
    }
    out = Path(args.out)
    store = out / "sst2_choice.json"
    runs = _runs(json.loads(store.read_text())) if store.is_file() else {}
    runs[args.pilot_budget] = {**summary, "recommendation": rec}
    store.write_text(json.dumps({"runs": runs}, indent=2))
    table = markdown(runs, brute)
    (out / "sst2_choice.md").write_text(table)
    print(table)
    return 0


def _runs(stored: dict) -> dict:
    """{pilot budget: run}; a file from before several budgets were kept held one run, at 90s."""
    return stored["runs"] if "runs" in stored else {"90s": stored}


def markdown(runs: dict, brute: dict) -> str:
    """Every pilot budget tried, one row each, beside the brute force."""
    best_name, best = max(brute.items(), key=lambda kv: kv[1]["metrics"]["accuracy"])
    brute_seconds = sum(v["seconds"] for v in brute.values())
    lora = brute.get("lora", {}).get("metrics", {}).get("accuracy")
    lines = [f"# `python benchmarks/sst2_choice.py --pilot-budget B` for B in {', '.join(runs)} "
             f"({time.strftime('%Y-%m-%d')}, 2-core CPU)", "",
             f"Brute force: {len(brute)} methods trained fully at their default rates, {brute_seconds / 60:.0f} min "
             f"in all; best {best_name} at {100 * best['metrics']['accuracy']:.1f}% dev accuracy"
             + (f"; LoRA at its default: regret {100 * (best['metrics']['accuracy'] - lora):.2f} points." if lora
                else "."), "",
             "| pilot budget | pick | lr | dev accuracy | regret (points) | methods piloted | `recommend` time | "
             "share of the brute force |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for budget, r in runs.items():
        lines.append(f"| {budget} | {r['chosen']} | {r['learning_rate']:g} | {100 * r['chosen_accuracy']:.1f}% "
                     f"({r['pick_source']}) | {r['regret_points']:.2f} | {r['piloted']} of {r['methods']} | "
                     f"{r['recommend_seconds']:.0f} s | {100 * r['cost_fraction']:.1f}% |")
    lines += ["", "The recommender learned from " + ", ".join(next(iter(runs.values()))["trained_on"])
              + " (every SST-2 record left out). Its explanations:", ""]
    lines += [f"- {budget}: {r['explanation']}" for budget, r in runs.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
