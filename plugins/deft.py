"""DEFT: a learned low-rank subspace is projected out of each frozen weight and a trained update injected in its place (Decompositional Efficient Fine-Tuning, NeurIPS 2025)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from autopeft import Capabilities, PeftMethod, SearchSpace, Targeted, hookimpl, peft_task_type


class DeftSettings(Targeted):
    r: int = Field(default=32, ge=1, le=4096, description="rank of the removed subspace and of the injected update")
    decomposition: Literal["relu", "qr"] = Field(
        default="relu", description="how the projector is made from P: 'relu' (P·relu(P)ᵀ) or 'qr' (orthogonal)")
    alpha: int | None = Field(default=128, ge=1, description="the injected update is scaled by alpha / r; "
                                                             "None: unscaled")
    para: bool = Field(default=False, description="PaRa: subspace removal only, no injected update")
    dropout: float = Field(default=0.0, ge=0, lt=1, description="dropout on the adapter's input")


class DeFT(PeftMethod):
    name = "deft"
    family = "subspace"
    description = "Projects a learned rank-r subspace out of each frozen weight and injects a trained update."
    peft_type = "DEFT"
    capabilities = Capabilities(merge=True, quantized=False, multi_adapter=True, lora_convertible=False)
    # PEFT's MetaMathQA comparison: r=32 on q/v, relu projector, alpha 128, at 1e-4
    search_space = SearchSpace(learning_rate=(5e-5, 1e-4, 3e-4), settings={"r": (16, 32, 64)},
                               task_learning_rate={"seq-cls": (1e-4, 3e-4, 1e-3)})
    Settings = DeftSettings

    def peft_config(self, settings, task):
        from peft import DeftConfig

        return DeftConfig(task_type=peft_task_type(task), r=settings.r, decomposition_method=settings.decomposition,
                          alpha=settings.alpha, para=settings.para, deft_dropout=settings.dropout,
                          target_modules=settings.target_modules)


@hookimpl
def register_methods(register):
    register(DeFT())
