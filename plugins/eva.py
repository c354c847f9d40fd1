"""EVA: explained-variance adaptation, LoRA's A from the SVD of each layer's inputs on the training data
(Paischer et al., 2024)."""

from __future__ import annotations

from autopeft import BadInputError, Capabilities, SearchSpace, hookimpl, on_meta_device

from .lora import LoRA
from .lora_init import logits_bytes, model_inputs, require_batches, target_layers

#: passes over the sampled batches EVA may take before its SVDs must have converged
MAX_PASSES = 20


class EVA(LoRA):
    name = "eva"
    description = "LoRA whose A starts from the principal directions of each layer's inputs on your data; B from zero."
    capabilities = Capabilities(merge=True, quantized=True, multi_adapter=True, lora_convertible=True)
    search_space = SearchSpace(learning_rate=(1e-4, 3e-4, 1e-3), settings={"r": (8, 16, 32)},
                               task_learning_rate={"seq-cls": (3e-4, 1e-3, 3e-3)})
    data_batches = 8
    probe_settings = {"r": 8}  # rank 16 needs more tokens than the tiny sample batches give to converge

    def lora_kwargs(self, settings):
        from peft import EvaConfig

        # rho=1: every layer keeps rank r (no redistribution by explained variance), so the adapter's
        # shapes, and the cost model's counts, do not depend on the data
        return {"init_lora_weights": "eva", "eva_config": EvaConfig(rho=1.0)}

    def build(self, model, settings, task, batches=None):
        if on_meta_device(model):
            return super().build(model, settings, task)  # shapes only: EVA fills values
        batches = [model_inputs(b, task) for b in require_batches(self, batches)]
        net = super().build(model, settings, task)
        from peft import initialize_lora_eva_weights

        calls = {"n": 0}

        def forward(model, inputs):
            calls["n"] += 1
            if calls["n"] > MAX_PASSES * len(batches):
                raise _NotConverged
            return model(**inputs)

        try:
            # (classification batches come without their labels: EVA then takes every non-padding token)
            initialize_lora_eva_weights(net, dataloader=batches, forward_fn=forward, show_progress_bar=False)
        except _NotConverged:
            raise BadInputError(f"EVA's SVDs did not converge in {MAX_PASSES} passes over {len(batches)} batches: "
                                "too few tokens for rank r; lower r or use longer examples") from None
        return net

    def init_memory_bytes(self, model, settings, *, batch_size, seq_len, activations, device):
        """Each target layer's incremental PCA state (r components, their running mean and variance, in
        float32), the largest layer's batch of inputs with those components stacked on it for the SVD,
        and the logits of a no-grad forward pass."""
        layers = target_layers(model)
        state = sum(4 * (settings.r + 3) * n_in for _, n_in, _ in layers)
        widest = max((n_in for _, n_in, _ in layers), default=0)
        svd = 3 * 4 * (batch_size * seq_len + settings.r) * widest
        return state + svd + logits_bytes(model, batch_size, seq_len)


class _NotConverged(Exception):
    pass


@hookimpl
def register_methods(register):
    register(EVA())
