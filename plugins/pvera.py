"""PVeRA: VeRA with a probabilistic bottleneck, sampled while training (arXiv:2512.07703, 2025)."""

from __future__ import annotations

from pydantic import Field

from autopeft import Capabilities, PeftMethod, SearchSpace, Targeted, hookimpl, peft_task_type


class PveraSettings(Targeted):
    r: int = Field(default=256, ge=1, description="rank of the shared random projections")
    dropout: float = Field(default=0.0, ge=0, lt=1)
    d_initial: float = Field(default=0.1, gt=0, description="initial value of the trained scaling vector d")


class PVeRA(PeftMethod):
    name = "pvera"
    family = "random-projection"
    description = "Probabilistic VeRA: shared frozen random matrices, trained scaling vectors sampled while training."
    peft_type = "PVERA"
    capabilities = Capabilities(merge=True, quantized=True, multi_adapter=True, lora_convertible=False)
    # PEFT's MetaMathQA comparison trains r=256 on q/v at 3e-3
    search_space = SearchSpace(learning_rate=(1e-3, 3e-3, 1e-2), settings={"r": (64, 256)},
                               task_learning_rate={"seq-cls": (4e-3, 1e-2, 3e-2)})
    Settings = PveraSettings
    probe_settings = {"r": 8}

    def peft_config(self, settings, task):
        from peft import PveraConfig

        return PveraConfig(task_type=peft_task_type(task), r=settings.r, pvera_dropout=settings.dropout,
                           d_initial=settings.d_initial, target_modules=settings.target_modules)


@hookimpl
def register_methods(register):
    register(PVeRA())
