"""rsLoRA: LoRA with rank-stabilised scaling alpha/sqrt(r), so higher ranks keep learning (Kalajdzievski, 2023)."""

from __future__ import annotations

from autopeft import SearchSpace, hookimpl

from .lora import LoRA


class RsLoRA(LoRA):
    name = "rslora"
    description = "LoRA scaled by alpha/sqrt(r) instead of alpha/r; higher ranks keep improving."
    search_space = SearchSpace(learning_rate=(5e-5, 1e-4, 3e-4), settings={"r": (16, 32, 64)},
                               task_learning_rate={"seq-cls": (1e-4, 3e-4, 1e-3)})

    def lora_kwargs(self, settings):
        return {"use_rslora": True}


@hookimpl
def register_methods(register):
    register(RsLoRA())
