"""Lily: low-rank adapters with projectors shared across layers and a router mixing them (Zhong et al., 2025)."""

from __future__ import annotations

from pydantic import Field

from autopeft import Capabilities, PeftMethod, SearchSpace, Targeted, hookimpl, peft_task_type


class LilySettings(Targeted):
    r: int = Field(default=32, ge=1)
    stride_A: int = Field(default=1, ge=1, description="layers that share one A projector")
    num_B: int = Field(default=2, ge=1, description="shared B experts mixed by the router")
    scaling: float = Field(default=1.0, gt=0)


class Lily(PeftMethod):
    name = "lily"
    family = "low-rank"
    description = "Low-rank adapters whose up-projections are shared experts mixed per layer: higher rank per parameter."
    peft_type = "LILY"
    capabilities = Capabilities(merge=False, quantized=False, multi_adapter=True, lora_convertible=False)
    search_space = SearchSpace(learning_rate=(1e-4, 5e-4, 2e-3))
    Settings = LilySettings
    probe_settings = {"r": 8}

    def peft_config(self, settings, task):
        from peft import LilyConfig

        return LilyConfig(task_type=peft_task_type(task), r=settings.r, stride_A=settings.stride_A,
                          num_B=settings.num_B, scaling=settings.scaling, target_modules=settings.target_modules)


@hookimpl
def register_methods(register):
    register(Lily())
