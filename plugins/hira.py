"""HiRA: a high-rank update, the Hadamard product of the frozen weight with a trained low-rank matrix (Huang et al., 2025)."""

from __future__ import annotations

from pydantic import Field

from autopeft import Capabilities, PeftMethod, SearchSpace, Targeted, hookimpl, peft_task_type


class HiraSettings(Targeted):
    r: int = Field(default=32, ge=1, le=4096, description="rank of the matrix multiplied element-wise into "
                                                          "the weight")
    dropout: float = Field(default=0.0, ge=0, lt=1, description="dropout on the adapter's input")


class HiRA(PeftMethod):
    name = "hira"
    family = "low-rank"
    description = "Hadamard high-rank update W0 ⊙ (B·A): LoRA's parameters, a full-rank change, mergeable."
    peft_type = "HIRA"
    capabilities = Capabilities(merge=True, quantized=True, multi_adapter=True, lora_convertible=False)
    # PEFT's MetaMathQA comparison: r=32 on q/v at 4.5e-3
    search_space = SearchSpace(learning_rate=(2e-3, 4.5e-3, 1e-2), settings={"r": (16, 32, 64)},
                               task_learning_rate={"seq-cls": (4.5e-3, 1e-2, 2e-2)})
    Settings = HiraSettings

    def peft_config(self, settings, task):
        from peft import HiraConfig

        return HiraConfig(task_type=peft_task_type(task), r=settings.r, hira_dropout=settings.dropout,
                          target_modules=settings.target_modules)


@hookimpl
def register_methods(register):
    register(HiRA())
