"""LoRA: a trainable low-rank update B·A added to frozen weights (Hu et al., 2021)."""

from __future__ import annotations

from autopeft import Capabilities, LowRank, PeftMethod, SearchSpace, hookimpl, peft_task_type

#: ``init_lora_weights`` values (or prefixes) that make a LoRA config a variant, and the method's name
INIT_VARIANTS = {"pissa": "pissa", "olora": "olora", "corda": "corda", "eva": "eva", "lora_ga": "loraga",
                 "orthogonal": "lora_orthogonal", "mica": "mica", "loftq": "loftq"}
#: LoraConfig fields that make a LoRA config a variant when set, and the method's name
FLAG_VARIANTS = {"use_dora": "dora", "use_qalora": "qalora", "alora_invocation_tokens": "alora",
                 "kasa_config": "kasa", "velora_config": "velora", "monteclora_config": "monteclora",
                 "use_bdlora": "bdlora"}


def lora_variant(config: dict) -> str | None:
    """The LoRA method an ``adapter_config.json`` (as a dict) describes: "lora", a variant's name, or
    None for a combination of variants that no one method describes (DoRA with EVA's init, say).
    ``use_rslora`` alone makes "rslora"; beside another variant it only rescales, and is not one."""
    if config.get("peft_type") != "LORA":
        return None
    init = config.get("init_lora_weights", True)
    marks = [name for prefix, name in INIT_VARIANTS.items()
             if isinstance(init, str) and init.lower().startswith(prefix)]
    marks += [name for field, name in FLAG_VARIANTS.items() if config.get(field)]
    if len(marks) > 1:
        return None
    if marks:
        return marks[0]
    return "rslora" if config.get("use_rslora") else "lora"


class LoRA(PeftMethod):
    name = "lora"
    family = "low-rank"
    description = "Low-rank update B·A on frozen weights; the reflex choice, mergeable and widely served."
    peft_type = "LORA"
    capabilities = Capabilities(merge=True, quantized=True, multi_adapter=True, lora_convertible=True)
    search_space = SearchSpace(learning_rate=(1e-4, 3e-4, 1e-3), settings={"r": (8, 16, 32)})
    Settings = LowRank

    def lora_kwargs(self, settings) -> dict:
        """Extra LoraConfig fields of this variant."""
        return {}

    def peft_config(self, settings, task):
        from peft import LoraConfig

        return LoraConfig(task_type=peft_task_type(task), r=settings.r, lora_alpha=settings.alpha,
                          lora_dropout=settings.dropout, target_modules=settings.target_modules,
                          **self.lora_kwargs(settings))

    def recognises(self, config):
        """An adapter config is this method's when :func:`lora_variant` names it: each LoRA config
        belongs to one LoRA-family method at most."""
        return lora_variant(config) == self.name


@hookimpl
def register_methods(register):
    register(LoRA())
