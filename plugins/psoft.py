"""PSOFT: an orthogonal (Cayley) rotation trained inside each weight's principal subspace, with two scaling vectors (Efficient Orthogonal Fine-Tuning with Principal Subspace Adaptation, ICLR 2026)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from autopeft import Capabilities, PeftMethod, SearchSpace, Targeted, hookimpl, peft_task_type


class PsoftSettings(Targeted):
    r: int = Field(default=256, ge=1, le=4096, description="rank of the principal subspace rotated; at most the "
                                                           "targeted layers' smaller size (left unset, the "
                                                           "largest up to 256 that fits)")
    alpha: int | None = Field(default=None, ge=1, description="the update is scaled by alpha / r; None: alpha = r")
    dropout: float = Field(default=0.0, ge=0, lt=1, description="dropout on the adapter's input")
    svd: Literal["full", "lowrank"] = Field(default="full", description="how the principal subspace is found: "
                                                                        "exact SVD, or faster randomised SVD")


class PSOFT(PeftMethod):
    name = "psoft"
    family = "orthogonal"
    description = "Orthogonal rotation within each weight's principal rank-r subspace plus scaling vectors."
    peft_type = "PSOFT"
    capabilities = Capabilities(merge=True, quantized=False, multi_adapter=True, lora_convertible=True)
    # PEFT's MetaMathQA comparison: r=256, alpha 256 on q/v at 1e-4
    search_space = SearchSpace(learning_rate=(1e-4, 3e-4, 1e-3), settings={"r": (128, 256)},
                               task_learning_rate={"seq-cls": (3e-4, 1e-3, 3e-3)})
    Settings = PsoftSettings
    probe_settings = {"r": 8}

    def settings_for_model(self, model, settings):
        if "r" in settings.model_fields_set:
            return settings
        return settings.model_copy(update={"r": min(settings.r, _smallest_layer_size(model))})

    def build(self, model, settings, task):
        return super().build(model, self.settings_for_model(model, settings), task)

    def peft_config(self, settings, task):
        from peft import PsoftConfig

        return PsoftConfig(task_type=peft_task_type(task), r=settings.r, psoft_alpha=settings.alpha or settings.r,
                           psoft_dropout=settings.dropout, psoft_svd=settings.svd,
                           target_modules=settings.target_modules)


def _smallest_layer_size(model) -> int:
    """The smallest in or out size of the linear layers in the model's blocks (heads excluded)."""
    import torch

    sizes = [min(m.in_features, m.out_features) for name, m in model.named_modules()
             if isinstance(m, torch.nn.Linear) and not name.endswith(("lm_head", "classifier", "score"))]
    return min(sizes, default=1 << 30)


@hookimpl
def register_methods(register):
    register(PSOFT())
