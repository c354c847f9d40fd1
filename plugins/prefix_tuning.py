"""Prefix tuning: learned key/value prefixes prepended in every attention layer (Li & Liang, 2021)."""

from __future__ import annotations

from pydantic import Field

from autopeft import Capabilities, PeftMethod, PromptSettings, SearchSpace, hookimpl, peft_task_type


class PrefixSettings(PromptSettings):
    projection: bool = Field(default=False, description="reparameterise the prefix through an MLP while training")


class PrefixTuning(PeftMethod):
    name = "prefix_tuning"
    aliases = ("prefix-tuning", "prefix")
    family = "prompt"
    description = "Learned key/value prefixes in every attention layer; nothing in the weights changes."
    peft_type = "PREFIX_TUNING"
    # PEFT feeds the prefixes to a classifier as past key values, which no classifier of transformers
    # 5.24+ accepts (PEFT refuses them: "Model does not support past key values"): causal LM only
    tasks = ("causal-lm",)
    layer_types = ("attention",)
    capabilities = Capabilities(merge=False, quantized=True, multi_adapter=True, lora_convertible=False)
    search_space = SearchSpace(learning_rate=(1e-3, 5e-3, 1e-2))
    Settings = PrefixSettings
    probe_settings = {"num_virtual_tokens": 4}

    def peft_config(self, settings, task):
        from peft import PrefixTuningConfig

        return PrefixTuningConfig(task_type=peft_task_type(task), num_virtual_tokens=settings.num_virtual_tokens,
                                  prefix_projection=settings.projection)


@hookimpl
def register_methods(register):
    register(PrefixTuning())
