"""Do the SST-2 methods below 80% get there with longer training?

The SST-2 bench (``benchmarks/results/bench/sst2-minilm``) trains every method for 3 epochs at up to
3 learning rates. Here each method still below 80% (in the bench and in every longer run so far)
trains again at its best learning rate from that bench for ``--epochs`` epochs (default 5), with the
bench's other settings (2,000 sentences, batch 32, dev 872). The table shows every length tried side
by side. Finished runs are kept in ``benchmarks/results/sst2_epochs.json`` and not run again; the
table goes to ``sst2_epochs.md`` beside it.

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
    parser.add_argument("--methods", help="comma-separated; default: those still below 80%%")
    parser.add_argument("--all", action="store_true", help="every method of the bench")
    args = parser.parse_args()
    best = best_runs()
    if not best:
        sys.exit(f"no scored runs in {BENCH}: run the SST-2 bench first (benchmarks/run_all.py --only bench_sst2)")
    store = RESULTS / "sst2_epochs.json"
    results = json.loads(store.read_text()) if store.is_file() else {}
    names = (args.methods.split(",") if args.methods else sorted(best) if args.all else
             [m for m in sorted(best) if best_accuracy(m, best, results, below=args.epochs) < 0.8])
    for method in names:
        key = f"{args.epochs:g}ep/{method}"
        if method not in best or _result(results, args.epochs, method, best) is not None:
            continue
        lr = best[method]["learning_rate"]
        print(f"{key} at lr {lr:g} ...", file=sys.stderr, flush=True)
        results[key] = {"learning_rate": lr,  # failures too: a run at this rate is not repeated
                        **run("seq-cls", method, ["--epochs", f"{args.epochs:g}", "--learning-rate", str(lr)])}
        store.write_text(json.dumps(results, indent=2))
    table = markdown(best, results)
    (RESULTS / "sst2_epochs.md").write_text(table)
    print(table)
    return 0


def _result(results: dict, epochs: float, method: str, best: dict) -> dict | None:
    """The run of ``method`` for ``epochs`` epochs, if it trained at the bench's best rate (a bench
    continued past the edge of a method's rates may have found a better one since)."""
    result = results.get(f"{epochs:g}ep/{method}")
    return result if result and result.get("learning_rate") == best[method]["learning_rate"] else None


def _accuracy(result: dict | None) -> float | None:
    return (result or {}).get("metrics", {}).get("accuracy")


def _lengths(results: dict) -> list[float]:
    return sorted({float(key.split("ep/", 1)[0]) for key in results})


def best_accuracy(method: str, best: dict, results: dict, below: float = float("inf")) -> float:
    """The method's best dev accuracy: the bench's, or a longer run's shorter than ``below`` epochs."""
    scores = [best[method]["accuracy"]] + [_accuracy(_result(results, n, method, best)) or 0.0
                                           for n in _lengths(results) if n < below]
    return max(scores)


def markdown(best: dict, results: dict) -> str:
    lengths = _lengths(results)
    methods = sorted({key.split("ep/", 1)[1] for key in results} & set(best))
    lines = [f"# `python benchmarks/sst2_epochs.py --epochs N` for N in {', '.join(f'{n:g}' for n in lengths)} "
             f"({time.strftime('%Y-%m-%d')}, 2-core CPU)", "",
             "Dev accuracy at each method's best learning rate from the bench; a blank: not run, the method "
             "had reached 80% with fewer epochs.", "",
             f"| method | lr | bench ({', '.join(f'{n:g}' for n in sorted({b['epochs'] for b in best.values()}))} "
             "epochs) | " + " | ".join(f"{n:g} epochs" for n in lengths) + " | >= 80% |",
             "|---|---:|---:|" + "---:|" * len(lengths) + ":-:|"]
    reached = 0
    for method in methods:
        cells = []
        for n in lengths:
            result = _result(results, n, method, best)
            cells.append("" if result is None else f"failed: {result['error']}" if "error" in result
                         else f"{100 * _accuracy(result):.1f}%")
        top = best_accuracy(method, best, results)
        reached += top >= 0.8
        lines.append(f"| {method} | {best[method]['learning_rate']:g} | {100 * best[method]['accuracy']:.1f}% | "
                     + " | ".join(cells) + f" | {'yes' if top >= 0.8 else 'NO'} |")
    lines += ["", f"{reached} of the {len(methods)} methods below 80% in the bench reach it with longer training."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
