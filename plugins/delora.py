"""DeLoRA: a low-rank update normalised and scaled to a learned bound on its norm, decoupling angle from strength (Bini et al., 2025)."""

from __future__ import annotations

from pydantic import Field

from autopeft import Capabilities, PeftMethod, SearchSpace, Targeted, hookimpl, peft_task_type


class DeloraSettings(Targeted):
    r: int = Field(default=32, ge=1, le=4096, description="rank of the update")
    delora_lambda: int = Field(default=15, ge=1, description="initial bound on the update's Frobenius norm "
                                                             "(trained per layer)")
    module_dropout: float = Field(default=0.0, ge=0, lt=1, description="probability of skipping a layer's "
                                                                       "adapter in a training step")


class DeLoRA(PeftMethod):
    name = "delora"
    family = "low-rank"
    description = "Normalised low-rank update with a trained norm bound: LoRA that resists drifting too far."
    peft_type = "DELORA"
    capabilities = Capabilities(merge=True, quantized=False, multi_adapter=True, lora_convertible=True)
    # PEFT's MetaMathQA comparison: r=32, lambda 15 on q/v at 1e-3
    search_space = SearchSpace(learning_rate=(3e-4, 1e-3, 3e-3), settings={"r": (16, 32)},
                               task_learning_rate={"seq-cls": (1e-3, 3e-3, 1e-2)})
    Settings = DeloraSettings

    def peft_config(self, settings, task):
        from peft import DeloraConfig

        return DeloraConfig(task_type=peft_task_type(task), r=settings.r, delora_lambda=settings.delora_lambda,
                            module_dropout=settings.module_dropout, target_modules=settings.target_modules)


@hookimpl
def register_methods(register):
    register(DeLoRA())
