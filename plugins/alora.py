"""aLoRA: activated LoRA, on only from an invocation sequence on, so the prompt's KV cache is the base model's
(Greenewald et al., 2025)."""

from __future__ import annotations

import functools

from pydantic import Field

from autopeft import BadInputError, Capabilities, LowRank, SearchSpace, hookimpl, on_meta_device

from .lora import LoRA
from .lora_init import require_batches

#: the longest invocation read off the data, in tokens
LONGEST_INVOCATION = 16


class AloraSettings(LowRank):
    invocation_tokens: list[int] | None = Field(
        default=None, description="token ids after whose last occurrence the adapter is active; None: the tokens "
                                  "every sampled prompt ends with (the template's answer header, e.g. "
                                  "'### Response:' or the chat template's assistant turn)")


class ALoRA(LoRA):
    name = "alora"
    aliases = ("activated-lora",)
    description = ("LoRA active only from the answer's invocation on: the prompt's KV cache stays the base model's, "
                   "so switching adapters skips prefill.")
    tasks = ("causal-lm",)
    # applied to some tokens only, so it cannot be merged into the weights
    capabilities = Capabilities(merge=False, quantized=True, multi_adapter=True, lora_convertible=True)
    search_space = SearchSpace(learning_rate=(1e-4, 3e-4, 1e-3), settings={"r": (8, 16, 32)})
    Settings = AloraSettings
    #: one batch, to read the invocation off the prompts (or check the one given occurs)
    data_batches = 1

    def lora_kwargs(self, settings):
        return {"alora_invocation_tokens": list(settings.invocation_tokens or [0])}

    def build(self, model, settings, task, batches=None):
        if on_meta_device(model):
            # shapes only; the trace takes the adapter as active on every token (the most it can cost)
            net = super().build(model, settings, task)
            return _active_everywhere(net)
        batches = require_batches(self, batches)
        tokens = settings.invocation_tokens or invocation_of(batches)
        if not any(_occurs(tokens, row) for b in batches for row in _rows(b)):
            raise BadInputError(f"aLoRA's invocation tokens {tokens} occur in none of the sampled training examples: "
                                "the adapter would never be active")
        return super().build(model, settings.model_copy(update={"invocation_tokens": tokens}), task)


def invocation_of(batches: list) -> list[int]:
    """The tokens every prompt in ``batches`` ends with (the prompt: the tokens before the first one the
    loss counts), at most LONGEST_INVOCATION, that occur in no answer: the answer header of the data's
    template. A BadInputError when there is none, as with plain text or free-form prompts."""
    prompts, answers = [], []
    for batch in batches:
        for ids, labels in zip(_rows(batch), _row_labels(batch)):
            supervised = [i for i, label in enumerate(labels) if label != -100]
            if not supervised or supervised[0] == 0:
                raise BadInputError("aLoRA needs prompt-answer data (alpaca, chat or prompt-completion) whose prompts "
                                    "end in a fixed invocation, or invocation_tokens set: a sampled example is "
                                    "trained on from its first token")
            prompts.append(ids[:supervised[0]])
            answers.append(ids[supervised[0]:])
    length = 0
    while (length < min(LONGEST_INVOCATION, *map(len, prompts))
           and len({p[-length - 1] for p in prompts}) == 1):
        length += 1
    tokens = prompts[0][len(prompts[0]) - length:]
    if length < 2 or any(_occurs(tokens, a) for a in answers):
        raise BadInputError("aLoRA: the sampled prompts end in no common invocation of two or more tokens that the "
                            "answers lack; set invocation_tokens (the ids of the string that starts an answer)")
    return tokens


def _rows(batch) -> list[list[int]]:
    mask = batch["attention_mask"].bool()
    return [ids[m].tolist() for ids, m in zip(batch["input_ids"], mask)]


def _row_labels(batch) -> list[list[int]]:
    mask = batch["attention_mask"].bool()
    return [labels[m].tolist() for labels, m in zip(batch["labels"], mask)]


def _occurs(tokens: list[int], row: list[int]) -> bool:
    n = len(tokens)
    return any(row[i:i + n] == tokens for i in range(len(row) - n + 1))


def _active_everywhere(net):
    """On meta, PEFT cannot search the (valueless) inputs for the invocation: give the offsets that
    make the adapter active on every token."""
    original = net.forward

    @functools.wraps(original)
    def forward(*args, input_ids=None, **kwargs):
        if input_ids is not None and kwargs.get("alora_offsets") is None:
            kwargs["alora_offsets"] = [input_ids.shape[-1]] * input_ids.shape[0]
        return original(*args, input_ids=input_ids, **kwargs)

    net.forward = forward
    return net


@hookimpl
def register_methods(register):
    register(ALoRA())
