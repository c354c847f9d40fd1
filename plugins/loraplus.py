"""LoRA+: LoRA whose B matrices learn faster than A, a ratio set in the optimizer (Hayou et al., 2024)."""

from __future__ import annotations

from pydantic import Field

from autopeft import LowRank, SearchSpace, hookimpl

from .lora import LoRA


class LoraPlusSettings(LowRank):
    lr_ratio: float = Field(default=16.0, gt=0, description="learning rate of B divided by that of A")


class LoraPlus(LoRA):
    name = "loraplus"
    aliases = ("lora+", "lora-plus")
    description = "LoRA with a higher learning rate for B than for A; same adapter, faster training."
    search_space = SearchSpace(learning_rate=(2e-5, 5e-5, 2e-4), settings={"lr_ratio": (8.0, 16.0)},
                               task_learning_rate={"seq-cls": (5e-5, 2e-4, 5e-4)})
    Settings = LoraPlusSettings

    def recognises(self, config):
        return False  # the adapter file is plain LoRA; only the optimizer differs

    def optimizer(self, model, settings, *, learning_rate, weight_decay=0.0):
        import torch
        from peft.optimizers import create_loraplus_optimizer

        return create_loraplus_optimizer(model, optimizer_cls=torch.optim.AdamW, lr=learning_rate,
                                         loraplus_lr_ratio=settings.lr_ratio, weight_decay=weight_decay)


@hookimpl
def register_methods(register):
    register(LoraPlus())
