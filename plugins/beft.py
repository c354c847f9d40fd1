"""BEFT: bias-efficient fine-tuning, training the bias of a chosen projection only."""

from __future__ import annotations

from autopeft import Capabilities, PeftMethod, SearchSpace, Targeted, hookimpl, peft_task_type


class BEFT(PeftMethod):
    name = "beft"
    family = "bias"
    description = "Trains bias terms of chosen projections only: the smallest adapters, least memory."
    peft_type = "BEFT"
    capabilities = Capabilities(merge=True, quantized=False, multi_adapter=True, lora_convertible=False)
    search_space = SearchSpace(learning_rate=(1e-3, 5e-3, 2e-2),
                               task_learning_rate={"seq-cls": (5e-3, 2e-2, 5e-2)})
    Settings = Targeted

    def peft_config(self, settings, task):
        from peft import BeftConfig

        return BeftConfig(task_type=peft_task_type(task), target_modules=settings.target_modules)


@hookimpl
def register_methods(register):
    register(BEFT())
