"""OFT: each weight is multiplied by a trained block-diagonal orthogonal matrix (Qiu et al., 2023)."""

from __future__ import annotations

from pydantic import Field

from autopeft import Capabilities, PeftMethod, SearchSpace, Targeted, hookimpl, peft_task_type


class OFTSettings(Targeted):
    block_size: int = Field(default=32, ge=1, description="size of each orthogonal block")
    dropout: float = Field(default=0.0, ge=0, lt=1, description="module dropout")


class OFT(PeftMethod):
    name = "oft"
    family = "orthogonal"
    description = "Block-diagonal orthogonal rotation of each weight; preserves the base's geometry."
    peft_type = "OFT"
    capabilities = Capabilities(merge=True, quantized=False, multi_adapter=True, lora_convertible=False)
    search_space = SearchSpace(learning_rate=(5e-5, 2e-4, 1e-3), settings={"block_size": (16, 32, 64)},
                               task_learning_rate={"seq-cls": (2e-4, 1e-3, 3e-3)})
    Settings = OFTSettings
    probe_settings = {"block_size": 8}

    def peft_config(self, settings, task):
        from peft import OFTConfig

        return OFTConfig(task_type=peft_task_type(task), r=0, oft_block_size=settings.block_size,
                         module_dropout=settings.dropout, target_modules=settings.target_modules)


@hookimpl
def register_methods(register):
    register(OFT())
