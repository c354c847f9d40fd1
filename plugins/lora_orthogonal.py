"""LoRA with A and B initialised orthogonal to each other, the base left untouched (Datta, 2025)."""

from __future__ import annotations

from pydantic import field_validator

from autopeft import LowRank, SearchSpace, hookimpl

from .lora import LoRA


class OrthogonalSettings(LowRank):
    @field_validator("r")
    @classmethod
    def _even(cls, r: int) -> int:
        if r % 2:
            raise ValueError(f"orthogonal initialisation splits the rank in two halves: r must be even, got {r}")
        return r


class OrthogonalLoRA(LoRA):
    name = "lora_orthogonal"
    aliases = ("orthogonal-lora", "lora-orthogonal")
    description = "LoRA whose A and B start as orthogonal random halves: a non-zero start that keeps the base weights."
    search_space = SearchSpace(learning_rate=(5e-5, 1e-4, 3e-4), settings={"r": (8, 16, 32)},
                               task_learning_rate={"seq-cls": (3e-4, 1e-3, 3e-3)})
    Settings = OrthogonalSettings

    def lora_kwargs(self, settings):
        return {"init_lora_weights": "orthogonal"}


@hookimpl
def register_methods(register):
    register(OrthogonalLoRA())
