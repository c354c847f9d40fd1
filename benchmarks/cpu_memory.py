"""Checks autopeft's predicted peak training memory on CPU against the peak RSS of real training.

For SmolLM2-135M (causal LM) and MiniLM-L6 (sequence classification), several methods and two batch
sizes each, a fresh subprocess loads the model in fp32 with SDPA attention, builds the method, makes
its optimizer (AdamW over the trainable parameters when the method has none of its own) and runs
three training steps on random token ids (a few runs also with gradient checkpointing) (forward with labels, backward, optimizer step, zero_grad).
Its peak resident set size over its whole life (``getrusage(RUSAGE_SELF).ru_maxrss``) is compared
with ``autopeft.estimate(..., device="cpu", dtype="fp32")`` for the same configuration, which sees
nothing of the measurements. Every subprocess first imports what an ``autopeft train`` process
imports (torch, transformers with its Trainer, peft, autopeft's training module), so that a run costs
what it would in autopeft; a bare subprocess that only imports them measures the runtime baseline
that ``RUNTIME_BYTES["cpu"]`` stands for.

The same two architectures are also measured at other depths (``DEPTHS``: LoRA and full fine-tuning
at the smaller batch), built from their configs with the number of layers changed and random weights
(peak memory does not depend on the weights' values): the CPU heap holds more of the forward pass's
temporaries the deeper the model, which two depths alone cannot tell from a difference between the
two architectures.

SmolLM2 ships as GGUF, which takes ~25 s to dequantise; it is converted once to a safetensors copy
under the temp dir (in a subprocess too) and every run loads that copy. Run (about 20 minutes on
2 cores; ``--quick`` about half):

    python benchmarks/cpu_memory.py [--quick] [--json OUT] [--measured EARLIER_JSON]
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
import warnings
from pathlib import Path

METHODS = ("lora", "dora", "ia3", "loha", "prompt_tuning", "full")
QUICK_METHODS = ("lora", "ia3", "full")
#: model name -> task, batch sizes, sequence length
MODELS = {
    "smollm2-135m": ("causal-lm", (4, 8), 256),
    "minilm-l6": ("seq-cls", (16, 64), 128),
}
#: (model, layers): the model's architecture at another depth, with random weights
DEPTHS = (("smollm2-135m", 8), ("smollm2-135m", 15), ("minilm-l6", 3), ("minilm-l6", 12), ("minilm-l6", 24))
DEPTH_METHODS = ("lora", "full")
#: (model, method, batch) also measured with gradient checkpointing on
CHECKPOINTED = (("smollm2-135m", "lora", 8), ("smollm2-135m", "full", 2), ("minilm-l6", "lora", 64))
STEPS = 3
TOLERANCE = 0.15
SMOLLM2_COPY = Path(tempfile.gettempdir()) / "autopeft-bench" / "smollm2-135m"
MIB = 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK_METHODS)}")
    parser.add_argument("--json", dest="json_out", help="also write the baseline and every row as JSON here")
    parser.add_argument("--measured", metavar="JSON", help="reuse the measurements of an earlier --json and only "
                        "predict again, with today's cost model (seconds instead of minutes)")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # a job spec (JSON), run in a fresh subprocess
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(json.loads(args.child))))
        return 0

    warnings.filterwarnings("ignore")
    started = time.perf_counter()
    if args.measured:
        earlier = json.loads(Path(args.measured).read_text())
        rows = [predict(row) for row in earlier["rows"]]
        print_report(rows, earlier["runtime_baseline_bytes"], earlier["wall_seconds"])
        if args.json_out:
            Path(args.json_out).write_text(json.dumps({**earlier, "rows": rows}, indent=2))
        return 0
    run_in_subprocess({"job": "convert"})
    baseline = run_in_subprocess({"job": "baseline"})["peak_rss_bytes"]
    configs = [(model, method, batch, seq_len, False)
               for model, (_, batches, seq_len) in MODELS.items()
               for method in (QUICK_METHODS if args.quick else METHODS)
               for batch in batches]
    configs += [(model, method, batch, MODELS[model][2], True) for model, method, batch in CHECKPOINTED
                if not args.quick]
    configs = [(*config, None) for config in configs]
    if not args.quick:
        for model, layers in DEPTHS:
            run_in_subprocess({"job": "config", "model": model, "layers": layers})
            configs += [(model, method, MODELS[model][1][0], MODELS[model][2], False, layers) for method in DEPTH_METHODS]
    # every training run is measured before this process imports torch: a child's ru_maxrss starts
    # from its parent's peak RSS (Linux carries it across fork and exec), so the parent must stay small
    measured = [measure(*config) for config in configs]
    rows = [predict(m) for m in measured]
    elapsed = time.perf_counter() - started

    print_report(rows, baseline, elapsed)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(
            {"runtime_baseline_bytes": baseline, "wall_seconds": elapsed, "rows": rows}, indent=2))
    return 0


def run_in_subprocess(spec: dict) -> dict:
    """Run one job in a fresh Python process; return the JSON it prints last."""
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{spec['job']} job failed: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(model: str, method: str, batch: int, seq_len: int, checkpointing: bool, layers: int | None) -> dict:
    """Train in a fresh subprocess; the row with its peak RSS (or the error that stopped it)."""
    row = {"model": model, "method": method, "batch": batch, "seq_len": seq_len, "checkpointing": checkpointing,
           "layers": layers}
    try:
        result = run_in_subprocess({"job": "train", **row})
    except RuntimeError as exc:
        print(f"{model} {method} batch {batch}: {exc}", file=sys.stderr, flush=True)
        return {**row, "error": str(exc)}
    print(f"{_name(row)} {method} batch {batch} x {seq_len}{' checkpointed' if checkpointing else ''}: peak RSS {result['peak_rss_bytes'] / MIB:,.0f} MiB, steps "
          f"{', '.join(f'{s:.1f}' for s in result['step_seconds'])} s", file=sys.stderr, flush=True)
    return {**row, **result, "error": None}


def predict(row: dict) -> dict:
    """Add autopeft's estimate for the row's configuration, and its error against the measurement."""
    import autopeft

    if row["error"]:
        return row
    try:
        model = str(depth_config_dir(row["model"], row["layers"])) if row.get("layers") else row["model"]
        est = autopeft.estimate(model, row["method"], task=MODELS[row["model"]][0], batch_size=row["batch"],
                                seq_len=row["seq_len"], dtype="fp32", device="cpu",
                                gradient_checkpointing=row["checkpointing"])
    except autopeft.AutopeftError as exc:
        return {**row, "error": f"estimate failed: {exc}"}
    measured = row["peak_rss_bytes"]
    return {**row, "predicted_bytes": est.peak_memory_bytes, "predicted_trainable_params": est.trainable_params,
            "predicted_phase": est.peak_phase, "breakdown": est.breakdown.model_dump(),
            "relative_error": (est.peak_memory_bytes - measured) / measured}


def print_report(rows: list[dict], baseline: int, elapsed: float) -> None:
    from autopeft.costmodel import RUNTIME_BYTES

    print("| model | method | batch | seq_len | checkpointing | trainable params | measured peak RSS (MiB) "
          "| predicted (MiB) | error |")
    print("|---|---|---:|---:|---|---:|---:|---:|---:|")
    for r in rows:
        head = (f"| {_name(r)} | {r['method']} | {r['batch']} | {r['seq_len']} "
                f"| {'yes' if r['checkpointing'] else 'no'} |")
        if r["error"]:
            print(f"{head} - | - | - | failed: {r['error']} |")
            continue
        params = f"{r['trainable_params']:,}"
        if r["trainable_params"] != r["predicted_trainable_params"]:
            params += f" (predicted {r['predicted_trainable_params']:,})"
        print(f"{head} {params} | {r['peak_rss_bytes'] / MIB:,.0f} | {r['predicted_bytes'] / MIB:,.0f} "
              f"| {100 * r['relative_error']:+.1f}% |")
    errors = [abs(r["relative_error"]) for r in rows if not r["error"]]
    print()
    print(f"runtime baseline (bare child importing torch, transformers' Trainer, peft, autopeft.training.run): "
          f"{baseline / MIB:,.0f} MiB "
          f"peak RSS; RUNTIME_BYTES['cpu'] = {RUNTIME_BYTES['cpu'] / MIB:,.0f} MiB")
    if errors:
        print(f"peak memory: median absolute error {100 * statistics.median(errors):.1f}%, "
              f"max {100 * max(errors):.1f}%, within {100 * TOLERANCE:.0f}%: {sum(e <= TOLERANCE for e in errors)} "
              f"of {len(errors)} ({len(rows) - len(errors)} failed)")
    print(f"wall time: {elapsed / 60:.1f} min")


def _name(row: dict) -> str:
    return f"{row['model']} at {row['layers']} layers" if row.get("layers") else row["model"]


def depth_config_dir(model: str, layers: int) -> Path:
    """Where the config of ``model`` at ``layers`` layers is kept: a model dir ``estimate`` reads."""
    return SMOLLM2_COPY.parent / f"{model}-{layers}-layers"


# --- what runs in the subprocesses ---------------------------------------------------------------


def run_child(spec: dict) -> dict:
    jobs = {"convert": convert_smollm2, "config": write_depth_config, "baseline": measure_baseline,
            "train": measure_training}
    return jobs[spec["job"]](spec)


def peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def convert_smollm2(spec: dict) -> dict:
    """Save the embedded GGUF SmolLM2, dequantised to fp32, as a plain safetensors model dir (once)."""
    if (SMOLLM2_COPY / "model.safetensors").is_file():
        return {"path": str(SMOLLM2_COPY)}
    import torch
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM

    from autopeft.models import EMBEDDED, embedded_dir

    gguf = EMBEDDED["smollm2-135m"]
    model = AutoModelForCausalLM.from_pretrained(str(embedded_dir(gguf)), gguf_file=gguf.gguf_file,
                                                 dtype=torch.float32)
    del model.config.quantization_config  # the weights are plain fp32 now
    partial = SMOLLM2_COPY.with_name(SMOLLM2_COPY.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(str(partial))
    save_model(model, str(partial / "model.safetensors"))  # handles the tied embeddings
    partial.rename(SMOLLM2_COPY)
    return {"path": str(SMOLLM2_COPY)}


def write_depth_config(spec: dict) -> dict:
    """The config of the model at another number of layers, alone in its dir."""
    from transformers import AutoConfig

    from autopeft.models import EMBEDDED, embedded_dir

    source = SMOLLM2_COPY if spec["model"] == "smollm2-135m" else embedded_dir(EMBEDDED[spec["model"]])
    config = AutoConfig.from_pretrained(str(source))
    config.num_hidden_layers = spec["layers"]
    target = depth_config_dir(spec["model"], spec["layers"])
    config.save_pretrained(str(target))
    return {"path": str(target)}


def import_training_runtime() -> None:
    """What a process that runs ``autopeft train`` has imported before it loads a model."""
    import peft  # noqa: F401
    import torch  # noqa: F401
    from transformers import Trainer  # noqa: F401

    import autopeft.training.run  # noqa: F401


def measure_baseline(spec: dict) -> dict:
    import_training_runtime()
    return {"peak_rss_bytes": peak_rss_bytes()}


def load_model(name: str, layers: int | None = None):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    from autopeft.models import EMBEDDED, embedded_dir

    if layers:
        config = AutoConfig.from_pretrained(str(depth_config_dir(name, layers)), num_labels=2)
        auto = AutoModelForCausalLM if MODELS[name][0] == "causal-lm" else AutoModelForSequenceClassification
        return auto.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    if name == "smollm2-135m":
        return AutoModelForCausalLM.from_pretrained(str(SMOLLM2_COPY), dtype=torch.float32, attn_implementation="sdpa")
    return AutoModelForSequenceClassification.from_pretrained(
        str(embedded_dir(EMBEDDED[name])), num_labels=2, dtype=torch.float32, attn_implementation="sdpa")


def measure_training(spec: dict) -> dict:
    """Build the method on the real model, train STEPS steps, and report the process's peak RSS."""
    import_training_runtime()
    import torch

    import autopeft
    from autopeft.methods.base import unique_trainable

    task = MODELS[spec["model"]][0]
    torch.manual_seed(0)
    model = load_model(spec["model"], spec.get("layers"))
    method = autopeft.get_method(spec["method"])
    settings = method.settings({})
    net = method.build(model, settings, task)
    if spec["checkpointing"]:  # as autopeft's trainer turns it on
        net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    trainable = unique_trainable(net)
    optimizer = (method.optimizer(net, settings, learning_rate=1e-4, weight_decay=0.0)
                 or torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.0))
    net.train()
    step_seconds = []
    for _ in range(STEPS):
        started = time.perf_counter()
        ids = torch.randint(0, model.config.vocab_size, (spec["batch"], spec["seq_len"]))
        labels = ids if task == "causal-lm" else torch.randint(0, 2, (spec["batch"],))
        outputs = net(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
        outputs.loss.backward()  # the outputs (logits) stay alive through backward, as in a training loop
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        del outputs
        step_seconds.append(time.perf_counter() - started)
    return {"peak_rss_bytes": peak_rss_bytes(), "trainable_params": sum(p.numel() for p in trainable),
            "step_seconds": step_seconds}


if __name__ == "__main__":
    sys.exit(main())
