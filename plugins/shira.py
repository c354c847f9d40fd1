"""SHiRA: train a sparse, fixed subset (about 1-2%) of each weight's entries directly (Bhardwaj et al., 2024)."""

from __future__ import annotations

from pydantic import Field

from autopeft import Capabilities, PeftMethod, SearchSpace, Targeted, hookimpl, peft_task_type


class ShiraSettings(Targeted):
    r: int = Field(default=32, ge=1, description="trains r*(in+out) entries per weight, as many as LoRA of rank r")
    mask_type: str = Field(default="random", description="how entries are chosen (PEFT's mask types)")
    random_seed: int | None = Field(default=42)


class SHiRA(PeftMethod):
    name = "shira"
    family = "sparse"
    description = "Trains a sparse subset of each weight directly; fast adapter switching, no inference cost."
    peft_type = "SHIRA"
    capabilities = Capabilities(merge=True, quantized=False, multi_adapter=True, lora_convertible=False)
    search_space = SearchSpace(learning_rate=(1e-4, 3e-4, 1e-3),
                               task_learning_rate={"seq-cls": (3e-4, 1e-3, 3e-3)})
    Settings = ShiraSettings
    probe_settings = {"r": 4}

    def peft_config(self, settings, task):
        from peft import ShiraConfig

        return ShiraConfig(task_type=peft_task_type(task), r=settings.r, mask_type=settings.mask_type,
                           random_seed=settings.random_seed, target_modules=settings.target_modules)

    def build_from_peft_config(self, model, peft_config):
        if any(p.is_meta for p in model.parameters()):
            # SHiRA turns its mask into indices with torch.where, which meta tensors cannot answer;
            # a mask with the same number of entries, made on the CPU, gives the same shapes
            peft_config.mask_fn = _mask_of_the_right_size
            return _dense_deltas(super().build_from_peft_config(model, peft_config))
        return super().build_from_peft_config(model, peft_config)


def _mask_of_the_right_size(base_layer, r, **kwargs):
    import torch

    out_features, in_features = base_layer.weight.shape
    mask = torch.zeros(out_features * in_features)
    mask[: r * (in_features + out_features)] = 1.0
    return mask.view(out_features, in_features)


def _dense_deltas(model):
    """Meta tensors have no sparse kernels, so on meta each SHiRA layer builds its delta densely instead:
    the forward keeps the same tensors (the input and a dense copy of the updated weight)."""
    import types

    from peft.tuners.shira.layer import ShiraLayer

    for module in model.modules():
        if isinstance(module, ShiraLayer):
            module.get_delta_weight = types.MethodType(_dense_delta_weight, module)
    return model


def _dense_delta_weight(layer, adapter):
    import torch

    rows, cols = layer.shira_indices[adapter].to(layer.shira_weight[adapter].device)
    values = layer.shira_weight[adapter] * layer.scaling[adapter]
    flat = torch.zeros(layer.out_features * layer.in_features, dtype=values.dtype, device=values.device)
    return flat.index_add(0, rows * layer.in_features + cols, values).view(layer.out_features, layer.in_features)


@hookimpl
def register_methods(register):
    register(SHiRA())
