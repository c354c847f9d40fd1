"""LoftQ: LoRA initialised so that the 4-bit base plus B·A is closest to the full-precision weights (Li et al., 2023)."""

from __future__ import annotations

import dataclasses

from autopeft import BadInputError, Capabilities, SearchSpace, hookimpl, on_meta_device

from .lora import LoRA


class LoftQ(LoRA):
    name = "loftq"
    description = "LoRA for a 4-bit base (--quantize 4bit), started from the SVD of the quantisation error: QLoRA that starts closer."
    capabilities = Capabilities(merge=True, quantized=True, multi_adapter=False, lora_convertible=True)
    search_space = SearchSpace(learning_rate=(1e-4, 3e-4, 1e-3), settings={"r": (16, 32, 64)},
                               task_learning_rate={"seq-cls": (3e-4, 1e-3, 3e-3)})

    def unavailable_reason(self):
        """LoftQ fits the adapter to a bitsandbytes 4-bit base, which needs CUDA."""
        import importlib.util

        import torch

        if not torch.cuda.is_available():
            return "LoftQ needs a 4-bit base, and 4-bit bases need a CUDA GPU (bitsandbytes' kernels); this machine has none"
        if importlib.util.find_spec("bitsandbytes") is None:
            return "LoftQ needs bitsandbytes: pip install bitsandbytes"
        return None

    def lora_kwargs(self, settings):
        from peft import LoftQConfig

        return {"init_lora_weights": "loftq", "loftq_config": LoftQConfig(loftq_bits=4, loftq_iter=1)}

    def build_from_peft_config(self, model, peft_config):
        if on_meta_device(model):
            return super().build_from_peft_config(model, peft_config)  # shapes only: LoRA's
        if not _is_4bit(model):
            raise BadInputError("LoftQ fits its adapter to a 4-bit base: train with --quantize 4bit")
        from peft import replace_lora_weights_loftq

        # PEFT's route for a model bitsandbytes already quantised: plain LoRA, then A and B replaced by
        # the SVD of each layer's quantisation error, read against the full-precision weights on disk
        net = super().build_from_peft_config(model, dataclasses.replace(peft_config, init_lora_weights=True,
                                                                        loftq_config={}))
        replace_lora_weights_loftq(net)
        return net


def _is_4bit(model) -> bool:
    return any(type(m).__name__ == "Linear4bit" for m in model.modules())


@hookimpl
def register_methods(register):
    register(LoftQ())
