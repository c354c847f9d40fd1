"""Settings shared by many methods. A method whose knobs differ declares its own MethodSettings subclass."""

from __future__ import annotations

from pydantic import Field

from .base import MethodSettings


class Targeted(MethodSettings):
    """Which modules the adapter attaches to. None: PEFT's default for the model's architecture."""

    target_modules: list[str] | str | None = Field(
        default=None, description="module names or 'all-linear'; None uses PEFT's default for the architecture")


class LowRank(Targeted):
    """The knobs of LoRA and its relatives."""

    r: int = Field(default=16, ge=1, le=4096, description="rank of the update")
    alpha: float = Field(default=32, gt=0, description="scale numerator: the update is scaled by alpha / r")
    dropout: float = Field(default=0.0, ge=0, lt=1, description="dropout on the adapter's input")


class PromptSettings(MethodSettings):
    """The knobs of prompt-learning methods."""

    num_virtual_tokens: int = Field(default=20, ge=1, le=4096, description="number of learned virtual tokens")
