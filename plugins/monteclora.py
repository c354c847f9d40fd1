"""MonteCLoRA: LoRA whose A is perturbed by learned Monte Carlo noise, a variational regulariser (2024)."""

from __future__ import annotations

from pydantic import Field

from autopeft import Capabilities, LowRank, SearchSpace, hookimpl, on_meta_device

from .lora import LoRA
from .lora_init import add_training_loss


class MontecloraSettings(LowRank):
    num_samples: int = Field(default=8, ge=1, description="Monte Carlo samples of A averaged in each forward pass")
    sample_scaler: float = Field(default=1e-4, gt=0, description="scale of the sampled perturbations of A")
    kl_loss_weight: float = Field(default=1e-5, ge=0, description="weight of the KL term in the loss")
    buffer_size: int = Field(default=10, ge=1, description="noise draws kept ready per layer: each holds "
                                                           "num_samples × in × r values in memory")


class MonteCLoRA(LoRA):
    name = "monteclora"
    description = "LoRA with a learned mixture of noisy copies of A and a KL regulariser: better-calibrated, robust to lr."
    # bitsandbytes layers take no MonteCLoRA sampler (they would train plain LoRA)
    capabilities = Capabilities(merge=True, quantized=False, multi_adapter=True, lora_convertible=True)
    search_space = SearchSpace(learning_rate=(1e-4, 3e-4, 1e-3), settings={"r": (8, 16, 32)},
                               task_learning_rate={"seq-cls": (3e-4, 1e-3, 3e-3)})
    Settings = MontecloraSettings

    def lora_kwargs(self, settings):
        from peft import MontecloraConfig

        return {"monteclora_config": MontecloraConfig(
            num_samples=settings.num_samples, sample_scaler=settings.sample_scaler,
            kl_loss_weight=settings.kl_loss_weight, buffer_size=settings.buffer_size)}

    def build_from_peft_config(self, model, peft_config):
        net = super().build_from_peft_config(model, peft_config)
        if on_meta_device(net):
            _samplers_on_meta(net)
        # PEFT leaves the KL term to the training loop (LoraModel._get_monteclora_loss): add it to the loss
        return add_training_loss(net, net.base_model._get_monteclora_loss)

    def optimizer_state_bytes(self, model, settings):
        """AdamW's moments, plus the noise each sampler keeps drawn in advance (not a parameter, a buffer
        or a gradient, but held all through training beside them)."""
        from peft.tuners.lora.monteclora import MontecloraSampler

        noise = sum(s.in_features * s.out_features * s.num_samples * _buffer_size(s) * s.std_prior.element_size()
                    for s in model.modules() if isinstance(s, MontecloraSampler))
        return super().optimizer_state_bytes(model, settings) + noise


def _buffer_size(sampler) -> int:
    return sampler.sampler.buffer_size


def _samplers_on_meta(net) -> None:
    """PEFT defers a sampler whose LoRA weights are on the meta device to the first forward pass, and
    draws its noise with a Wishart distribution that meta tensors cannot validate: make each sampler
    on the CPU with a stand-in noise source of the right shapes, then move it to meta."""
    from peft.tuners.lora import monteclora
    from peft.tuners.lora.variants import MontecloraLinearVariant

    original = monteclora.BufferedMontecloraSampler
    monteclora.BufferedMontecloraSampler = _MetaNoise
    try:
        for module in net.modules():
            configs = getattr(module, "_lora_monteclora_config", None)
            for adapter, config in (configs or {}).items():
                if adapter not in module.lora_monteclora_sampler:
                    sampler = MontecloraLinearVariant._create_sampler(module, adapter, config)
                    module.lora_monteclora_sampler[adapter] = sampler.to("meta")
                    sampler.sampler.device = "meta"
                    sampler.forward = _keeping_buffers(sampler)
    finally:
        monteclora.BufferedMontecloraSampler = original


def _keeping_buffers(sampler):
    """The sampler's forward, leaving its buffers as they were: it stores its latest draws in them,
    which would make a traced block differ from the alike block it stands for (a few r×r values)."""
    original = type(sampler).forward.__get__(sampler)

    def forward():
        kept = dict(sampler.named_buffers(recurse=False))
        try:
            return original()
        finally:
            for name, value in kept.items():
                setattr(sampler, name, value)

    return forward


class _MetaNoise:
    """Noise of the shapes BufferedMontecloraSampler draws, on the meta device."""

    def __init__(self, model, buffer_size: int = 150, device=None):
        self.model, self.buffer_size, self.device = model, buffer_size, device

    def get(self):
        import torch

        m = self.model
        return {"z_mvn": torch.empty(m.num_samples, m.in_features, m.out_features, device="meta"),
                "z_wishart": torch.empty(m.out_features, m.out_features, device="meta"),
                "z_dirichlet": torch.empty(m.num_samples, device="meta")}


@hookimpl
def register_methods(register):
    register(MonteCLoRA())
