"""BD-LoRA: LoRA with block-diagonal A or B, so that a tensor-parallel server needs no extra communication (2025)."""

from __future__ import annotations

from pydantic import Field, model_validator

from autopeft import Capabilities, LowRank, SearchSpace, hookimpl

from .lora import LoRA

#: layers a tensor-parallel server splits by rows (attention output, MLP down): block-diagonal A
ROW_SHARDED = ["o_proj", "down_proj", "out_proj", "fc2", "output.dense", "dense_4h_to_h", "c_proj"]
#: layers it splits by columns (q, k, v, MLP up and gate): block-diagonal B
COLUMN_SHARDED = ["q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "qkv_proj", "gate_up_proj", "fc1", "query",
                  "key", "value", "intermediate.dense", "query_key_value", "dense_h_to_4h", "c_attn", "c_fc", "Wqkv"]


class BdLoraSettings(LowRank):
    nblocks: int = Field(default=2, ge=1, description="blocks of each block-diagonal factor: the serving "
                                                      "tensor-parallel degree; must divide r and the layer sizes")
    block_diagonal_a: list[str] = Field(default_factory=lambda: list(ROW_SHARDED),
                                        description="module-name parts whose A is block-diagonal (row-sharded layers)")
    block_diagonal_b: list[str] = Field(default_factory=lambda: list(COLUMN_SHARDED),
                                        description="module-name parts whose B is block-diagonal (column-sharded layers)")

    @model_validator(mode="after")
    def _fits(self):
        if self.r % self.nblocks:
            raise ValueError(f"nblocks ({self.nblocks}) must divide r ({self.r})")
        if set(self.block_diagonal_a) & set(self.block_diagonal_b):
            raise ValueError("a module-name part cannot be in both block_diagonal_a and block_diagonal_b")
        return self


class BdLoRA(LoRA):
    name = "bdlora"
    aliases = ("bd-lora",)
    description = "LoRA with block-diagonal factors matched to tensor-parallel sharding: fast multi-LoRA serving."
    # bitsandbytes layers ignore the block-diagonal layout (they would train plain LoRA); PEFT 0.21's
    # supports_lora_conversion() says yes, but its convert_to_lora multiplies the stored blocks as if
    # they were full factors, and fails
    capabilities = Capabilities(merge=True, quantized=False, multi_adapter=True, lora_convertible=False)
    search_space = SearchSpace(learning_rate=(1e-4, 3e-4, 1e-3), settings={"r": (8, 16, 32)},
                               task_learning_rate={"seq-cls": (3e-4, 1e-3, 3e-3)})
    Settings = BdLoraSettings

    def lora_kwargs(self, settings):
        from peft import BdLoraConfig

        # layers of neither list (a classifier, an unknown architecture's) keep plain LoRA factors
        return {"use_bdlora": BdLoraConfig(target_modules_bd_a=settings.block_diagonal_a,
                                           target_modules_bd_b=settings.block_diagonal_b,
                                           nblocks=settings.nblocks, match_strict=False)}


@hookimpl
def register_methods(register):
    register(BdLoRA())
