"""BOFT: orthogonal fine-tuning with butterfly-factorised rotations (Liu et al., 2024)."""

from __future__ import annotations

from pydantic import Field

from autopeft import Capabilities, PeftMethod, SearchSpace, Targeted, hookimpl, peft_task_type


class BOFTSettings(Targeted):
    block_size: int = Field(default=4, ge=1, description="size of each butterfly block")
    n_butterfly_factor: int = Field(default=1, ge=0, description="number of butterfly factors minus one")
    dropout: float = Field(default=0.0, ge=0, lt=1)


class BOFT(PeftMethod):
    name = "boft"
    family = "orthogonal"
    description = "Orthogonal rotations built from butterfly factors: dense rotations from few parameters."
    peft_type = "BOFT"
    capabilities = Capabilities(merge=True, quantized=False, multi_adapter=True, lora_convertible=False)
    search_space = SearchSpace(learning_rate=(5e-5, 2e-4, 1e-3), settings={"block_size": (4, 8)},
                               task_learning_rate={"seq-cls": (1e-3, 3e-3, 9e-3)})
    Settings = BOFTSettings
    probe_settings = {"block_size": 4}

    def peft_config(self, settings, task):
        from peft import BOFTConfig

        return BOFTConfig(task_type=peft_task_type(task), boft_block_size=settings.block_size,
                          boft_n_butterfly_factor=settings.n_butterfly_factor, boft_dropout=settings.dropout,
                          target_modules=settings.target_modules)


@hookimpl
def register_methods(register):
    register(BOFT())
