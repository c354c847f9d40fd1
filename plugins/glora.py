"""GLoRA: generalised LoRA, a unified prompt/adapter/LoRA update with per-layer paths scaling the weight, the bias and the input (Chavan et al., 2023)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from autopeft import Capabilities, PeftMethod, SearchSpace, Targeted, hookimpl, peft_task_type


class GloraSettings(Targeted):
    r: int = Field(default=8, ge=1, le=4096, description="rank of the paths that are low-rank")
    config_A_B: Literal["lora", "vector", "constant", "none"] = Field(
        default="lora", description="form of the weight-scaling (A) and weight-shift (B) paths")
    config_C: Literal["lora", "vector", "none"] = Field(
        default="lora", description="form of the path that shifts the bias through the weight (layers with a bias)")
    config_D_E: Literal["vector", "constant", "none"] = Field(
        default="constant", description="form of the bias scaling (D) and bias shift (E) paths (layers with a bias)")


class GLoRA(PeftMethod):
    name = "glora"
    family = "low-rank"
    description = "Generalised LoRA: low-rank, vector or scalar paths that scale and shift weights and biases."
    peft_type = "GLORA"
    capabilities = Capabilities(merge=True, quantized=False, multi_adapter=True, lora_convertible=False)
    # PEFT's MetaMathQA comparison: r=8, lora/lora/constant paths on q/v at 1e-4 (vector paths: 5e-4)
    search_space = SearchSpace(learning_rate=(1e-4, 3e-4, 1e-3), settings={"r": (8, 16)},
                               task_learning_rate={"seq-cls": (3e-4, 1e-3, 3e-3)})
    Settings = GloraSettings

    def peft_config(self, settings, task):
        from peft import GloraConfig

        return GloraConfig(task_type=peft_task_type(task), r=settings.r, config_A_B=settings.config_A_B,
                           config_C=settings.config_C, config_D_E=settings.config_D_E,
                           target_modules=settings.target_modules)


@hookimpl
def register_methods(register):
    register(GLoRA())
