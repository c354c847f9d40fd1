"""LoRA-FA: LoRA with A frozen at its random init and only B trained, by a projected optimizer (Zhang et al., 2023)."""

from __future__ import annotations

from autopeft import SearchSpace, hookimpl

from .lora import LoRA


class LoraFA(LoRA):
    name = "lorafa"
    aliases = ("lora-fa",)
    description = "LoRA with A frozen: half the trainable parameters and no activations kept for A."
    search_space = SearchSpace(learning_rate=(1e-4, 3e-4, 1e-3), settings={"r": (16, 32)},
                               task_learning_rate={"seq-cls": (1e-3, 3e-3, 9e-3)})

    def recognises(self, config):
        return False  # the adapter file is plain LoRA; only the optimizer differs

    def build(self, model, settings, task):
        model = super().build(model, settings, task)
        return freeze_lora_a(model)

    def build_from_peft_config(self, model, peft_config):
        return freeze_lora_a(super().build_from_peft_config(model, peft_config))

    def optimizer(self, model, settings, *, learning_rate, weight_decay=0.0):
        from peft.optimizers import create_lorafa_optimizer

        return create_lorafa_optimizer(model, r=settings.r, lora_alpha=settings.alpha, lr=learning_rate,
                                       weight_decay=weight_decay)


def freeze_lora_a(model):
    for name, param in model.named_parameters():
        if "lora_A" in name:
            param.requires_grad_(False)
    return model


@hookimpl
def register_methods(register):
    register(LoraFA())
