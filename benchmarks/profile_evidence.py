"""Give the shipped profiles what lets a recommendation use them as evidence about a user's own data.

Two things, both read from what the benches already kept (nothing is trained):

- each shipped bench's records get the ``fingerprint`` (sha256 of the training file) and ``data_stats``
  (examples, mean tokens, labels) of the data they trained on, from a kept ``run.json`` of the bench
  (``benchmarks/results/bench/<dir>/runs``), or for the README's own job (``examples/instructions.jsonl``)
  from the file itself; a record that has them keeps them;
- the reruns of ``benchmarks/seed_noise.py`` (``benchmarks/results/seed_noise/<dir>/runs``) become
  records of their bench with a ``seed``, in ``profiles/seeds-<dir>.jsonl``, so that the recommender
  weighs a configuration's spread over seeds, not one seed's luck.

    python benchmarks/profile_evidence.py
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PROFILES = ROOT / "profiles"


def main() -> int:
    from autopeft.choose.bench import BENCH_FILE, RECORDS_FILE, run_file
    from autopeft.profiles import SCHEMA_VERSION, ProfileRecord, data_stats, read_jsonl, record_from_run
    from autopeft.training.outputs import RunRecord
    from new_tasks import TASKS as NEW_TASKS, shipped_dataset

    data_of: dict[str, dict] = {}
    for bench in sorted(p.parent for p in (RESULTS / "bench").glob(f"*/{BENCH_FILE}")):
        spec = json.loads((bench / BENCH_FILE).read_text())
        kept = sorted((bench / "runs").glob("*.json"))
        if kept:
            data_of[spec["benchmark"]] = json.loads(kept[0].read_text())["data"]
    instructions = _instructions_data()
    if instructions:
        data_of["autopeft/instructions-smollm2-135m"] = instructions

    for path in sorted(PROFILES.glob("*.jsonl")):
        if path.name.startswith("seeds-"):
            continue
        records = read_jsonl(path)
        changed = 0
        for r in records:
            data = data_of.get(r.benchmark)
            if data and r.fingerprint is None:
                r.fingerprint, r.data_stats, changed = data["fingerprint"], data_stats(data), changed + 1
                r.schema_version = SCHEMA_VERSION
        if changed:
            path.write_text("".join(r.model_dump_json() + "\n" for r in records))
            print(f"{path.name}: {changed} records given their data's fingerprint")

    for runs in sorted((RESULTS / "seed_noise").iterdir()):
        bench = RESULTS / "bench" / runs.name
        if not (bench / RECORDS_FILE).is_file():
            continue
        base = {r.experiment: r for r in read_jsonl(bench / RECORDS_FILE) if r.score is not None}
        if runs.name in NEW_TASKS:  # named as make_profiles names the bench's own records
            for r in base.values():
                r.dataset = shipped_dataset(NEW_TASKS[runs.name], r.dataset)
        out: list[ProfileRecord] = []
        for experiment, record in base.items():
            for seed in range(1, 10):
                f = run_file(runs, f"{experiment} seed={seed}")
                if not f.is_file():
                    continue
                run = RunRecord.model_validate_json(f.read_text())
                new = record_from_run(run, benchmark=record.benchmark)
                # one configuration whatever the seed: the bench's own names, settings and metric
                score = run.metrics.get(record.metric)
                out.append(new.model_copy(update={
                    "experiment": f"{experiment} seed={seed}", "settings": record.settings, "dataset": record.dataset,
                    "learning_rate": record.learning_rate, "metric": record.metric, "score": score,
                    "higher_is_better": record.higher_is_better, "seed": seed,
                    "source": f"benchmarks/seed_noise.py rerun of {experiment} at seed {seed}"}))
        if out:
            target = PROFILES / f"seeds-{runs.name}.jsonl"
            target.write_text("".join(r.model_dump_json() + "\n" for r in out))
            print(f"{target.name}: {len(out)} reruns at other seeds")
    return 0


def _instructions_data() -> dict | None:
    """The README job's data as ``tune`` prepares it (smollm2-135m, the default options)."""
    path = ROOT / "examples" / "instructions.jsonl"
    if not path.is_file():
        return None
    from autopeft.models import load_tokenizer
    from autopeft.training.options import TrainOptions

    options = TrainOptions(data=str(path), output_dir="-", model="smollm2-135m")
    prepared = options.prepare(load_tokenizer("smollm2-135m"), test=False)
    info = prepared.info
    return {"fingerprint": info.fingerprint, "num_train": info.num_train,
            "labels": None, "tokens": {"mean": info.tokens.mean}}


if __name__ == "__main__":
    raise SystemExit(main())
