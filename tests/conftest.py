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
    """User state (caches) goes to a temp dir, never the real home; the plugin allow-list that
    ``--plugins``/``--no-plugins`` sets for a command's processes ends with the test."""
    monkeypatch.setenv("AUTOPEFT_HOME", str(tmp_path / "autopeft-home"))
    monkeypatch.setenv("AUTOPEFT_LOAD_PLUGINS", "")  # recorded, so that teardown restores what was there
    monkeypatch.delenv("AUTOPEFT_LOAD_PLUGINS")


TRAIN_CORPUS = [
    "the quick brown fox jumps over the lazy dog", "hello world, this is a small test sentence",
    "### Instruction: ### Input: ### Response:", "what is two plus two? four. the answer is four.",
    "I love this film. I hate this film. great, awful, fine, boring, wonderful",
]


def tiny_tokenizer():
    """A real fast byte-level BPE tokenizer trained here on a few sentences (no Hub), 300 entries."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(TRAIN_CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="session")
def trainable_llama(tmp_path_factory) -> Path:
    """A 2-layer Llama with random weights (safetensors) and a tokenizer: a model dir the trainer can load."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("trainable-llama")
    config = LlamaConfig(**{**TINY_LLAMA, "vocab_size": 320, "max_position_embeddings": 256,
                            "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2})
    LlamaForCausalLM(config).save_pretrained(str(directory))
    tiny_tokenizer().save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="session")
def trainable_bert(tmp_path_factory) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("trainable-bert")
    BertModel(BertConfig(**{**TINY_BERT, "vocab_size": 320, "pad_token_id": 0})).save_pretrained(str(directory))
    tiny_tokenizer().save_pretrained(str(directory))
    return directory


@pytest.fixture
def write_peft_result():
    return _write_peft_result


def _write_peft_result(path, name, acc, mem, losses, method_dir="lora"):
    """One result file in the PEFT method-comparison layout, with a loss curve every 250 steps."""
    metrics = [{"step": 250 * (i + 1), "train loss": v, "valid accuracy": 0.1} for i, v in enumerate(losses)]
    metrics.append({"step": 250 * len(losses), "test accuracy": acc, "train loss": losses[-1]})
    doc = {"run_info": {"experiment_name": f"{method_dir}/{name}", "train_config": {
        "model_id": "llama", "batch_size": 4, "max_steps": 250 * len(losses), "optimizer_kwargs": {"lr": 1e-4}},
        "peft_config": {"r": 8}},
        "train_info": {"status": "success", "accelerator_memory_max": mem, "num_trainable_params": 100,
                       "num_total_params": 1000, "file_size": 400, "train_time": 100.0, "metrics": metrics}}
    (path / f"{method_dir}--{name}.json").write_text(json.dumps(doc))
