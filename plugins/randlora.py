"""RandLoRA: full-rank updates from many frozen random low-rank bases with trained scalings (Albert et al., 2025)."""

from __future__ import annotations

from pydantic import Field

from autopeft import Capabilities, PeftMethod, SearchSpace, Targeted, hookimpl, peft_task_type


class RandLoraSettings(Targeted):
    r: int = Field(default=32, ge=1, description="rank of each random basis")
    alpha: float = Field(default=640, gt=0)
    dropout: float = Field(default=0.0, ge=0, lt=1)


class RandLoRA(PeftMethod):
    name = "randlora"
    family = "random-projection"
    description = "Sum of frozen random bases with trained diagonal scalings: full-rank, parameter-light."
    peft_type = "RANDLORA"
    capabilities = Capabilities(merge=True, quantized=True, multi_adapter=True, lora_convertible=True)
    search_space = SearchSpace(learning_rate=(1e-4, 5e-4, 2e-3),
                               task_learning_rate={"seq-cls": (1e-4, 2e-4, 5e-4)})
    Settings = RandLoraSettings
    probe_settings = {"r": 8}

    def peft_config(self, settings, task):
        from peft import RandLoraConfig

        return RandLoraConfig(task_type=peft_task_type(task), r=settings.r, randlora_alpha=settings.alpha,
                              randlora_dropout=settings.dropout, target_modules=settings.target_modules)


@hookimpl
def register_methods(register):
    register(RandLoRA())
