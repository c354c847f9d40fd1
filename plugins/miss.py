"""MiSS: matrix shard sharing, one trained shard expanded over each weight (Kang et al., 2024)."""

from __future__ import annotations

from pydantic import Field

from autopeft import Capabilities, PeftMethod, SearchSpace, Targeted, hookimpl, peft_task_type


class MissSettings(Targeted):
    r: int = Field(default=64, ge=1, description="shard size")
    dropout: float = Field(default=0.0, ge=0, lt=1)


class MiSS(PeftMethod):
    name = "miss"
    family = "shard"
    description = "One trained shard shared across each weight's blocks: LoRA-like quality, less memory."
    peft_type = "MISS"
    capabilities = Capabilities(merge=True, quantized=False, multi_adapter=True, lora_convertible=True)
    search_space = SearchSpace(learning_rate=(1e-4, 5e-4, 2e-3), settings={"r": (32, 64)})
    Settings = MissSettings
    probe_settings = {"r": 8}

    def peft_config(self, settings, task):
        from peft import MissConfig

        return MissConfig(task_type=peft_task_type(task), r=settings.r, miss_dropout=settings.dropout,
                          target_modules=settings.target_modules)


@hookimpl
def register_methods(register):
    register(MiSS())
