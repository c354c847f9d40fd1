"""OLoRA: LoRA initialised from a QR decomposition of each weight (Büyükakyüz, 2024)."""

from __future__ import annotations

from autopeft import Capabilities, SearchSpace, hookimpl

from .lora import LoRA


class OLoRA(LoRA):
    name = "olora"
    description = "LoRA whose A and B start from each weight's QR factors (the base keeps the rest); converges faster."
    # the base weight becomes the residual: the saved adapter is converted to a LoRA of the untouched base,
    # but a second OLoRA adapter on the same residual base is not
    capabilities = Capabilities(merge=True, quantized=True, multi_adapter=False, lora_convertible=True)
    search_space = SearchSpace(learning_rate=(2e-5, 5e-5, 2e-4), settings={"r": (8, 16, 32)},
                               task_learning_rate={"seq-cls": (2e-4, 5e-4, 1e-3)})

    def lora_kwargs(self, settings):
        return {"init_lora_weights": "olora"}


@hookimpl
def register_methods(register):
    register(OLoRA())
