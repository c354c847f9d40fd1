"""C3A: the update is a block-circulant matrix applied by FFT-based circular convolution (Chen et al., 2025)."""

from __future__ import annotations

from pydantic import Field

from autopeft import hookimpl
from autopeft.method import Capabilities, PeftMethod, SearchSpace, peft_task_type
from autopeft.settings import Targeted


class C3ASettings(Targeted):
    block_size: int = Field(default=256, ge=1, description="must divide the in and out sizes of targeted layers; "
                                                          "left unset, the largest size up to 256 that does")


class C3A(PeftMethod):
    name = "c3a"
    family = "frequency"
    description = "Block-circulant updates computed by FFT convolution: full-rank-capable, few parameters."
    peft_type = "C3A"
    capabilities = Capabilities(merge=True, quantized=False, multi_adapter=True, lora_convertible=True)
    search_space = SearchSpace(learning_rate=(1e-2, 3e-2, 1e-1), settings={"block_size": (64, 256)})
    Settings = C3ASettings

    def build(self, model, settings, task):
        if "block_size" not in settings.model_fields_set:
            settings = settings.model_copy(update={"block_size": _fitting_block_size(model, settings.block_size)})
        return super().build(model, settings, task)

    def peft_config(self, settings, task):
        from peft import C3AConfig

        return C3AConfig(task_type=peft_task_type(task), block_size=settings.block_size,
                         target_modules=settings.target_modules)


def _fitting_block_size(model, wanted: int) -> int:
    """The largest block size up to ``wanted`` that divides every linear layer's sizes in the model's
    blocks (MiniLM's 384 takes 192, Llama-3's 3072/8192/1024 keep 256)."""
    import math

    import torch

    common = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and not name.endswith(("lm_head", "classifier", "score")):
            common = math.gcd(common, module.in_features, module.out_features)
    if common == 0:
        return wanted
    return max(d for d in range(1, min(wanted, common) + 1) if common % d == 0)


@hookimpl
def register_methods(register):
    register(C3A())
