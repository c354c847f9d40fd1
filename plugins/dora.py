"""DoRA: weight-decomposed LoRA, a trained magnitude vector times a LoRA-updated direction (Liu et al., 2024)."""

from __future__ import annotations

from autopeft import hookimpl
from autopeft.method import Capabilities

from .lora import LoRA


class DoRA(LoRA):
    name = "dora"
    description = "LoRA on the direction of each weight plus a trained magnitude; closer to full fine-tuning."
    capabilities = Capabilities(merge=True, quantized=True, multi_adapter=True, lora_convertible=True)
    variant_flags = {"use_dora": True, "use_rslora": False}

    def lora_kwargs(self, settings):
        return {"use_dora": True}


@hookimpl
def register_methods(register):
    register(DoRA())
