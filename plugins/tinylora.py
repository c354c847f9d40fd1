"""TinyLoRA: a tiny trained vector steers each weight's frozen top singular directions (arXiv:2602.04118, 2026)."""

from __future__ import annotations

from pydantic import Field

from autopeft import Capabilities, PeftMethod, SearchSpace, Targeted, hookimpl, peft_task_type


class TinyLoraSettings(Targeted):
    r: int = Field(default=2, ge=1, description="rank of the frozen truncated SVD of each weight")
    u: int = Field(default=64, ge=1, description="length of the trained vector of each layer (or tied group)")
    weight_tying: float = Field(default=0.0, ge=0, le=1,
                                description="share of layers tied to one trained vector: 0 none, 1 all")
    dropout: float = Field(default=0.0, ge=0, lt=1)


class TinyLoRA(PeftMethod):
    name = "tinylora"
    family = "low-rank"
    description = "A few trained numbers per layer steer its frozen top singular directions; extreme savings."
    peft_type = "TINYLORA"
    layer_types = ("linear", "embedding")
    capabilities = Capabilities(merge=True, quantized=False, multi_adapter=True, lora_convertible=True)
    # PEFT's MetaMathQA comparison trains r=2, u=64 on q/v at 1e-3 and it barely moves the model
    # there (1.2% accuracy), so the range reaches higher
    search_space = SearchSpace(learning_rate=(1e-3, 3e-3, 1e-2), settings={"u": (16, 64)},
                               task_learning_rate={"seq-cls": (3e-3, 1e-2, 3e-2)})
    Settings = TinyLoraSettings

    def peft_config(self, settings, task):
        from peft import TinyLoraConfig

        return TinyLoraConfig(task_type=peft_task_type(task), r=settings.r, u=settings.u,
                              weight_tying=settings.weight_tying, tinylora_dropout=settings.dropout,
                              target_modules=settings.target_modules)


@hookimpl
def register_methods(register):
    register(TinyLoRA())
