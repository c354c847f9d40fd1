"""GraLoRA: granular LoRA, the weight split into k×k blocks each with its own low-rank adapter (Jung et al., 2025)."""

from __future__ import annotations

from pydantic import Field

from autopeft import Capabilities, LowRank, PeftMethod, SearchSpace, hookimpl, peft_task_type


class GraLoRASettings(LowRank):
    r: int = Field(default=32, ge=1, description="total rank, split over the k blocks")
    alpha: float = Field(default=64, gt=0)
    k: int = Field(default=2, ge=1, description="blocks per side; r must be divisible by k")


class GraLoRA(PeftMethod):
    name = "gralora"
    family = "low-rank"
    description = "LoRA split into k×k sub-blocks with their own adapters: LoRA's cost, more expressive at high rank."
    peft_type = "GRALORA"
    capabilities = Capabilities(merge=True, quantized=False, multi_adapter=True, lora_convertible=True)
    search_space = SearchSpace(learning_rate=(1e-4, 3e-4, 1e-3))
    Settings = GraLoRASettings
    probe_settings = {"r": 8}

    def peft_config(self, settings, task):
        from peft import GraloraConfig

        return GraloraConfig(task_type=peft_task_type(task), r=settings.r, alpha=settings.alpha,
                             gralora_k=settings.k, gralora_dropout=settings.dropout,
                             target_modules=settings.target_modules)


@hookimpl
def register_methods(register):
    register(GraLoRA())
