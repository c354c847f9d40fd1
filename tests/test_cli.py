"""The command line: listing, estimating, and one clear line with exit status 2 for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from autopeft.cli import main


def run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_methods_json_follows_the_contract():
    result = run("methods", "--json")
    assert result.exit_code == 0
    methods = json.loads(result.output)
    lora = next(m for m in methods if m["name"] == "lora")
    assert {"name", "family", "description", "tasks", "capabilities", "source"} <= set(lora)
    assert lora["capabilities"] == {"merge": True, "quantized": True, "multi_adapter": True, "lora_convertible": True}


def test_estimate_json_follows_the_contract(tiny_llama_dir):
    result = run("estimate", "--model", str(tiny_llama_dir), "--method", "lora", "--set", "r=4",
                 "--batch-size", "2", "--seq-len", "32", "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert {"method", "trainable_params", "total_params", "adapter_bytes", "peak_memory_bytes", "breakdown"} <= set(doc)
    # r=4 on q_proj (64->64) and v_proj (64->32) in 2 layers: 4*(64+64) + 4*(64+32) per layer
    assert doc["trainable_params"] == 2 * (4 * 128 + 4 * 96)
    parts = doc["breakdown"]
    assert doc["peak_memory_bytes"] == sum(parts[k] for k in ("weights", "gradients", "optimizer", "activations",
                                                              "logits", "communication", "overhead"))


def test_estimate_several_peft_configs_prints_a_json_list(tiny_llama_dir, tmp_path):
    files = []
    for peft_type, extra in (("LORA", {"r": 2, "target_modules": ["q_proj"]}), ("IA3", {})):
        path = tmp_path / f"{peft_type}.json"
        path.write_text(json.dumps({"peft_type": peft_type, "task_type": "CAUSAL_LM", **extra}))
        files += ["--peft-config", str(path)]
    result = run("estimate", "--model", str(tiny_llama_dir), *files, "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    docs = json.loads(result.output)
    assert [d["method"] for d in docs] == ["lora", "ia3"]
    assert docs[0]["trainable_params"] == 2 * 2 * (64 + 64)


def test_estimate_of_several_configs_reports_each_failure_and_computes_the_rest(tiny_llama_dir, tmp_path):
    good = tmp_path / "lora.json"
    good.write_text(json.dumps({"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 2, "target_modules": ["q_proj"]}))
    bad = tmp_path / "bad.json"
    bad.write_text('{"r": 8}')
    args = ["estimate", "--model", str(tiny_llama_dir), "--peft-config", str(bad), "--peft-config", str(good),
            "--device", "cpu"]
    result = run(*args, "--json")
    assert result.exit_code == 2, result.output  # every failure was bad input
    failed, done = json.loads(result.stdout)
    assert failed["source"] == str(bad) and "peft_type" in failed["error"] and set(failed) == {"source", "error"}
    assert done["source"] == str(good) and done["method"] == "lora" and done["trainable_params"] == 2 * 2 * (64 + 64)
    text = run(*args)
    assert text.exit_code == 2
    assert f"{bad}: not estimated: " in text.output and "lora on " in text.output
    assert "1 of 2 configs estimated; 1 failed" in text.output
    single = run("estimate", "--model", str(tiny_llama_dir), "--peft-config", str(bad), "--device", "cpu")
    assert single.exit_code == 2 and "peft_type" in single.output and "not estimated" not in single.output
    from autopeft.estimates import EstimateFailure, exit_status

    broken = EstimateFailure(source="x.json", error="unexpected RuntimeError: boom", bad_input=False)
    assert exit_status([broken, EstimateFailure(source="y.json", error="bad", bad_input=True)]) == 1


def test_gradient_checkpointing_lowers_the_estimate_and_batch_raises_it(tiny_llama_dir):
    import autopeft

    small = autopeft.estimate(str(tiny_llama_dir), "lora", batch_size=2, seq_len=64, device="cpu")
    big = autopeft.estimate(str(tiny_llama_dir), "lora", batch_size=8, seq_len=64, device="cpu")
    assert big.breakdown.activations > 3 * small.breakdown.activations
    assert small.breakdown.activations_with_checkpointing < small.breakdown.activations_without_checkpointing
    full = autopeft.estimate(str(tiny_llama_dir), "full", batch_size=2, seq_len=64, device="cpu")
    assert full.breakdown.optimizer > 10 * small.breakdown.optimizer


def test_cpu_overhead_counts_the_heap_the_forward_pass_leaves_behind(tiny_llama_dir):
    """On CPU glibc keeps part of the forward pass's freed temporaries; on CUDA only a small fraction
    of the activations is lost, so the same run costs more overhead on CPU and it grows with the batch."""
    import autopeft
    from autopeft.costmodel import RUNTIME_BYTES

    def heap(batch, device="cpu", checkpointing=False):
        est = autopeft.estimate(str(tiny_llama_dir), "lora", batch_size=batch, seq_len=64, device=device,
                                gradient_checkpointing=checkpointing)
        return est.breakdown.overhead - RUNTIME_BYTES[device], est

    small, _ = heap(2)
    big, est = heap(8)
    assert big > 3 * small > 0
    assert heap(8, checkpointing=True)[0] < big
    cuda, cuda_est = heap(8, device="cuda")
    assert cuda == int(0.05 * (cuda_est.breakdown.activations + cuda_est.breakdown.logits))
    assert big > cuda


def test_cpu_heap_keeps_a_few_blocks_worth_of_temporaries_however_deep_the_model(tmp_path):
    """The cost model counts a few blocks' worth of temporaries as what the CPU heap retains (glibc
    reuses most of the holes earlier blocks leave), so a model twice as deep keeps no more, while a
    model shallower than that keeps all of them. Only an approximation: see HEAP_BLOCKS_RETAINED."""
    import autopeft
    from autopeft.costmodel import HEAP_BLOCKS_RETAINED, RUNTIME_BYTES

    from .conftest import TINY_LLAMA, _write_config

    def heap(layers):
        directory = _write_config(tmp_path / f"llama-{layers}", {**TINY_LLAMA, "num_hidden_layers": layers})
        est = autopeft.estimate(str(directory), "lora", batch_size=4, seq_len=64, device="cpu")
        return est.breakdown.overhead - RUNTIME_BYTES["cpu"], est

    assert 16 > 2 * HEAP_BLOCKS_RETAINED
    deep, deep_est = heap(16)
    deeper, deeper_est = heap(32)
    assert deeper_est.breakdown.activations > 1.8 * deep_est.breakdown.activations
    assert deeper == pytest.approx(deep, rel=0.02)
    shallow, _ = heap(2)
    assert 0 < shallow < deep


def _bad_inputs(tmp_path, tiny_llama_dir):
    malformed = tmp_path / "adapter_config.json"
    malformed.write_text('{"peft_type": "LORA",\n  "r": 8,,\n}')
    not_peft = tmp_path / "not_peft.json"
    not_peft.write_text('{"r": 8}')
    empty_dir = tmp_path / "empty-model"
    empty_dir.mkdir()
    return {
        "unknown method": (["--model", str(tiny_llama_dir), "--method", "lorax"], "unknown method 'lorax'"),
        "malformed adapter config": (["--model", str(tiny_llama_dir), "--peft-config", str(malformed)], ":2:"),
        "not a PEFT config": (["--model", str(tiny_llama_dir), "--peft-config", str(not_peft)], "peft_type"),
        "missing config.json": (["--model", str(empty_dir), "--method", "lora"], "no config.json"),
        "missing model dir": (["--model", str(tmp_path / "nope"), "--method", "lora"], "no such model directory"),
        "nonsense batch size": (["--model", str(tiny_llama_dir), "--method", "lora", "--batch-size", "-3"], "-3"),
        "nonsense seq len": (["--model", str(tiny_llama_dir), "--method", "lora", "--seq-len", "12XB"], "12XB"),
        "unknown setting": (["--model", str(tiny_llama_dir), "--method", "lora", "--set", "rank=8"], "'rank'"),
        "bad setting value": (["--model", str(tiny_llama_dir), "--method", "lora", "--set", "r=-1"], "'r'"),
        "setting without value": (["--model", str(tiny_llama_dir), "--method", "lora", "--set", "r"], "KEY=VALUE"),
        "neither method nor config": (["--model", str(tiny_llama_dir)], "--method"),
    }


@pytest.mark.parametrize("case", ["unknown method", "malformed adapter config", "not a PEFT config",
                                  "missing config.json", "missing model dir", "nonsense batch size",
                                  "nonsense seq len", "unknown setting", "bad setting value",
                                  "setting without value", "neither method nor config"])
@pytest.mark.slow
def test_bad_input_to_estimate_gives_one_line_and_status_2(case, tmp_path, tiny_llama_dir):
    args, expected = _bad_inputs(tmp_path, tiny_llama_dir)[case]
    proc = subprocess.run([sys.executable, "-m", "autopeft", "estimate", *args], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert expected in lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_help_is_fast_because_heavy_libraries_load_lazily():
    code = ("import sys, autopeft.cli; heavy = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules];"
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert out.strip() == "[]"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "autopeft", "methods"], capture_output=True, check=True, timeout=60)
    assert time.perf_counter() - start < 10  # generous: the benchmark measures the real figure


def test_methods_json_lists_every_method_with_probed_capabilities():
    from click.testing import CliRunner

    from autopeft.cli import main

    result = CliRunner().invoke(main, ["methods", "--json"])
    assert result.exit_code == 0, result.output
    methods = json.loads(result.stdout)
    assert len(methods) >= 50
    for m in methods:
        assert m["probed"] is not None, m["name"]
        for flag in ("merge", "quantized", "multi_adapter", "lora_convertible"):
            assert m["probed"][flag]["source"] in ("probe", "peft-source", "declared"), (m["name"], flag)
