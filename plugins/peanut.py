"""PEANuT: a small trained network, fed the frozen weight, computes each layer's update, nonlinearly (Zhong et al., 2025)."""

from __future__ import annotations

from pydantic import Field

from autopeft import Capabilities, PeftMethod, SearchSpace, Targeted, hookimpl, peft_task_type


class PeanutSettings(Targeted):
    r: int = Field(default=32, ge=1, le=4096, description="width of the update network's bottleneck")
    depth: int = Field(default=0, ge=0, le=16, description="hidden layers of the update network beyond its "
                                                           "encoder and decoder")
    act_fn: str = Field(default="relu", description="activation between its layers (a transformers "
                                                    "activation name)")
    scaling: float = Field(default=2.0, gt=0, description="the update is multiplied by this")


class PEANuT(PeftMethod):
    name = "peanut"
    family = "low-rank"
    description = "Weight-aware nonlinear updates from a small network on the frozen weight; mergeable."
    peft_type = "PEANUT"
    capabilities = Capabilities(merge=True, quantized=False, multi_adapter=True, lora_convertible=False)
    # PEFT's MetaMathQA comparison: r=32, depth 0, relu, scaling 2 on q/v at 1e-4
    search_space = SearchSpace(learning_rate=(1e-4, 3e-4, 1e-3), settings={"r": (8, 32)},
                               task_learning_rate={"seq-cls": (3e-4, 1e-3, 3e-3)})
    Settings = PeanutSettings

    def peft_config(self, settings, task):
        from peft import PeanutConfig

        return PeanutConfig(task_type=peft_task_type(task), r=settings.r, depth=settings.depth,
                            act_fn=settings.act_fn, scaling=settings.scaling, target_modules=settings.target_modules)


@hookimpl
def register_methods(register):
    register(PEANuT())
