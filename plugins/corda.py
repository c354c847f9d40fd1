"""CorDA: context-oriented decomposition adaptation, LoRA from the SVD of each weight times the covariance of
its inputs on the training data (Yang et al., 2024)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from autopeft import Capabilities, LowRank, SearchSpace, hookimpl, on_meta_device

from .lora import LoRA
from .lora_init import logits_bytes, model_inputs, require_batches, target_layers, with_default_targets


class CordaSettings(LowRank):
    mode: Literal["ipm", "kpm"] = Field(
        default="ipm", description="ipm (instruction-previewed): adapt the components the data uses most, fastest "
                                   "to converge; kpm (knowledge-preserved): adapt the least used, forgetting less")


class CorDA(LoRA):
    name = "corda"
    description = ("LoRA from the weight components your data excites most (ipm) or least (kpm); "
                   "kpm keeps world knowledge.")
    # the base becomes the residual (converted back when saving); the decomposition needs float weights
    capabilities = Capabilities(merge=True, quantized=False, multi_adapter=False, lora_convertible=True)
    search_space = SearchSpace(learning_rate=(2e-5, 5e-5, 2e-4), settings={"r": (8, 16, 32)},
                               task_learning_rate={"seq-cls": (2e-4, 5e-4, 1e-3)})
    Settings = CordaSettings
    data_batches = 16

    def unavailable_reason(self):
        """PEFT's CorDA module imports ``attrs``, which PEFT does not install."""
        import importlib.util

        if importlib.util.find_spec("attr") is None:
            return "PEFT's CorDA needs the attrs package: pip install attrs"
        return None

    def lora_kwargs(self, settings):
        from peft.tuners.lora.config import CordaConfig

        return {"init_lora_weights": "corda", "corda_config": CordaConfig(corda_method=settings.mode)}

    def build(self, model, settings, task, batches=None):
        if on_meta_device(model):
            return super().build(model, settings, task)  # shapes only: the data fills values
        from peft.tuners.lora.corda import preprocess_corda

        batches = [model_inputs(b, task) for b in require_batches(self, batches)]
        config = with_default_targets(model, self.peft_config(settings, task))

        def run_model():
            # CorDA's hook takes one sequence at a time: each example alone, without its padding
            for batch in batches:
                for ids, mask in zip(batch["input_ids"], batch["attention_mask"].bool()):
                    model(input_ids=ids[mask][None])

        preprocess_corda(model, config, run_model=run_model)
        return self.build_from_peft_config(model, config)

    def init_memory_bytes(self, model, settings, *, batch_size, seq_len, activations, device):
        """An in×in float32 covariance for every target layer, all held until the decompositions; then
        each layer's full SVD (float32: the weight, U, V and an inverse), whose U and V go to the CPU and
        stay there, full size, until every layer is done (on a GPU they leave its memory); and the
        logits of one example's no-grad forward pass."""
        layers = target_layers(model)
        covariances = sum(4 * n_in * n_in for _, n_in, _ in layers)
        factors = sum(4 * min(out, n_in) * (out + n_in) for out, n_in, _ in layers)
        largest = max((4 * (2 * out * n_in + 2 * n_in * n_in) for out, n_in, _ in layers), default=0)
        held = covariances + largest + (factors if device == "cpu" else 0)
        return held + logits_bytes(model, 1, seq_len)


@hookimpl
def register_methods(register):
    register(CorDA())
