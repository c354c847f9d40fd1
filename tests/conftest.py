"""Shared fixtures: tiny models built from configs (no weights, no Hub) and isolated user state."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

warnings.filterwarnings("ignore")

TINY_LLAMA = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
    "vocab_size": 256, "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
    "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2,
}
TINY_BERT = {
    "architectures": ["BertModel"], "model_type": "bert", "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 256, "max_position_embeddings": 128,
    "type_vocab_size": 2,
}


def _write_config(directory: Path, config: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A dir holding only the config.json of a 2-layer Llama."""
    return _write_config(tmp_path_factory.mktemp("tiny-llama"), TINY_LLAMA)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    return _write_config(tmp_path_factory.mktemp("tiny-bert"), TINY_BERT)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """User state (caches) goes to a temp dir, never the real home."""
    monkeypatch.setenv("AUTOPEFT_HOME", str(tmp_path / "autopeft-home"))
