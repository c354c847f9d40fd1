"""Trainable tokens: only the embedding rows of chosen tokens train (a PEFT feature; no paper of its own)."""

from __future__ import annotations

from pydantic import Field

from autopeft import BadInputError, Capabilities, MethodSettings, PeftMethod, SearchSpace, hookimpl, peft_task_type


class TrainableTokensSettings(MethodSettings):
    token_indices: list[int] | None = Field(
        default=None, min_length=1,
        description="ids of the tokens whose embeddings train; None: the model's special tokens (BOS and EOS)")


#: the config fields naming special tokens that a causal LM's training sequences carry
_SPECIAL_TOKEN_FIELDS = ("bos_token_id", "eos_token_id")


def special_tokens(config) -> list[int]:
    """The ids of the special tokens ``config`` names, each once, in order."""
    ids: list[int] = []
    for field in _SPECIAL_TOKEN_FIELDS:
        value = getattr(config, field, None)
        for token in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(token, int) and token >= 0 and token not in ids:
                ids.append(token)
    return ids


class TrainableTokens(PeftMethod):
    name = "trainable_tokens"
    aliases = ("trainable-tokens",)
    family = "embedding"
    description = "Trains only chosen tokens' embeddings (default: BOS/EOS); for new or special tokens and formats."
    peft_type = "TRAINABLE_TOKENS"
    # PEFT leaves a classifier's new head frozen with this method (it has no modules_to_save), so a
    # classification run would train a few embedding rows under a random head: causal LM only
    tasks = ("causal-lm",)
    layer_types = ("embedding",)
    # a second adapter breaks the forward of a model with tied embeddings (PEFT 0.21: "TrainableTokensLayer
    # wraps an unknown layer type"), and most small causal LMs tie them
    capabilities = Capabilities(merge=True, quantized=False, multi_adapter=False, lora_convertible=False)
    # PEFT's MetaMathQA comparison trains BOS and EOS at 0.2: a few rows take large steps
    search_space = SearchSpace(learning_rate=(5e-2, 2e-1, 5e-1))
    Settings = TrainableTokensSettings

    def settings_for_model(self, model, settings):
        config = getattr(model, "config", None)
        vocab = getattr(config, "vocab_size", None)
        if settings.token_indices is None:
            ids = special_tokens(config)
            if not ids:
                raise BadInputError("method trainable_tokens: the model's config names no BOS or EOS token to train; "
                                    "set token_indices to the ids of the tokens to train")
            settings = settings.model_copy(update={"token_indices": ids})
        if isinstance(vocab, int) and any(not 0 <= t < vocab for t in settings.token_indices):
            raise BadInputError(f"method trainable_tokens: token_indices {settings.token_indices} fall outside the "
                                f"model's vocabulary of {vocab} tokens")
        return settings

    def build(self, model, settings, task):
        return super().build(model, self.settings_for_model(model, settings), task)

    def peft_config(self, settings, task):
        from peft import TrainableTokensConfig

        if settings.token_indices is None:
            raise BadInputError("method trainable_tokens needs token_indices (the ids of the tokens to train)")
        return TrainableTokensConfig(task_type=peft_task_type(task), token_indices=list(settings.token_indices))


@hookimpl
def register_methods(register):
    register(TrainableTokens())
