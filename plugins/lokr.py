"""LoKr: the update is a Kronecker product of a small and a low-rank matrix (LyCORIS; Edalati et al., 2022)."""

from __future__ import annotations

from pydantic import Field

from autopeft import Capabilities, LowRank, PeftMethod, SearchSpace, hookimpl, peft_task_type


class LoKrSettings(LowRank):
    decompose_factor: int = Field(default=-1, description="Kronecker factor size; -1 picks the most square split")


class LoKr(PeftMethod):
    name = "lokr"
    family = "lycoris"
    description = "Kronecker product of a small dense and a low-rank matrix: high rank, few parameters."
    peft_type = "LOKR"
    capabilities = Capabilities(merge=True, quantized=False, multi_adapter=True, lora_convertible=True)
    search_space = SearchSpace(learning_rate=(5e-4, 1e-3, 3e-3), settings={"r": (8, 32)})
    Settings = LoKrSettings

    def peft_config(self, settings, task):
        from peft import LoKrConfig

        return LoKrConfig(task_type=peft_task_type(task), r=settings.r, alpha=settings.alpha,
                          module_dropout=settings.dropout, decompose_factor=settings.decompose_factor,
                          target_modules=settings.target_modules)


@hookimpl
def register_methods(register):
    register(LoKr())
