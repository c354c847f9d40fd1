"""BitFit: train only the bias terms (and a classification head), freeze everything else."""

from __future__ import annotations

from pydantic import Field

import autopeft
from autopeft import Capabilities, Method, MethodSettings, SearchSpace

#: names of task heads that must train for classification (their weights start random)
HEAD_NAMES = ("classifier", "score")


class BitFitSettings(MethodSettings):
    train_head: bool = Field(default=True, description="also train the classification head (seq-cls, token-cls)")


class BitFit(Method):
    name = "bitfit"
    family = "bias"
    description = "Trains only bias terms (and the task head); no new parameters, tiny adapters."
    layer_types = ("linear", "layernorm")
    capabilities = Capabilities(merge=True, quantized=False, multi_adapter=False, lora_convertible=False)
    search_space = SearchSpace(learning_rate=(1e-4, 1e-3, 5e-3))
    Settings = BitFitSettings

    def build(self, model, settings, task):
        trainable = 0
        for name, param in model.named_parameters():
            is_head = task != "causal-lm" and settings.train_head and name.split(".")[0] in HEAD_NAMES
            param.requires_grad_(name.endswith(".bias") or is_head)
            trainable += param.requires_grad
        if trainable == 0:
            raise ValueError("this model has no bias terms, so BitFit has nothing to train")
        return model


@autopeft.hookimpl
def register_methods(register):
    register(BitFit())
