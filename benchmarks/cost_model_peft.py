"""Checks autopeft's static cost model against the PEFT method-comparison results.

For every run file in the results directory (default: ../shared/data/peft-method-comparison/MetaMathQA)
it estimates the run's PEFT config on the Llama-3.2-3B config (bf16, batch 4, 768 tokens, CUDA, no
gradient checkpointing, as the suite trains) and compares:

* trainable parameters with ``num_trainable_params`` (exact match expected);
* predicted peak memory, less the CUDA context (the suite measures ``torch.cuda.memory_reserved``,
  which excludes it), with ``accelerator_memory_max``.

Each run is mapped to its autopeft method as ``autopeft replay`` maps it (:func:`autopeft.profiles.peft_method`),
and all are estimated in one call (:func:`autopeft.estimates.estimate_each`); a run whose PEFT type has
no autopeft plugin yet is estimated by PEFT's own config and named ``peft:<type>``. Nothing from the
results is used to make the predictions. Run:

    python benchmarks/cost_model_peft.py [RESULTS_DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_RESULTS = HERE.parent.parent / "shared" / "data" / "peft-method-comparison" / "MetaMathQA"
LLAMA_CONFIG = HERE / "configs" / "llama-3.2-3b"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", default=str(DEFAULT_RESULTS))
    parser.add_argument("--json", dest="json_out", help="also write every row as JSON here")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    from autopeft.estimates import EstimateFailure, estimate_each
    from autopeft.methods.registry import get_methods
    from autopeft.models import load_config
    from autopeft.profiles import peft_method

    config = load_config(str(LLAMA_CONFIG))
    files = sorted(Path(args.results).glob("*.json"))
    if not files:
        print(f"no result files in {args.results}", file=sys.stderr)
        return 2
    installed = get_methods()
    rows, items = [], []
    for path in files:
        run = json.loads(path.read_text())
        info, train = run["run_info"], run["train_info"]
        tc = info["train_config"]
        method = peft_method(info)  # the importer's mapping: optimizer type, then adapter config, then name
        rows.append({"run": path.stem.replace("--llama-3.2-3B", ""), "method": method,
                     "params_measured": train["num_trainable_params"],
                     "memory_measured": train["accelerator_memory_max"]})
        # a generic stand-in (peft:<type>) is not registered: the adapter config finds it again
        items.append({"source": rows[-1]["run"], "method": method if method in installed else None,
                      "peft_config": info.get("peft_config"), "batch_size": tc["batch_size"],
                      "seq_len": tc["max_seq_length"], "dtype": tc["dtype"],
                      "gradient_checkpointing": bool(tc.get("use_gc"))})
    started = time.perf_counter()
    estimates = estimate_each(items, model=str(LLAMA_CONFIG), config=config, task="causal-lm", device="cuda",
                              master_weights=False)  # the suite loads every model in its dtype, full fine-tuning too
    elapsed = time.perf_counter() - started
    for row, est in zip(rows, estimates):
        if isinstance(est, EstimateFailure):
            row["error"] = est.error
            continue
        predicted = est.peak_memory_bytes - est.breakdown.runtime
        row.update(params_predicted=est.trainable_params, memory_predicted=predicted,
                   memory_error=(predicted - row["memory_measured"]) / row["memory_measured"])

    print("| run | autopeft method | trainable (measured) | trainable (predicted) | match | peak GB (measured) "
          "| peak GB (predicted) | error |")
    print("|---|---|---:|---:|:-:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['run']} | {r['method']} | {r['params_measured']:,} | - | no | {r['memory_measured'] / 1e9:.2f} | - "
                  f"| failed: {r['error']} |")
            continue
        match = "yes" if r["params_predicted"] == r["params_measured"] else "NO"
        print(f"| {r['run']} | {r['method']} | {r['params_measured']:,} | {r['params_predicted']:,} | {match} "
              f"| {r['memory_measured'] / 1e9:.2f} | {r['memory_predicted'] / 1e9:.2f} | {100 * r['memory_error']:+.1f}% |")
    done = [r for r in rows if "error" not in r]
    matches = sum(r["params_predicted"] == r["params_measured"] for r in done)
    errors = [abs(r["memory_error"]) for r in done]
    print()
    print(f"runs: {len(rows)}, estimated: {len(done)}, failed: {len(rows) - len(done)}, "
          f"time: {elapsed:.1f} s ({elapsed / max(len(rows), 1):.2f} s per run)")
    generic = sorted({r["method"] for r in rows if r["method"] not in installed})
    mapped = ("every run mapped to an autopeft method" if not generic else
              f"{sum(r['method'] in generic for r in rows)} of {len(rows)} runs mapped to no autopeft plugin yet "
              f"(PEFT's own config stands in): {', '.join(generic)}")
    print(f"trainable parameters exact: {matches} of {len(rows)}; {mapped}")
    if errors:
        print(f"peak memory: median absolute error {100 * statistics.median(errors):.1f}%, "
              f"mean {100 * statistics.mean(errors):.1f}%, max {100 * max(errors):.1f}%, "
              f"runs off by more than 25%: {sum(e > 0.25 for e in errors)}, by more than 10%: {sum(e > 0.10 for e in errors)}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
