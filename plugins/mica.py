"""MiCA: LoRA whose frozen B holds each weight's minor singular directions; only A trains (2026)."""

from __future__ import annotations

from autopeft import Capabilities, SearchSpace, hookimpl

from .lora import LoRA


class MiCA(LoRA):
    name = "mica"
    description = "LoRA with B frozen on each weight's least-used singular directions and only A trained: half the parameters."
    # the init reads the weights in float (an SVD): not on a 4-/8-bit base
    capabilities = Capabilities(merge=True, quantized=False, multi_adapter=True, lora_convertible=True)
    search_space = SearchSpace(learning_rate=(1e-4, 3e-4, 1e-3), settings={"r": (16, 32)},
                               task_learning_rate={"seq-cls": (1e-3, 3e-3, 9e-3)})

    def lora_kwargs(self, settings):
        return {"init_lora_weights": "mica"}


@hookimpl
def register_methods(register):
    register(MiCA())
