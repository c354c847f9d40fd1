"""GaLore: full-weight training whose AdamW moments live in a low-rank projection of each gradient (Zhao et al., 2024).

Every weight is trained, but for each 2-D weight the optimizer keeps its moments in an r-dimensional
subspace of the gradient, refreshed by SVD every ``update_proj_gap`` steps. Memory: full weights and
gradients, but optimizer state of rank r instead of full size.
"""

from __future__ import annotations

from pydantic import Field

from autopeft import Capabilities, Method, MethodSettings, SearchSpace, hookimpl


class GaLoreSettings(MethodSettings):
    rank: int = Field(default=128, ge=1, description="rank of the gradient projection")
    update_proj_gap: int = Field(default=200, ge=1, description="steps between SVD refreshes of the projection")
    scale: float = Field(default=0.25, gt=0, description="scale applied to the projected-back update")


class GaLore(Method):
    name = "galore"
    family = "full"
    description = "Trains every weight with AdamW moments kept in a low-rank gradient subspace: full-rank updates, less optimizer memory."
    layer_types = ("linear",)
    capabilities = Capabilities(merge=True, quantized=False, multi_adapter=False, lora_convertible=False)
    search_space = SearchSpace(learning_rate=(1e-5, 5e-5, 2e-4), settings={"rank": (64, 128)},
                               task_learning_rate={"seq-cls": (5e-5, 2e-4, 5e-4)})
    Settings = GaLoreSettings
    probe_settings = {"rank": 4}

    def build(self, model, settings, task):
        for param in model.parameters():
            param.requires_grad_(True)
        return model

    def optimizer(self, model, settings, *, learning_rate, weight_decay=0.0):
        from ._galore_optim import GaLoreAdamW

        projected, regular = split_params(model)
        groups = [
            {"params": regular},
            {"params": projected, "rank": settings.rank, "update_proj_gap": settings.update_proj_gap,
             "scale": settings.scale},
        ]
        return GaLoreAdamW([g for g in groups if g["params"]], lr=learning_rate, weight_decay=weight_decay)

    def optimizer_state_bytes(self, model, settings):
        projected, regular = split_params(model)
        total = sum(2 * p.numel() * p.element_size() for p in regular)
        for p in projected:
            m, n = p.shape
            r = min(settings.rank, m, n)
            # two moments of the projected gradient plus the projection matrix itself
            total += (2 * r * max(m, n) + r * min(m, n)) * p.element_size()
        return total


def split_params(model):
    """2-D weights inside the transformer blocks get projected; embeddings, heads, norms and biases do not."""
    projected, regular = [], []
    seen = set()
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        if param.ndim == 2 and "embed" not in name and "lm_head" not in name and "classifier" not in name:
            projected.append(param)
        else:
            regular.append(param)
    return projected, regular


@hookimpl
def register_methods(register):
    register(GaLore())
