"""Several processes: a real 2-process data-parallel fine-tune on this CPU (gloo, launched through
Accelerate), and the per-device memory formulas of each sharding strategy."""

from __future__ import annotations

from pathlib import Path

import pytest

import autopeft
from autopeft.errors import BadInputError
from autopeft.training.outputs import RunRecord
from autopeft.sharding import from_accelerate_config, per_device, sharding

pytestmark = pytest.mark.slow  # every test here trains or starts processes

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_two_processes_split_the_data_average_the_gradients_and_write_one_adapter(trainable_llama, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    record = autopeft.train(str(EXAMPLES / "instructions.jsonl"), output_dir=str(out), model=str(trainable_llama),
                            method="lora", max_length=128, batch_size=4, max_steps=3,
                            learning_rate=1e-2, samples=0, forgetting=False, num_processes=2, progress=False)
    dist = record.distributed
    assert dist is not None and dist.num_processes == 2 and dist.backend == "gloo" and dist.strategy == "ddp"
    first, second = dist.ranks
    # each process computed on its own micro-batches: 3 steps x 4 examples, none in common
    assert first.examples == second.examples == 12
    assert first.data_fingerprint != second.data_fingerprint
    assert dist.shared_examples == 0
    # the gradients were averaged: after the steps, both replicas hold the very same weights
    assert dist.replicas_identical and first.weights_fingerprint == second.weights_fingerprint
    assert record.steps == 3
    # one set of outputs, written once, that loads
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["adapter_model.safetensors"]
    assert RunRecord.model_validate_json((out / "run.json").read_text()).distributed == dist
    assert not (out / ".launch.json").exists()
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(trainable_llama)), str(out))


# -- per-device memory --------------------------------------------------------------------------

PARTS = {"weights": 1000, "gradients": 100, "optimizer": 200, "all_gradients": 100, "block_weights": 50,
         "block_gradients": 5}


@pytest.mark.parametrize("strategy, expected", [
    ("single", (1000, 100, 200, 0)),
    ("ddp", (1000, 100, 200, 100)),             # gradient buckets: a second copy of the gradients
    ("zero1", (1000, 100, 50, 0)),              # optimizer state / 4
    ("zero2", (1000, 25, 50, 5)),               # + gradients / 4, one block's gradients in flight
    ("zero3", (250, 25, 50, 5 + 2 * 50)),       # + parameters / 4, two blocks gathered
])
def test_each_strategy_splits_what_it_shards(strategy, expected):
    plan = sharding(strategy, 4 if strategy != "single" else 1)
    share = per_device(plan, **PARTS)
    assert (share.weights, share.gradients, share.optimizer, share.communication) == expected


def test_sharded_shares_round_up():
    share = per_device(sharding("zero3", 3), **PARTS)
    assert share.weights == 334 and share.optimizer == 67


def test_estimates_are_per_device_and_shrink_with_sharding(tiny_llama_dir):
    def peak(strategy, n):
        return autopeft.estimate(str(tiny_llama_dir), "full", batch_size=2, seq_len=32, device="cuda",
                                 strategy=strategy, num_processes=n)

    single, ddp, zero2, zero3 = peak(None, 1), peak("ddp", 2), peak("zero2", 2), peak("zero3", 2)
    assert ddp.strategy == "ddp" and ddp.num_processes == 2
    assert ddp.peak_memory_bytes > single.peak_memory_bytes > zero2.peak_memory_bytes
    assert zero2.breakdown.optimizer * 2 >= single.breakdown.optimizer > zero2.breakdown.optimizer
    assert zero3.breakdown.weights * 2 >= single.breakdown.weights > zero3.breakdown.weights
    # on a 2-layer model, gathering two blocks at a time costs ZeRO-3 what sharding the weights saves
    assert zero3.breakdown.communication > zero2.breakdown.communication
    assert zero3.breakdown.activations == single.breakdown.activations  # each device runs its own micro-batch


def test_accelerate_configs_map_to_strategies():
    assert from_accelerate_config({"distributed_type": "MULTI_GPU", "num_processes": 8}).strategy == "ddp"
    fsdp = from_accelerate_config({"distributed_type": "FSDP", "num_processes": 4,
                                   "fsdp_config": {"fsdp_sharding_strategy": "SHARD_GRAD_OP"}})
    assert (fsdp.strategy, fsdp.num_processes) == ("zero2", 4)
    assert from_accelerate_config({"distributed_type": "FSDP", "num_processes": 2}).strategy == "zero3"
    zero = from_accelerate_config({"distributed_type": "DEEPSPEED", "num_processes": 2,
                                   "deepspeed_config": {"zero_stage": 3}})
    assert zero.strategy == "zero3"
    assert from_accelerate_config({"distributed_type": "NO"}).strategy == "single"


def test_bad_strategies_and_config_files_are_one_line_errors(tmp_path):
    from autopeft.training.launch import read_accelerate_config

    with pytest.raises(BadInputError, match="unknown strategy"):
        sharding("zero4", 2)
    broken = tmp_path / "accelerate.yaml"
    broken.write_text("distributed_type: FSDP\n  num_processes: [2\n")
    with pytest.raises(BadInputError, match=str(broken)):
        read_accelerate_config(broken)
    other = tmp_path / "other.yaml"
    other.write_text("learning_rate: 3\n")
    with pytest.raises(BadInputError, match="not an Accelerate config"):
        read_accelerate_config(other)


def test_estimate_cli_reads_the_strategy_from_an_accelerate_config(tiny_llama_dir, tmp_path):
    import json

    from click.testing import CliRunner

    from autopeft.cli import main

    config = tmp_path / "fsdp.yaml"
    config.write_text("distributed_type: FSDP\nnum_processes: 4\nfsdp_config:\n  fsdp_sharding_strategy: FULL_SHARD\n")
    args = ["estimate", "--model", str(tiny_llama_dir), "--method", "full", "--batch-size", "2", "--seq-len", "32"]
    result = CliRunner().invoke(main, [*args, "--accelerate-config", str(config), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert (doc["strategy"], doc["num_processes"]) == ("zero3", 4)
    text = CliRunner().invoke(main, [*args, "--num-processes", "2"]).output
    assert "2 processes, ddp: memory figures are per device" in text and "communication" in text
    config.write_text("distributed_type: [FSDP\n")
    bad = CliRunner().invoke(main, [*args, "--accelerate-config", str(config)])
    assert bad.exit_code == 2 and str(config) in bad.output and "Traceback" not in bad.output
