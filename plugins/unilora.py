"""Uni-LoRA: every layer's LoRA entries are drawn from one trained vector (arXiv:2506.00799, 2025)."""

from __future__ import annotations

from pydantic import Field

from autopeft import Capabilities, PeftMethod, SearchSpace, Targeted, hookimpl, peft_task_type


class UniLoraSettings(Targeted):
    r: int = Field(default=32, ge=1, description="rank of the LoRA matrices built from the shared vector")
    theta_d_length: int = Field(default=256, ge=1, description="length of the one trained vector (all that trains)")
    dropout: float = Field(default=0.0, ge=0, lt=1)


class UniLoRA(PeftMethod):
    name = "unilora"
    aliases = ("uni-lora",)
    family = "random-projection"
    description = "One small trained vector, projected into every layer's LoRA matrices: a fixed, tiny budget."
    peft_type = "UNILORA"
    capabilities = Capabilities(merge=True, quantized=False, multi_adapter=True, lora_convertible=True)
    # PEFT's MetaMathQA comparison trains r=32, a 256-long vector, on q/v at 1e-4, where it does not
    # learn (0.2% accuracy): 256 shared values want larger steps, so the range reaches well above
    search_space = SearchSpace(learning_rate=(1e-4, 2e-3, 2e-2), settings={"theta_d_length": (256, 1024)},
                               task_learning_rate={"seq-cls": (2e-3, 1e-2, 5e-2)})
    Settings = UniLoraSettings

    def peft_config(self, settings, task):
        from peft import UniLoraConfig

        return UniLoraConfig(task_type=peft_task_type(task), r=settings.r, theta_d_length=settings.theta_d_length,
                             unilora_dropout=settings.dropout, target_modules=settings.target_modules)


@hookimpl
def register_methods(register):
    register(UniLoRA())
