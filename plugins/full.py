"""Full fine-tuning: every weight trained with AdamW; the quality ceiling and the memory worst case."""

from __future__ import annotations

from autopeft import Capabilities, Method, SearchSpace, hookimpl


class FullFineTuning(Method):
    name = "full"
    aliases = ("full-finetuning", "full_finetuning", "fft")
    family = "full"
    description = "Trains every weight; the reference point for quality, and the most memory."
    layer_types = ("all",)
    capabilities = Capabilities(merge=True, quantized=False, multi_adapter=False, lora_convertible=False)
    search_space = SearchSpace(learning_rate=(1e-5, 3e-5, 1e-4))

    def build(self, model, settings, task):
        for param in model.parameters():
            param.requires_grad_(True)
        return model


@hookimpl
def register_methods(register):
    register(FullFineTuning())
