"""Cartridges: a trained key/value cache prefix in every attention layer (Eyuboglu et al., 2025)."""

from __future__ import annotations

from pydantic import Field, model_validator

from autopeft import Capabilities, PeftMethod, PromptSettings, SearchSpace, hookimpl, peft_task_type


class CartridgeSettings(PromptSettings):
    num_frozen_tokens: int = Field(default=1, ge=0, description="leading virtual tokens kept frozen "
                                                               "(the paper freezes one, an attention sink)")

    @model_validator(mode="after")
    def _frozen_within_virtual(self):
        if self.num_frozen_tokens >= self.num_virtual_tokens:
            raise ValueError(f"num_frozen_tokens ({self.num_frozen_tokens}) must be below num_virtual_tokens "
                             f"({self.num_virtual_tokens}), or nothing trains")
        return self


class Cartridge(PeftMethod):
    name = "cartridge"
    aliases = ("cartridges",)
    family = "prompt"
    description = "A trained KV-cache prefix in every attention layer, stored directly; nothing in the weights changes."
    peft_type = "CARTRIDGE"
    # PEFT feeds the cache to a classifier as past key values, which no classifier of transformers 5.24+
    # accepts (PEFT refuses them: "Model does not support past key values"): causal LM only
    tasks = ("causal-lm",)
    layer_types = ("attention",)
    capabilities = Capabilities(merge=False, quantized=True, multi_adapter=True, lora_convertible=False)
    # no PEFT comparison run: as prefix tuning without its projection, which the cartridge is, trained
    search_space = SearchSpace(learning_rate=(1e-3, 5e-3, 1e-2), settings={"num_virtual_tokens": (20, 50)})
    Settings = CartridgeSettings
    probe_settings = {"num_virtual_tokens": 4}

    def peft_config(self, settings, task):
        from peft import CartridgeConfig

        return CartridgeConfig(task_type=peft_task_type(task), num_virtual_tokens=settings.num_virtual_tokens,
                               num_frozen_tokens=settings.num_frozen_tokens)


@hookimpl
def register_methods(register):
    register(Cartridge())
