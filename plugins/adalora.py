"""AdaLoRA: SVD-shaped LoRA whose rank budget is reallocated to the layers that need it (Zhang et al., 2023)."""

from __future__ import annotations

from pydantic import Field

from autopeft import Capabilities, MethodSettings, PeftMethod, SearchSpace, hookimpl, peft_task_type


class AdaLoraSettings(MethodSettings):
    target_modules: list[str] | str | None = None
    init_r: int = Field(default=12, ge=1, description="rank every layer starts with")
    target_r: int = Field(default=8, ge=1, description="average rank left after pruning")
    alpha: float = Field(default=32, gt=0)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    total_step: int = Field(default=1000, ge=1, description="training steps; the rank schedule needs it")


class AdaLoRA(PeftMethod):
    name = "adalora"
    family = "adaptive-rank"
    description = "LoRA in SVD form with importance-based rank pruning: rank goes where it helps."
    peft_type = "ADALORA"
    capabilities = Capabilities(merge=True, quantized=True, multi_adapter=True, lora_convertible=False)
    # higher than the paper's: its E starts at zero between two small factors, so in runs of tens or
    # hundreds of steps (not the paper's thousands) 1e-3 and below barely move the model (SST-2: 51%
    # at 1e-3, 79% at 5e-3; instructions, 17 steps: validation loss -0.01 at 2e-3, -0.13 at 5e-3)
    search_space = SearchSpace(learning_rate=(2e-3, 5e-3, 1e-2), task_learning_rate={"seq-cls": (2e-3, 5e-3, 1.25e-2)})
    Settings = AdaLoraSettings
    probe_settings = {"init_r": 4, "target_r": 2, "total_step": 10}

    def peft_config(self, settings, task):
        from peft import AdaLoraConfig

        total = settings.total_step
        # prune between 10% and 70% of training, as the paper's schedules do
        return AdaLoraConfig(task_type=peft_task_type(task), init_r=settings.init_r, target_r=settings.target_r,
                             lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                             target_modules=settings.target_modules, total_step=total,
                             tinit=max(total // 10, 0), tfinal=max(total * 3 // 10, 0), deltaT=max(total // 100, 1))

    def settings_for_run(self, settings, total_steps):
        if "total_step" in settings.model_fields_set:
            return settings
        return settings.model_copy(update={"total_step": total_steps})

    def training_callbacks(self, model, settings):
        return [_RankAllocation(model)]

    def build_from_peft_config(self, model, peft_config):
        model = super().build_from_peft_config(model, peft_config)
        # PEFT's move of the rank counters to the meta device loses their requires_grad=False
        for name, param in model.named_parameters():
            if ".ranknum." in name:
                param.requires_grad_(False)
        _regularise_only_in_training(model.base_model)
        return model


def _regularise_only_in_training(adalora):
    """PEFT adds AdaLoRA's orthogonality penalty to every loss, evaluation included, so validation
    loss (and early stopping on it) would measure the penalty: outside training, skip it."""
    import types

    adalora.forward = types.MethodType(_forward_penalised_in_training, adalora)  # bound: copies rebind


def _forward_penalised_in_training(self, *args, **kwargs):
    if self.training:
        return type(self).forward(self, *args, **kwargs)
    return self.model(*args, **kwargs)


def _RankAllocation(model):
    """After each optimizer step (gradients still present), let AdaLoRA score and prune ranks."""
    from transformers import TrainerCallback

    class RankAllocation(TrainerCallback):
        def on_optimizer_step(self, args, state, control, **kwargs):
            model.base_model.update_and_allocate(state.global_step)

    return RankAllocation()


@hookimpl
def register_methods(register):
    register(AdaLoRA())
