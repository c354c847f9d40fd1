"""VB-LoRA: LoRA factors composed from a shared bank of vectors by top-k mixing (Li et al., 2024)."""

from __future__ import annotations

from pydantic import Field

from autopeft import (Capabilities, PeftMethod, SearchSpace, Targeted, divisor_of_layer_sizes, hookimpl,
                      peft_task_type)


class VBLoRASettings(Targeted):
    r: int = Field(default=4, ge=1)
    num_vectors: int = Field(default=256, ge=1, description="vectors in the shared bank")
    vector_length: int = Field(default=256, ge=1, description="must divide the hidden sizes of targeted layers; "
                                                             "left unset, the largest up to 256 that does")
    topk: int = Field(default=2, ge=1)
    dropout: float = Field(default=0.0, ge=0, lt=1)


class VBLoRA(PeftMethod):
    name = "vblora"
    aliases = ("vb-lora",)
    family = "random-projection"
    description = "LoRA factors assembled from one shared vector bank: adapters a fraction of LoRA's size."
    peft_type = "VBLORA"
    capabilities = Capabilities(merge=True, quantized=False, multi_adapter=True, lora_convertible=True)
    search_space = SearchSpace(learning_rate=(1e-3, 4e-3, 1e-2))
    Settings = VBLoRASettings
    probe_settings = {"vector_length": 16, "num_vectors": 32}

    def settings_for_model(self, model, settings):
        if "vector_length" in settings.model_fields_set:
            return settings
        return settings.model_copy(update={"vector_length": divisor_of_layer_sizes(model, settings.vector_length)})

    def build(self, model, settings, task):
        return super().build(model, self.settings_for_model(model, settings), task)

    def peft_config(self, settings, task):
        from peft import VBLoRAConfig

        return VBLoRAConfig(task_type=peft_task_type(task), r=settings.r, num_vectors=settings.num_vectors,
                            vector_length=settings.vector_length, topk=settings.topk,
                            vblora_dropout=settings.dropout, target_modules=settings.target_modules)


@hookimpl
def register_methods(register):
    register(VBLoRA())
