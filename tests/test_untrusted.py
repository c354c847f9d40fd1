"""Untrusted models: nothing runs that the user did not choose. A model's own Python code runs only
with --trust-remote-code, and pickle weights (which run code when unpickled) load only with
--allow-pickle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from autopeft.cli import main

pytestmark = pytest.mark.slow  # every test here trains

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

CUSTOM_CONFIG = '''
from pathlib import Path
from transformers import LlamaConfig

Path(__file__).with_name("code-ran").write_text("the model's own code ran")


class CustomConfig(LlamaConfig):
    model_type = "custom-llama"
'''


def _train(model: Path, out: Path, *flags: str):
    return CliRunner().invoke(main, ["train", str(EXAMPLES / "instructions.jsonl"), "-m", str(model), "-o", str(out),
                                     "--max-length", "64", "--max-steps", "1", "--max-examples", "16", *flags])


def test_a_models_own_code_does_not_run_without_trust_remote_code(trainable_llama, tmp_path):
    model = tmp_path / "custom"
    shutil.copytree(trainable_llama, model)
    (model / "configuration_custom.py").write_text(CUSTOM_CONFIG)
    config = json.loads((model / "config.json").read_text())
    config.update(model_type="custom-llama", auto_map={"AutoConfig": "configuration_custom.CustomConfig"})
    (model / "config.json").write_text(json.dumps(config))

    result = _train(model, tmp_path / "run")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"autopeft: error: --model: {model} comes with its own Python code, which runs only if you trust it: "
        f"read it, then pass --trust-remote-code")
    estimated = CliRunner().invoke(main, ["estimate", "-m", str(model), "--method", "lora"])
    assert estimated.exit_code == 2 and "pass --trust-remote-code" in estimated.stderr
    assert not (model / "code-ran").exists() and not (tmp_path / "run").exists()


def test_pickle_weights_load_only_when_allowed(trainable_llama, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    model = tmp_path / "pickled"
    shutil.copytree(trainable_llama, model, ignore=shutil.ignore_patterns("*.safetensors"))
    weights = AutoModelForCausalLM.from_pretrained(str(trainable_llama)).state_dict()
    torch.save(weights, model / "pytorch_model.bin")

    refused = _train(model, tmp_path / "refused")
    assert refused.exit_code == 2
    assert "no safetensors weights" in refused.stderr and "--allow-pickle" in refused.stderr
    assert not (tmp_path / "refused").exists()
    allowed = _train(model, tmp_path / "allowed", "--allow-pickle")
    assert allowed.exit_code == 0, allowed.output
    assert (tmp_path / "allowed" / "adapter_model.safetensors").is_file()
