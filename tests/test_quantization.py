"""Quantised bases (QLoRA-style): the bytes bitsandbytes stores, which layers it converts, the cost
model's weights with them, and a clear refusal where there is no CUDA (this machine) or the method
cannot train on a quantized base."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import autopeft
from autopeft.cli import main
from autopeft.errors import BadInputError
from autopeft.methods.registry import get_methods
from autopeft.quantization import layer_bytes

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NO_CUDA = "this machine has none"


def test_a_4bit_layer_is_half_a_byte_per_weight_plus_two_levels_of_block_scales():
    n = 4096 * 4096
    blocks = n // 64  # one 8-bit scale per 64 weights, one float32 scale per 256 of those
    assert layer_bytes(4096, 4096, "4bit") == n // 2 + blocks + 4 * (blocks // 256) + 256 * 4 + 16 * 4
    assert layer_bytes(4096, 11008, "8bit") == 4096 * 11008 + 4 * 4096  # int8 weights, a float32 scale per row
    with pytest.raises(ValueError):
        layer_bytes(8, 8, "3bit")


@pytest.mark.parametrize("quantize", ["4bit", "8bit"])
def test_the_estimate_stores_every_block_linear_quantised_and_keeps_the_tied_head(tiny_llama_dir, quantize):
    def weights(q):
        return autopeft.estimate(str(tiny_llama_dir), "lora", batch_size=2, seq_len=32, device="cuda", dtype="bf16",
                                 quantize=q)

    plain, packed = weights(None), weights(quantize)
    # 2 blocks of q, k, v, o (64x64, k and v 32x64) and gate, up, down (128x64, 64x128) in bf16; the
    # embedding, tied to the head, and the norms stay as they were
    shapes = [(64, 64), (32, 64), (32, 64), (64, 64), (128, 64), (128, 64), (64, 128)] * 2
    saved = sum(2 * o * i - layer_bytes(o, i, quantize) for o, i in shapes)
    assert plain.breakdown.weights - packed.breakdown.weights == saved
    assert packed.quantize == quantize and packed.trainable_params == plain.trainable_params
    assert packed.adapter_bytes == plain.adapter_bytes
    # the only new cost: one layer dequantised to bf16 at a time inside the matmul
    assert packed.breakdown.overhead - plain.breakdown.overhead == 2 * 128 * 64


def test_a_classifier_head_stays_unquantised(tiny_bert_dir):
    from autopeft.costmodel import _build_on_meta
    from autopeft.models import load_config

    import torch

    net, layers, _ = _build_on_meta(load_config(str(tiny_bert_dir)), "seq-cls", torch.bfloat16, 3,
                                    autopeft.get_method("lora"), autopeft.get_method("lora").settings(), None, "4bit")
    head = net.base_model.model.classifier
    assert all(weight is not head.weight for _, _, weight in layers)
    assert len(layers) == 2 * 6 + 1  # per block q, k, v, attention output, intermediate, output; the pooler
    assert all(weight.shape != (3, 64) for _, _, weight in layers)


@pytest.mark.parametrize("method, device, problem", [
    ("loha", "cuda", "method loha cannot train on a quantized base"),
    ("full", "cuda", "method full cannot train on a quantized base"),
    ("lora", "cpu", "a 4bit base trains only on CUDA"),
])
def test_estimate_refuses_what_cannot_train_on_a_quantised_base(tiny_llama_dir, method, device, problem):
    result = CliRunner().invoke(main, ["estimate", "-m", str(tiny_llama_dir), "--method", method, "--device", device,
                                       "--quantize", "4bit"])
    assert result.exit_code == 2 and problem in result.output and "Traceback" not in result.output
    with pytest.raises(BadInputError):
        autopeft.estimate(str(tiny_llama_dir), method, device=device, quantize="4bit")


@pytest.mark.parametrize("command", ["train", "tune"])
def test_training_on_a_quantised_base_without_cuda_says_why_and_writes_nothing(trainable_llama, tmp_path, command):
    out = tmp_path / "run"
    result = CliRunner().invoke(main, [command, str(EXAMPLES / "instructions.jsonl"), "-m", str(trainable_llama),
                                       "--quantize", "8bit", "-o", str(out)])
    assert result.exit_code == 2
    assert "--quantize 8bit" in result.output and NO_CUDA in result.output
    assert not out.exists()


def test_a_method_without_the_capability_is_refused_before_anything_loads(trainable_llama, tmp_path):
    result = CliRunner().invoke(main, ["train", str(EXAMPLES / "instructions.jsonl"), "-m", str(trainable_llama),
                                       "--method", "boft", "--quantize", "4bit", "-o", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "method boft cannot train on a quantized base; these can:" in result.output and "lora" in result.output


def test_planning_a_quantised_run_for_a_gpu_ranks_only_the_methods_that_can(trainable_llama):
    def plan(*extra):
        result = CliRunner().invoke(main, ["recommend", str(EXAMPLES / "instructions.jsonl"), "-m",
                                           str(trainable_llama), "--max-length", "64", "--target-gpu", "a100-40gb",
                                           "--no-pilot", "--json", *extra])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    rec, plain = plan("--quantize", "4bit"), plan()
    feasible = {c["method"] for c in rec["candidates"] if c["feasible"]}
    capable = {m.name for m in get_methods().values() if m.capabilities.quantized}
    assert rec["quantize"] == "4bit" and rec["chosen"] in feasible and feasible <= capable and "lora" in feasible
    full = next(c for c in rec["candidates"] if c["method"] == "full")
    assert not full["feasible"] and "cannot train on a quantized base" in full["excluded_because"]

    def lora_peak(r):
        lora = next(c for c in r["candidates"] if c["method"] == "lora")["estimated"]
        return lora["peak_memory_bytes"]

    # the memory it planned with is the quantised base's
    assert lora_peak(rec) < lora_peak(plain)
