"""LoRA: a trainable low-rank update B·A added to frozen weights (Hu et al., 2021)."""

from __future__ import annotations

from autopeft import Capabilities, LowRank, PeftMethod, SearchSpace, hookimpl, peft_task_type


class LoRA(PeftMethod):
    name = "lora"
    family = "low-rank"
    description = "Low-rank update B·A on frozen weights; the reflex choice, mergeable and widely served."
    peft_type = "LORA"
    capabilities = Capabilities(merge=True, quantized=True, multi_adapter=True, lora_convertible=True)
    search_space = SearchSpace(learning_rate=(1e-4, 3e-4, 1e-3), settings={"r": (8, 16, 32)})
    Settings = LowRank

    #: LoraConfig fields that make a LoRA config a variant (DoRA, rsLoRA, PiSSA) rather than plain LoRA
    variant_flags: dict = {"use_dora": False, "use_rslora": False}

    def lora_kwargs(self, settings) -> dict:
        """Extra LoraConfig fields of this variant."""
        return {}

    def peft_config(self, settings, task):
        from peft import LoraConfig

        return LoraConfig(task_type=peft_task_type(task), r=settings.r, lora_alpha=settings.alpha,
                          lora_dropout=settings.dropout, target_modules=settings.target_modules,
                          **self.lora_kwargs(settings))

    def recognises(self, config):
        if config.get("peft_type") != self.peft_type:
            return False
        if any(bool(config.get(k)) != v for k, v in self.variant_flags.items()):
            return False
        init = config.get("init_lora_weights", True)
        return not (isinstance(init, str) and init.startswith("pissa"))


@hookimpl
def register_methods(register):
    register(LoRA())
