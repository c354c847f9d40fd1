"""LoHa: the update is the Hadamard product of two low-rank products (LyCORIS; Hyeon-Woo et al., 2022)."""

from __future__ import annotations

from autopeft import Capabilities, LowRank, PeftMethod, SearchSpace, hookimpl, peft_task_type


class LoHa(PeftMethod):
    name = "loha"
    family = "lycoris"
    description = "Hadamard product of two low-rank products: rank up to r² for twice LoRA's parameters."
    peft_type = "LOHA"
    capabilities = Capabilities(merge=True, quantized=False, multi_adapter=True, lora_convertible=True)
    search_space = SearchSpace(learning_rate=(1e-4, 5e-4, 2e-3), settings={"r": (8, 16, 32)},
                               task_learning_rate={"seq-cls": (5e-4, 2e-3, 5e-3)})
    Settings = LowRank

    def peft_config(self, settings, task):
        from peft import LoHaConfig

        return LoHaConfig(task_type=peft_task_type(task), r=settings.r, alpha=settings.alpha,
                          module_dropout=settings.dropout, target_modules=settings.target_modules)


@hookimpl
def register_methods(register):
    register(LoHa())
