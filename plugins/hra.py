"""HRA: the frozen weight multiplied by a chain of r trained Householder reflections, an orthogonal update (Yuan et al., 2024)."""

from __future__ import annotations

from pydantic import Field

from autopeft import Capabilities, PeftMethod, SearchSpace, Targeted, hookimpl, peft_task_type


class HraSettings(Targeted):
    r: int = Field(default=8, ge=2, le=4096, multiple_of=2,
                   description="number of Householder reflections per layer (even: the identity start pairs them)")
    apply_GS: bool = Field(default=False, description="Gram-Schmidt orthogonalise the reflection vectors")


class HRA(PeftMethod):
    name = "hra"
    family = "orthogonal"
    description = "Chain of trained Householder reflections on each weight: orthogonal, few parameters, mergeable."
    peft_type = "HRA"
    capabilities = Capabilities(merge=True, quantized=False, multi_adapter=True, lora_convertible=False)
    # PEFT's MetaMathQA comparison has no HRA run: the range of the other orthogonal methods
    search_space = SearchSpace(learning_rate=(5e-5, 2e-4, 1e-3), settings={"r": (8, 16, 32)},
                               task_learning_rate={"seq-cls": (1e-3, 3e-3, 9e-3)})
    Settings = HraSettings

    def peft_config(self, settings, task):
        from peft import HRAConfig

        return HRAConfig(task_type=peft_task_type(task), r=settings.r, apply_GS=settings.apply_GS,
                         target_modules=settings.target_modules)


@hookimpl
def register_methods(register):
    register(HRA())
