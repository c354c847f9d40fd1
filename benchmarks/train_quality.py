"""Does every built-in method learn? ``autopeft train`` with each method on two real tasks, on CPU.

- causal LM: SmolLM2-135M on examples/instructions.jsonl (150 instructions, 10% held out); the
  validation loss after training must be below the base model's (measured by a 1-step run at
  learning rate ~0, which evaluates the untouched base on the same held-out split).
- classification: MiniLM-L6 on SST-2 (2,000 sentences sampled from ../shared/data/sst2/train.tsv,
  evaluated on the 872-sentence dev set); goal: at least 80% dev accuracy.

Each run is ``autopeft train --json`` in a fresh process with the method's default settings and
learning rate (classification: evaluated before and after training; causal LM: also five times
during it, with early stopping). Results are appended to a JSON file as they finish, so an interrupted benchmark
resumes where it stopped; the table is printed (and written as Markdown) at the end.

    python benchmarks/train_quality.py [--task causal-lm|seq-cls] [--methods lora,dora] [--out DIR]
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
TASKS = {
    "causal-lm": {
        "data": ROOT / "examples" / "instructions.jsonl",
        "args": ["--model", "smollm2-135m", "--batch-size", "8", "--epochs", "1", "--max-length", "256"],
    },
    "seq-cls": {
        "data": SHARED / "sst2" / "train.tsv",
        "args": ["--model", "minilm-l6", "--validation", str(SHARED / "sst2" / "dev.tsv"), "--max-examples", "2000",
                 "--batch-size", "32", "--epochs", "2", "--max-length", "128",
                 "--eval-steps", "1000"],
    },
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=list(TASKS), action="append", help="default: both")
    parser.add_argument("--methods", help="comma-separated; default: every installed method for the task")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="where results go")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = out / "train_quality.json"
    results = json.loads(store.read_text()) if store.is_file() else {}
    import autopeft

    for task in args.task or list(TASKS):
        names = args.methods.split(",") if args.methods else [m.name for m in autopeft.list_methods(task)]
        baseline_key = f"{task}/base"
        if task == "causal-lm" and baseline_key not in results:
            results[baseline_key] = run(task, "lora", ["--max-steps", "1", "--learning-rate", "1e-12"])
            store.write_text(json.dumps(results, indent=2))
        for name in names:
            key = f"{task}/{name}"
            default = autopeft.get_method(name).search_space.default_learning_rate(task)
            # a run at an older default rate trains again; a failure (no rate recorded) does not
            if key in results and results[key].get("learning_rate", default) == default:
                continue
            print(f"{key} ...", flush=True)
            results[key] = run(task, name, [])
            store.write_text(json.dumps(results, indent=2))
            print(f"  {summary(results[key])}", flush=True)
    table = markdown(results)
    (out / "train_quality.md").write_text(table)
    print(table)
    return 0


def run(task: str, method: str, extra: list[str]) -> dict:
    spec = TASKS[task]
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "autopeft", "train", str(spec["data"]), "--method", method, "-o",
               str(Path(tmp) / "run"), "--json", "--no-profile-store", *spec["args"], *extra]
        started = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        seconds = time.perf_counter() - started
        if proc.returncode:
            return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}",
                    "seconds": seconds}
        record = json.loads((Path(tmp) / "run" / "run.json").read_text())
    return {"metrics": record["metrics"], "seconds": seconds, "learning_rate": record["learning_rate"],
            "steps": record["steps"], "trainable_params": record["trainable_params"],
            "peak_memory_bytes": record["peak_memory_bytes"],
            "estimated_peak_memory_bytes": record["estimated_peak_memory_bytes"],
            "adapter_bytes": record["adapter_bytes"], "total_params": record["total_params"],
            "train_seconds": record["train_seconds"], "history": record["history"]}


def summary(result: dict) -> str:
    if "error" in result:
        return f"FAILED: {result['error']}"
    return ", ".join(f"{k} {v:.4g}" for k, v in result["metrics"].items() if v is not None)


def markdown(results: dict) -> str:
    lines = [f"# `python benchmarks/train_quality.py` ({time.strftime('%Y-%m-%d')}, 2-core CPU)", ""]
    base = results.get("causal-lm/base", {}).get("metrics", {}).get("eval_loss")
    causal = {k.split("/", 1)[1]: v for k, v in results.items() if k.startswith("causal-lm/") and k != "causal-lm/base"}
    if causal:
        lines += [f"## SmolLM2-135M on examples/instructions.jsonl (base validation loss {base:.4f})" if base else
                  "## SmolLM2-135M on examples/instructions.jsonl", "",
                  "| method | lr | steps | validation loss | change | forgetting | peak MB (est.) | seconds | learned |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|:-:|"]
        for name, r in sorted(causal.items()):
            if "error" in r:
                lines.append(f"| {name} | | | failed: {r['error']} | | | | {r['seconds']:.0f} | no |")
                continue
            m = r["metrics"]
            loss = m.get("eval_loss")
            learned = base is not None and loss is not None and loss < base
            lines.append(f"| {name} | {r['learning_rate']:g} | {r['steps']} | {loss:.4f} | "
                         f"{(loss - base) if base else float('nan'):+.4f} | {m.get('forgetting') or 0:+.4f} | "
                         f"{_mb(r['peak_memory_bytes'])} ({_mb(r['estimated_peak_memory_bytes'])}) | "
                         f"{r['seconds']:.0f} | {'yes' if learned else 'NO'} |")
    cls = {k.split("/", 1)[1]: v for k, v in results.items() if k.startswith("seq-cls/")}
    if cls:
        lines += ["", "## MiniLM-L6 on SST-2 (2,000 training sentences, 872 dev)", "",
                  "| method | lr | steps | dev accuracy | macro-F1 | peak MB (est.) | seconds | >= 80% |",
                  "|---|---:|---:|---:|---:|---:|---:|:-:|"]
        for name, r in sorted(cls.items()):
            if "error" in r:
                lines.append(f"| {name} | | | failed: {r['error']} | | | {r['seconds']:.0f} | no |")
                continue
            m = r["metrics"]
            acc = m.get("accuracy") or 0.0
            lines.append(f"| {name} | {r['learning_rate']:g} | {r['steps']} | {100 * acc:.1f}% | "
                         f"{m.get('macro_f1') or 0:.3f} | {_mb(r['peak_memory_bytes'])} "
                         f"({_mb(r['estimated_peak_memory_bytes'])}) | {r['seconds']:.0f} | "
                         f"{'yes' if acc >= 0.8 else 'NO'} |")
    return "\n".join(lines) + "\n"


def _mb(n) -> str:
    return f"{n / 1e6:,.0f}" if n else "-"


if __name__ == "__main__":
    raise SystemExit(main())
