"""PiSSA: LoRA initialised from the principal singular vectors of each weight (Meng et al., 2024)."""

from __future__ import annotations

from autopeft import Capabilities, SearchSpace, hookimpl

from .lora import LoRA


class PiSSA(LoRA):
    name = "pissa"
    description = "LoRA whose A and B start from each weight's top singular vectors; converges faster."
    # the residual base weight differs from the original, so a plain merge back is exact but a
    # second PiSSA adapter on the same base is not
    capabilities = Capabilities(merge=True, quantized=True, multi_adapter=False, lora_convertible=True)
    search_space = SearchSpace(learning_rate=(2e-5, 5e-5, 2e-4), settings={"r": (8, 16, 32)},
                               task_learning_rate={"seq-cls": (2e-4, 5e-4, 1e-3)})

    def lora_kwargs(self, settings):
        # fast randomised SVD: seconds instead of minutes on large weights
        return {"init_lora_weights": "pissa_niter_4"}


@hookimpl
def register_methods(register):
    register(PiSSA())
