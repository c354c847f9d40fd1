"""LN tuning: train only the normalisation layers' parameters (Qi et al., 2022)."""

from __future__ import annotations

from autopeft import Capabilities, PeftMethod, SearchSpace, Targeted, hookimpl, peft_task_type


class LNTuning(PeftMethod):
    name = "ln_tuning"
    aliases = ("ln-tuning", "layernorm")
    family = "norm"
    description = "Trains only LayerNorm/RMSNorm weights: tiny adapters, a strong cheap baseline."
    peft_type = "LN_TUNING"
    layer_types = ("layernorm",)
    capabilities = Capabilities(merge=True, quantized=False, multi_adapter=True, lora_convertible=False)
    search_space = SearchSpace(learning_rate=(1e-4, 1e-3, 5e-3),
                               task_learning_rate={"seq-cls": (1e-3, 5e-3, 2e-2)})
    Settings = Targeted

    def peft_config(self, settings, task):
        from peft import LNTuningConfig

        return LNTuningConfig(task_type=peft_task_type(task), target_modules=settings.target_modules)

    def build(self, model, settings, task):
        if settings.target_modules is None:
            # PEFT knows the norm layers of some architectures only; finding them covers every one
            settings = settings.model_copy(update={"target_modules": norm_module_names(model)})
        return super().build(model, settings, task)


def norm_module_names(model) -> list[str]:
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if name and "norm" in type(module).__name__.lower()})


@hookimpl
def register_methods(register):
    register(LNTuning())
