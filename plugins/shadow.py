"""ShadowPEFT: a small trained shadow network beside the frozen model corrects each block (Li et al., 2026)."""

from __future__ import annotations

from pydantic import Field

from autopeft import BadInputError, Capabilities, MethodSettings, PeftMethod, SearchSpace, hookimpl, peft_task_type


class ShadowSettings(MethodSettings):
    r: int = Field(default=8, ge=1, description="rank of the injection bottleneck in every block")
    alpha: float = Field(default=0.1, gt=0, description="strength of the correction added to each block's input")
    dropout: float = Field(default=0.2, ge=0, lt=1, description="dropout on the discrepancy fed to the bottleneck")
    shadow_layers: int = Field(default=1, ge=1, description="depth of the shadow network (a copy of the model's "
                                                            "architecture, freshly initialised)")
    shadow_hidden_size: int | None = Field(default=None, ge=1, description="its width; None: the model's")
    shadow_intermediate_size: int | None = Field(default=None, ge=1, description="its feed-forward width; "
                                                                                "None: the model's")
    auxiliary_loss_weight: float = Field(default=0.05, ge=0, description="weight of the shadow network's own task "
                                                                        "loss, added while training")


class Shadow(PeftMethod):
    name = "shadow"
    aliases = ("shadowpeft", "shadow-peft")
    family = "side-network"
    description = "A small trained shadow network beside the frozen model corrects every block; not mergeable."
    peft_type = "SHADOW"
    # several adapters load and switch for causal LM; PEFT refuses a second one beside a classifier
    capabilities = Capabilities(merge=False, quantized=False, multi_adapter=True, lora_convertible=False)
    # no PEFT comparison run: the shadow is a freshly initialised block (its injection starts at zero),
    # trained as LoRA-sized adapters are
    search_space = SearchSpace(learning_rate=(1e-4, 3e-4, 1e-3), settings={"r": (8, 16)},
                               task_learning_rate={"seq-cls": (3e-4, 1e-3, 3e-3)})
    Settings = ShadowSettings
    # it wraps whole decoder blocks, none of the layer types the capability probes build and check
    layer_types = ("block",)

    def peft_config(self, settings, task):
        from peft import ShadowConfig

        return ShadowConfig(task_type=peft_task_type(task), r=settings.r, shadow_alpha=settings.alpha,
                            shadow_dropout=settings.dropout, shadow_num_hidden_layers=settings.shadow_layers,
                            shadow_hidden_size=settings.shadow_hidden_size,
                            shadow_intermediate_size=settings.shadow_intermediate_size,
                            auxiliary_loss_weight=settings.auxiliary_loss_weight)

    def build_from_peft_config(self, model, peft_config):
        import torch

        on_meta = any(p.is_meta for p in model.parameters())
        try:
            if on_meta:  # the shadow network is a whole new block: make it on meta, not in memory
                with torch.device("meta"):
                    built = super().build_from_peft_config(model, peft_config)
            else:
                built = super().build_from_peft_config(model, peft_config)
        except AttributeError as exc:  # no decoder-block stack PEFT can find (BERT's encoder.layer)
            raise BadInputError(f"method shadow needs a model whose blocks form a `layers` or `h` stack "
                                f"(decoders such as Llama); {str(exc).splitlines()[0]}") from None
        _auxiliary_loss_only_in_training(built.base_model)
        return built


def _auxiliary_loss_only_in_training(shadow):
    """PEFT adds the shadow network's own loss to every loss with labels, evaluation included, so the
    validation loss (and early stopping on it) would not be the task's: outside training, skip it."""
    import types

    shadow.forward = types.MethodType(_forward_with_auxiliary_loss_in_training, shadow)


def _forward_with_auxiliary_loss_in_training(self, *args, **kwargs):
    if self.training:
        return type(self).forward(self, *args, **kwargs)
    return self.model(*args, **kwargs)


@hookimpl
def register_methods(register):
    register(Shadow())
