"""Do the SST-2 methods below 80% get there with longer training?

The SST-2 bench (``benchmarks/results/bench/sst2-minilm``) trains every method for 3 epochs at up to
3 learning rates. Here each method still below 80% (in the bench and in every longer run so far)
trains again at its best learning rate from that bench for ``--epochs`` epochs (default 5), with the
bench's other settings (2,000 sentences, batch 32, dev 872). A method whose accuracy falls with more
epochs at that rate (it overfits) can be tried at another: ``--methods vera@0.02``. The table shows
every length tried side by side, one row per method and rate. Finished runs are kept in
``benchmarks/results/sst2_epochs.json`` and not run again; the table goes to ``sst2_epochs.md``.

    python benchmarks/sst2_epochs.py [--epochs 5] [--methods a,b@RATE] [--all]
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
    for method, rate, accuracy, epochs in _bench_runs():
        if method not in best or accuracy > best[method]["accuracy"]:
            best[method] = {"learning_rate": rate, "accuracy": accuracy, "epochs": epochs}
    return best


def _bench_runs() -> list[tuple[str, float, float, float]]:
    """Every scored run of the bench: (method, learning rate, accuracy, epochs)."""
    runs = []
    for path in sorted(BENCH.glob("*.json")):
        record = json.loads(path.read_text())
        accuracy = (record.get("metrics") or {}).get("accuracy")
        if accuracy is not None:
            runs.append((record["method"], record["learning_rate"], accuracy, record["options"]["epochs"]))
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=5.0)
    parser.add_argument("--methods", help="comma-separated, each NAME (at its best bench rate) or NAME@RATE; "
                                          "default: those still below 80%%")
    parser.add_argument("--all", action="store_true", help="every method of the bench")
    args = parser.parse_args()
    best = best_runs()
    if not best:
        sys.exit(f"no scored runs in {BENCH}: run the SST-2 bench first (benchmarks/run_all.py --only bench_sst2)")
    store = RESULTS / "sst2_epochs.json"
    results = _keyed(json.loads(store.read_text())) if store.is_file() else {}
    names = (args.methods.split(",") if args.methods else sorted(best) if args.all else
             [m for m in sorted(best) if best_accuracy(m, best, results, below=args.epochs) < 0.8])
    for name in names:
        method, _, rate = name.partition("@")
        if method not in best:
            continue
        lr = float(rate) if rate else best[method]["learning_rate"]
        key = _key(args.epochs, method, lr)
        if key in results:
            continue
        print(f"{key} ...", file=sys.stderr, flush=True)
        results[key] = {"learning_rate": lr,  # failures too: a run at this rate is not repeated
                        **run("seq-cls", method, ["--epochs", f"{args.epochs:g}", "--learning-rate", str(lr)])}
        store.write_text(json.dumps(results, indent=2))
    table = markdown(best, results)
    (RESULTS / "sst2_epochs.md").write_text(table)
    print(table)
    return 0


def _key(epochs: float, method: str, lr: float) -> str:
    return f"{epochs:g}ep/{method}@{lr:g}"


def _keyed(results: dict) -> dict:
    """The stored runs under keys that name their rate (older files keyed them by length and method)."""
    return {_key(float(key.split("ep/", 1)[0]), key.split("ep/", 1)[1].split("@")[0], result["learning_rate"]): result
            for key, result in results.items()}


def _parse(key: str) -> tuple[float, str, float]:
    length, rest = key.split("ep/", 1)
    method, rate = rest.rsplit("@", 1)
    return float(length), method, float(rate)


def _result(results: dict, epochs: float, method: str, lr: float) -> dict | None:
    return results.get(_key(epochs, method, lr))


def _accuracy(result: dict | None) -> float | None:
    return (result or {}).get("metrics", {}).get("accuracy")


def _lengths(results: dict) -> list[float]:
    return sorted({_parse(key)[0] for key in results})


def best_accuracy(method: str, best: dict, results: dict, below: float = float("inf")) -> float:
    """The method's best dev accuracy: the bench's, or a longer run's (at any rate) shorter than ``below`` epochs."""
    scores = [best[method]["accuracy"]] + [_accuracy(result) or 0.0 for key, result in results.items()
                                           if _parse(key)[1] == method and _parse(key)[0] < below]
    return max(scores)


def markdown(best: dict, results: dict) -> str:
    lengths = _lengths(results)
    bench = {(method, rate): accuracy for method, rate, accuracy, _ in _bench_runs()}
    rows = sorted({_parse(key)[1:] for key in results if _parse(key)[1] in best})
    lines = [f"# `python benchmarks/sst2_epochs.py --epochs N` for N in {', '.join(f'{n:g}' for n in lengths)} "
             f"({time.strftime('%Y-%m-%d')}, 2-core CPU)", "",
             "Dev accuracy of each method at its best learning rate from the bench, and at any other rate tried "
             "(`--methods NAME@RATE`); a blank: not run.", "",
             f"| method | lr | bench ({', '.join(f'{n:g}' for n in sorted({b['epochs'] for b in best.values()}))} "
             "epochs) | " + " | ".join(f"{n:g} epochs" for n in lengths) + " | >= 80% |",
             "|---|---:|---:|" + "---:|" * len(lengths) + ":-:|"]
    for method, lr in rows:
        cells = []
        for n in lengths:
            result = _result(results, n, method, lr)
            cells.append("" if result is None else f"failed: {result['error']}" if "error" in result
                         else f"{100 * _accuracy(result):.1f}%")
        scores = [bench.get((method, lr), 0.0)] + [_accuracy(_result(results, n, method, lr)) or 0.0 for n in lengths]
        at_bench = f"{100 * bench[method, lr]:.1f}%" if (method, lr) in bench else ""
        lines.append(f"| {method} | {lr:g} | {at_bench} | " + " | ".join(cells)
                     + f" | {'yes' if max(scores) >= 0.8 else 'NO'} |")
    methods = sorted({method for method, _ in rows})
    reached = sum(best_accuracy(m, best, results) >= 0.8 for m in methods)
    lines += ["", f"{reached} of the {len(methods)} methods below 80% in the bench reach it with longer training "
              "(at the bench's best rate or another)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
