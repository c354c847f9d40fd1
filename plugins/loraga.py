"""LoRA-GA: LoRA initialised from the SVD of the full fine-tuning gradient on a few training batches
(Wang et al., 2024)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from autopeft import Capabilities, LowRank, SearchSpace, hookimpl, on_meta_device

from .lora import LoRA
from .lora_init import require_batches, target_layers


class LoraGASettings(LowRank):
    direction: Literal["ArBr", "A2rBr", "ArB2r", "random"] = Field(
        default="ArB2r", description="which of the gradient's 2r singular vectors go to A and which to B")
    scale: Literal["stable", "weight_svd", "gd_scale", "unit"] = Field(
        default="stable", description="how the initial factors are scaled")


class LoraGA(LoRA):
    name = "loraga"
    aliases = ("lora-ga",)
    description = "LoRA whose first step points the way full fine-tuning's gradient does on your data; converges faster."
    # the base becomes W minus the initial B·A (converted back when saving); it needs full-precision gradients
    capabilities = Capabilities(merge=True, quantized=False, multi_adapter=False, lora_convertible=True)
    search_space = SearchSpace(learning_rate=(2e-5, 5e-5, 2e-4), settings={"r": (8, 16, 32)},
                               task_learning_rate={"seq-cls": (2e-4, 5e-4, 1e-3)})
    Settings = LoraGASettings
    data_batches = 8

    def lora_kwargs(self, settings):
        from peft import LoraGAConfig

        return {"init_lora_weights": "lora_ga",
                "lora_ga_config": LoraGAConfig(direction=settings.direction, scale=settings.scale)}

    def build(self, model, settings, task, batches=None):
        if on_meta_device(model):
            return super().build(model, settings, task)  # shapes only: the gradients fill values
        from peft import preprocess_loraga

        batches = require_batches(self, batches)
        config = self.peft_config(settings, task)

        def train_step():
            for batch in batches:  # gradients accumulate over the batches; PEFT averages them
                model(**batch).loss.backward()

        preprocess_loraga(model, config, train_step)
        return self.build_from_peft_config(model, config)

    def init_memory_bytes(self, model, settings, *, batch_size, seq_len, activations, device):
        """A training forward pass's activations and logits (backward runs), the gradient of every target
        weight (in the weights' dtype, kept as PEFT's average until the adapters are made) and, for the
        largest, the average being made and the float32 copy the low-rank SVD works on."""
        layers = target_layers(model)
        gradients = sum(out * n_in * size for out, n_in, size in layers)
        largest = max((4 * out * n_in for out, n_in, _ in layers), default=0)
        return activations + gradients + 2 * largest


@hookimpl
def register_methods(register):
    register(LoraGA())
