"""QA-LoRA: quantisation-aware LoRA, whose A acts on group-pooled inputs so that it merges into a GPTQ base's
group offsets (Xu et al., 2023)."""

from __future__ import annotations

from pydantic import Field

from autopeft import BadInputError, Capabilities, LowRank, SearchSpace, hookimpl, on_meta_device

from .lora import LoRA


class QALoraSettings(LowRank):
    group_size: int = Field(default=32, ge=1, description="inputs pooled per group; must divide every target "
                                                          "layer's input size (the GPTQ group size)")


class QALoRA(LoRA):
    name = "qalora"
    aliases = ("qa-lora",)
    description = "LoRA on group-pooled inputs of a GPTQ 4-bit base, mergeable into it without leaving 4 bits."
    capabilities = Capabilities(merge=False, quantized=True, multi_adapter=True, lora_convertible=False)
    search_space = SearchSpace(learning_rate=(1e-4, 3e-4, 1e-3), settings={"r": (16, 32, 64)})
    Settings = QALoraSettings

    def unavailable_reason(self):
        """PEFT implements QA-LoRA for GPTQ-quantised layers only; autopeft quantises with bitsandbytes."""
        import torch

        if not torch.cuda.is_available():
            return "QA-LoRA trains on a GPTQ-quantised base, which needs a CUDA GPU; this machine has none"
        return ("QA-LoRA trains on GPTQ-quantised layers only (PEFT implements it for no other), and autopeft "
                "quantises bases with bitsandbytes")

    def lora_kwargs(self, settings):
        return {"use_qalora": True, "qalora_group_size": settings.group_size}

    def build_from_peft_config(self, model, peft_config):
        # on any other layer PEFT ignores use_qalora and trains plain LoRA, under QA-LoRA's name
        if on_meta_device(model) or not any(type(m).__name__ == "QuantLinear" for m in model.modules()):
            raise BadInputError("QA-LoRA trains on GPTQ-quantised layers only; this model has none")
        return super().build_from_peft_config(model, peft_config)


@hookimpl
def register_methods(register):
    register(QALoRA())
