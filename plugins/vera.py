"""VeRA: frozen random low-rank matrices shared by all layers, with trained per-layer scaling vectors (Kopiczko et al., 2024)."""

from __future__ import annotations

from pydantic import Field

from autopeft import Capabilities, PeftMethod, SearchSpace, Targeted, hookimpl, peft_task_type


class VeraSettings(Targeted):
    r: int = Field(default=256, ge=1, description="rank of the shared random projections")
    dropout: float = Field(default=0.0, ge=0, lt=1)


class VeRA(PeftMethod):
    name = "vera"
    family = "random-projection"
    description = "Shared frozen random matrices, trained scaling vectors: tiny adapters, high ranks."
    peft_type = "VERA"
    capabilities = Capabilities(merge=True, quantized=True, multi_adapter=True, lora_convertible=True)
    search_space = SearchSpace(learning_rate=(1e-3, 4e-3, 1e-2), settings={"r": (256, 1024)},
                               task_learning_rate={"seq-cls": (4e-3, 1e-2, 3e-2)})
    Settings = VeraSettings
    probe_settings = {"r": 8}

    def peft_config(self, settings, task):
        from peft import VeraConfig

        return VeraConfig(task_type=peft_task_type(task), r=settings.r, vera_dropout=settings.dropout,
                          target_modules=settings.target_modules)


@hookimpl
def register_methods(register):
    register(VeRA())
