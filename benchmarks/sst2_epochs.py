"""Do the SST-2 methods below 80% get there with longer training?

The SST-2 bench (``benchmarks/results/bench/sst2-minilm``) trains every method for 3 epochs at up to
3 learning rates. Here each method it scored below 80% trains again at its best learning rate from
that bench for ``--epochs`` epochs (default 5), with the bench's other settings (2,000 sentences,
batch 32, dev 872), and the dev accuracy of both lengths is printed side by side. Finished methods
are kept in ``benchmarks/results/sst2_epochs.json`` and not run again; the table goes to
``sst2_epochs.md`` beside it.

    python benchmarks/sst2_epochs.py [--epochs 5] [--methods a,b] [--all]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BENCH = RESULTS / "bench" / "sst2-minilm" / "runs"
sys.path.insert(0, str(ROOT / "benchmarks"))
from train_quality import run  # noqa: E402  the same `autopeft train` call and settings


def best_runs() -> dict[str, dict]:
    """Each method's best run of the bench: {method: {"learning_rate", "accuracy", "epochs"}}."""
    best: dict[str, dict] = {}
    for path in sorted(BENCH.glob("*.json")):
        record = json.loads(path.read_text())
        accuracy = (record.get("metrics") or {}).get("accuracy")
        if accuracy is None:
            continue
        method = record["method"]
        if method not in best or accuracy > best[method]["accuracy"]:
            best[method] = {"learning_rate": record["learning_rate"], "accuracy": accuracy,
                            "epochs": record["options"]["epochs"]}
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=5.0)
    parser.add_argument("--methods", help="comma-separated; default: those the bench scored below 80%%")
    parser.add_argument("--all", action="store_true", help="every method of the bench")
    args = parser.parse_args()
    best = best_runs()
    if not best:
        sys.exit(f"no scored runs in {BENCH}: run the SST-2 bench first (benchmarks/run_all.py --only bench_sst2)")
    names = (args.methods.split(",") if args.methods else
             sorted(best) if args.all else sorted(m for m, b in best.items() if b["accuracy"] < 0.8))
    store = RESULTS / "sst2_epochs.json"
    results = json.loads(store.read_text()) if store.is_file() else {}
    for method in names:
        key = f"{args.epochs:g}ep/{method}"
        if key in results or method not in best:
            continue
        lr = best[method]["learning_rate"]
        print(f"{key} at lr {lr:g} ...", file=sys.stderr, flush=True)
        results[key] = run("seq-cls", method, ["--epochs", f"{args.epochs:g}", "--learning-rate", str(lr)])
        store.write_text(json.dumps(results, indent=2))
    table = markdown(best, results, args.epochs, names)
    (RESULTS / "sst2_epochs.md").write_text(table)
    print(table)
    return 0


def markdown(best: dict, results: dict, epochs: float, names: list[str]) -> str:
    lines = [f"# `python benchmarks/sst2_epochs.py --epochs {epochs:g}` ({time.strftime('%Y-%m-%d')}, 2-core CPU)", "",
             "| method | lr | bench: epochs, dev accuracy | longer: epochs, dev accuracy | change | >= 80% |",
             "|---|---:|---:|---:|---:|:-:|"]
    reached = ran = 0
    for method in names:
        result, before = results.get(f"{epochs:g}ep/{method}"), best.get(method)
        if result is None or before is None:
            continue
        ran += 1
        if "error" in result:
            lines.append(f"| {method} | {before['learning_rate']:g} | {before['epochs']:g}, "
                         f"{100 * before['accuracy']:.1f}% | failed: {result['error']} | | no |")
            continue
        accuracy = result["metrics"]["accuracy"]
        reached += accuracy >= 0.8
        lines.append(f"| {method} | {before['learning_rate']:g} | {before['epochs']:g}, {100 * before['accuracy']:.1f}% "
                     f"| {epochs:g}, {100 * accuracy:.1f}% | {100 * (accuracy - before['accuracy']):+.1f} | "
                     f"{'yes' if accuracy >= 0.8 else 'NO'} |")
    lines += ["", f"{reached} of {ran} reach 80% with {epochs:g} epochs."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
