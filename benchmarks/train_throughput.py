"""Training throughput of ``autopeft train`` against a plain transformers + peft script, side by side.

Both train SmolLM2-135M with the same LoRA adapter (the config autopeft's ``lora`` plugin makes), the
same batch size and the same token sequences: GSM8K question/answer pairs from ../shared/data/gsm8k,
whose lengths vary from ~60 to ~400 tokens. The plain script is what a user would write: a Trainer
over the tokenised examples in random order with dynamic padding to the longest in each batch.
autopeft runs twice: with its default length-grouped batches, and with grouping off (same random
order as the plain script) to show its own overhead. Tokens per second count real tokens, not
padding. Every run is a fresh subprocess; runs alternate so that machine noise hits all alike.

    python benchmarks/train_throughput.py [--steps 12] [--batch-size 8] [--examples 400] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "train.jsonl"
VARIANTS = ("plain", "autopeft-no-grouping", "autopeft")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--examples", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ", ".join(VARIANTS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(json.loads(args.child))))
        return 0
    if not DATA.is_file():
        print(f"needs {DATA}", file=sys.stderr)
        return 2
    variants = tuple(v for v in VARIANTS if v in args.variants.split(","))
    results: dict[str, list[dict]] = {v: [] for v in variants}
    started = time.perf_counter()
    for repeat in range(args.repeats):
        order = variants if repeat % 2 == 0 else tuple(reversed(variants))
        for variant in order:
            spec = {"variant": variant, "steps": args.steps, "batch_size": args.batch_size,
                    "examples": args.examples, "max_length": args.max_length}
            row = run(spec)
            results[variant].append(row)
            print(f"{variant:<22} {row['tokens']:>7,} tokens in {row['seconds']:6.1f} s: "
                  f"{row['tokens_per_second']:7.1f} tok/s",
                  flush=True)
    rate = {v: statistics.median(r["tokens_per_second"] for r in rows) for v, rows in results.items()}
    print(f"\nSmolLM2-135M + LoRA, batch {args.batch_size}, {args.steps} steps, GSM8K ({args.examples} examples), "
          f"median of {args.repeats} ({time.perf_counter() - started:.0f} s in all):")
    print("| script | tokens/s | ratio to plain |\n|---|---:|---:|")
    for v in variants:
        print(f"| {v} | {rate[v]:.1f} | {rate[v] / rate['plain']:.2f}x |")
    return 0


def run(spec: dict) -> dict:
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                          env=env)
    if proc.returncode:
        raise SystemExit(f"{spec['variant']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_child(spec: dict) -> dict:
    import autopeft
    from autopeft.data import prepare_data
    from autopeft.models import load_tokenizer

    if spec["variant"].startswith("autopeft"):
        with tempfile.TemporaryDirectory() as out:
            record = autopeft.train(
                str(DATA), output_dir=out, model="smollm2-135m", method="lora", batch_size=spec["batch_size"],
                max_steps=spec["steps"], max_examples=spec["examples"], max_length=spec["max_length"],
                group_by_length=spec["variant"] == "autopeft", eval_steps=10**6, samples=0, forgetting=False,
                validation_fraction=0.01)
        seconds = record.train_seconds - record.eval_seconds  # the plain script does not evaluate
        return {"tokens": int(record.tokens_per_second * seconds), "seconds": seconds,
                "tokens_per_second": record.tokens_per_second}
    tokenizer = load_tokenizer("smollm2-135m")
    data = prepare_data(str(DATA), tokenizer, max_length=spec["max_length"], max_examples=spec["examples"],
                        validation_fraction=0.01)
    return plain_script(data.train, tokenizer, spec)


def plain_script(train_set, tokenizer, spec: dict) -> dict:
    """What a user writes with transformers and peft alone: random batches, dynamic padding."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    import autopeft
    from autopeft.models import resolve

    lora = autopeft.get_method("lora")
    model = AutoModelForCausalLM.from_pretrained(resolve("smollm2-135m"), dtype=torch.float32)
    model = get_peft_model(model, lora.peft_config(lora.settings({}), "causal-lm"))
    dataset = train_set.remove_columns([c for c in train_set.column_names
                                        if c not in ("input_ids", "attention_mask", "labels")])
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=spec["batch_size"],
                                 max_steps=spec["steps"], learning_rate=2e-4, report_to="none", save_strategy="no",
                                 logging_steps=spec["steps"], disable_tqdm=True, use_cpu=True,
                                 include_num_input_tokens_seen="non_padding", seed=0)
        trainer = Trainer(model=model, args=args, train_dataset=dataset,
                          data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True))
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
    tokens = trainer.state.num_input_tokens_seen
    return {"tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds}


if __name__ == "__main__":
    raise SystemExit(main())
