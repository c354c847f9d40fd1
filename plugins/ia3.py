"""IA3: trained vectors that rescale keys, values and feed-forward activations (Liu et al., 2022)."""

from __future__ import annotations

from pydantic import Field

from autopeft import Capabilities, PeftMethod, SearchSpace, Targeted, hookimpl, peft_task_type


class IA3Settings(Targeted):
    feedforward_modules: list[str] | str | None = Field(
        default=None, description="the target modules whose input (not output) is rescaled; None: PEFT's default")


class IA3(PeftMethod):
    name = "ia3"
    family = "scaling"
    description = "Learned rescaling vectors on attention and feed-forward activations; very few parameters."
    peft_type = "IA3"
    capabilities = Capabilities(merge=True, quantized=True, multi_adapter=True, lora_convertible=False)
    search_space = SearchSpace(learning_rate=(1e-3, 5e-3, 1e-2))
    Settings = IA3Settings

    def peft_config(self, settings, task):
        from peft import IA3Config

        return IA3Config(task_type=peft_task_type(task), target_modules=settings.target_modules,
                         feedforward_modules=settings.feedforward_modules)


@hookimpl
def register_methods(register):
    register(IA3())
