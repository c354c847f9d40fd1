"""Prefix tuning: learned key/value prefixes prepended in every attention layer (Li & Liang, 2021)."""

from __future__ import annotations

from pydantic import Field

from autopeft import hookimpl
from autopeft.methods.base import Capabilities, PeftMethod, SearchSpace, peft_task_type
from autopeft.methods.settings import PromptSettings


class PrefixSettings(PromptSettings):
    projection: bool = Field(default=False, description="reparameterise the prefix through an MLP while training")


class PrefixTuning(PeftMethod):
    name = "prefix_tuning"
    aliases = ("prefix-tuning", "prefix")
    family = "prompt"
    description = "Learned key/value prefixes in every attention layer; nothing in the weights changes."
    peft_type = "PREFIX_TUNING"
    layer_types = ("attention",)
    capabilities = Capabilities(merge=False, quantized=True, multi_adapter=True, lora_convertible=False)
    search_space = SearchSpace(learning_rate=(1e-3, 5e-3, 1e-2))
    Settings = PrefixSettings

    def build(self, model, settings, task):
        import inspect

        from autopeft.errors import BadInputError

        # PEFT feeds the prefixes to a classifier's backbone as past key values; encoders whose
        # forward no longer takes them (BERT since transformers 5.24) cannot be prefix-tuned
        backbone = getattr(model, "base_model", model)
        if task == "seq-cls" and "past_key_values" not in inspect.signature(backbone.forward).parameters:
            raise BadInputError(f"prefix tuning needs a model that accepts past key values, and "
                                f"{type(backbone).__name__} does not here; prompt_tuning or ptuning work instead")
        return super().build(model, settings, task)

    def peft_config(self, settings, task):
        from peft import PrefixTuningConfig

        return PrefixTuningConfig(task_type=peft_task_type(task), num_virtual_tokens=settings.num_virtual_tokens,
                                  prefix_projection=settings.projection)


@hookimpl
def register_methods(register):
    register(PrefixTuning())
