"""DoRA: weight-decomposed LoRA, a trained magnitude vector times a LoRA-updated direction (Liu et al., 2024)."""

from __future__ import annotations

from autopeft import Capabilities, SearchSpace, hookimpl

from .lora import LoRA


class DoRA(LoRA):
    name = "dora"
    description = "LoRA on the direction of each weight plus a trained magnitude; closer to full fine-tuning."
    capabilities = Capabilities(merge=True, quantized=True, multi_adapter=True, lora_convertible=True)
    search_space = SearchSpace(learning_rate=(1e-4, 3e-4, 1e-3), settings={"r": (8, 16, 32)},
                               task_learning_rate={"seq-cls": (3e-4, 1e-3, 3e-3)})

    def lora_kwargs(self, settings):
        return {"use_dora": True}


@hookimpl
def register_methods(register):
    register(DoRA())
