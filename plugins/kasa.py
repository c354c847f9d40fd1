"""KaSA: knowledge-aware singular-value adaptation (Wang et al., 2024)."""

from __future__ import annotations

from pydantic import Field

from autopeft import Capabilities, LowRank, SearchSpace, hookimpl, on_meta_device

from .lora import LoRA
from .lora_init import add_training_loss


class KasaSettings(LowRank):
    beta: float = Field(default=1e-4, ge=0, description="weight of the L2 penalty on the trained singular values")
    gamma: float = Field(default=1e-3, ge=0, description="weight of the penalty keeping A and B semi-orthogonal")


class KaSA(LoRA):
    name = "kasa"
    description = ("Drops each weight's r smallest singular components, then learns B·diag(σ)·A in their place, "
                   "with the paper's two regularisers.")
    # the truncation rewrites the base (and redoes itself when the adapter loads), so KaSA adapters do not
    # mix with others on one base, and PEFT cannot express one as a plain LoRA; the SVD needs float weights
    capabilities = Capabilities(merge=True, quantized=False, multi_adapter=False, lora_convertible=False)
    search_space = SearchSpace(learning_rate=(1e-4, 3e-4, 1e-3), settings={"r": (8, 16, 32)},
                               task_learning_rate={"seq-cls": (3e-4, 1e-3, 3e-3)})
    Settings = KasaSettings

    def lora_kwargs(self, settings):
        from peft import KasaConfig

        return {"kasa_config": KasaConfig(beta=settings.beta, gamma=settings.gamma)}

    def build_from_peft_config(self, model, peft_config):
        # PEFT leaves the regularisers to the training loop (LoraModel._get_kasa_loss): add them to the loss
        net = super().build_from_peft_config(model, peft_config)
        if on_meta_device(net):
            # PEFT defers the truncation (an SVD, values only) to the first forward pass, which meta
            # weights cannot give it: the cost model's trace goes without
            for module in net.modules():
                getattr(module, "_lora_kasa_truncation_deferred", set()).clear()
        return add_training_loss(net, net.base_model._get_kasa_loss)


@hookimpl
def register_methods(register):
    register(KaSA())
