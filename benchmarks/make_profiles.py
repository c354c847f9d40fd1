"""Write the shipped profile records (profiles/*.jsonl) from the benchmarks' results.

- Each task of ``benchmarks/train_quality.py`` (less the methods that a bench of the same task
  sweeps, which supersedes their runs) becomes one benchmark of records in the schema of
  :mod:`autopeft.profiles`: every method's settings, learning rate, cost, measured peak memory, loss
  curve and final score. Runs that failed are kept with no score, so the recommender knows them.
- Each ``autopeft bench`` directory under ``benchmarks/results/bench/`` (its ``records.jsonl``)
  becomes ``profiles/bench-<directory>.jsonl``; a bench of ``benchmarks/new_tasks.py`` only once it has
  finished.
- The PEFT method-comparison results (``--peft-results``, Apache-2.0) are imported as
  ``profiles/peft-<directory>.jsonl``, each record naming its source file and licence.

    python benchmarks/make_profiles.py [--results benchmarks/results/train_quality.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from autopeft.methods.registry import get_methods
from autopeft.profiles import CurvePoint, ProfileRecord, import_peft_results, read_jsonl

ROOT = Path(__file__).resolve().parents[1]
TASKS = {
    "causal-lm": dict(benchmark="autopeft/instructions-smollm2-135m", model="smollm2-135m",
                      dataset="examples/instructions.jsonl", metric="eval_loss", higher_is_better=False,
                      batch_size=8, file="autopeft-instructions-smollm2.jsonl"),
    "seq-cls": dict(benchmark="autopeft/sst2-2k-minilm-l6", model="minilm-l6",
                    dataset="sst2 train (2,000 sampled), dev 872", metric="accuracy", higher_is_better=True,
                    batch_size=32, file="autopeft-sst2-minilm.jsonl", superseded_by="sst2-minilm"),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "train_quality.json"))
    parser.add_argument("--benches", default=str(ROOT / "benchmarks" / "results" / "bench"))
    parser.add_argument("--peft-results", action="append",
                        help="a directory in the PEFT method-comparison layout; repeatable "
                             "(default: ../shared/data/peft-method-comparison/MetaMathQA)")
    parser.add_argument("--out", default=str(ROOT / "profiles"))
    args = parser.parse_args()
    out = Path(args.out)
    from new_tasks import TASKS as NEW_TASKS, is_unfinished, shipped_dataset

    for bench in sorted(Path(args.benches).glob("*/records.jsonl")):
        if is_unfinished(bench.parent):
            print(f"{bench.parent}: not finished (benchmarks/new_tasks.py writes finished.json when it is); not shipped")
            continue
        records = read_jsonl(bench)
        task = bench.parent.name
        if task in NEW_TASKS:  # its data was converted outside the project: say from what and how, not where
            for r in records:
                r.dataset = shipped_dataset(NEW_TASKS[task], r.dataset)
                r.source = f"python benchmarks/new_tasks.py bench {task} (autopeft bench on this project's CPU machine)"
        _write(out / f"bench-{bench.parent.name}.jsonl", records)
    for results in args.peft_results or [str(ROOT.parent / "shared" / "data" / "peft-method-comparison" / "MetaMathQA")]:
        if Path(results).is_dir():
            _write(out / f"peft-{Path(results).name.lower()}.jsonl", import_peft_results(Path(results)))
    results = json.loads(Path(args.results).read_text())
    methods = get_methods()
    for task, spec in TASKS.items():
        swept: set[str] = set()
        sweep = Path(args.benches) / spec.get("superseded_by", "-") / "records.jsonl"
        if sweep.is_file():
            # a learning-rate sweep of the same task replaces its methods' runs here: the same
            # method on the same task twice would let leave-one-task-out evaluation learn from the
            # task it is judged on. Methods the sweep predates keep their default-rate run.
            swept = {rec.method for rec in read_jsonl(sweep)}
            print(f"{spec['benchmark']}: {len(swept)} methods superseded by the bench {spec['superseded_by']}")
        records = []
        for key, r in sorted(results.items()):
            kind, _, name = key.partition("/")
            if kind != task or name == "base" or name in swept:
                continue
            method = methods.get(name)
            curve = [CurvePoint(step=h["step"], train_loss=h.get("loss"), eval_loss=h.get("eval_loss"),
                                eval_score=h.get("eval_accuracy")) for h in r.get("history", [])
                     if h.get("loss") is not None or h.get("eval_loss") is not None]
            failed = "error" in r
            records.append(ProfileRecord(
                benchmark=spec["benchmark"], experiment=name, task=task, model=spec["model"], dataset=spec["dataset"],
                method=name, family=method.family if method else None,
                settings=method.settings().model_dump(mode="json") if method else {},
                learning_rate=r.get("learning_rate"), batch_size=spec["batch_size"], total_steps=r.get("steps") or 1,
                trainable_params=r.get("trainable_params"), total_params=r.get("total_params"),
                adapter_bytes=r.get("adapter_bytes"), peak_memory_bytes=r.get("peak_memory_bytes"),
                train_seconds=r.get("train_seconds") or r.get("seconds"), device="CPU, 2 cores", curve=curve,
                metric=spec["metric"], higher_is_better=spec["higher_is_better"],
                score=None if failed else r["metrics"].get(spec["metric"]),
                source="python benchmarks/train_quality.py (autopeft train on this project's CPU machine)"))
        _write(out / spec["file"], records)
    return 0


def _write(path: Path, records) -> None:
    path.write_text("".join(rec.model_dump_json() + "\n" for rec in records))
    print(f"{len(records)} records ({sum(bool(r.curve) for r in records)} with curves) -> {path}")


if __name__ == "__main__":
    raise SystemExit(main())
