"""Super-Tuning: only each weight's largest-magnitude entries train, in place (arXiv:2607.09287, 2026)."""

from __future__ import annotations

from pydantic import Field

from autopeft import Capabilities, PeftMethod, SearchSpace, Targeted, hookimpl, peft_task_type


class SupertuningSettings(Targeted):
    sparsity: float = Field(default=0.99, ge=0, lt=1, description="share of each weight's entries left frozen")
    select_top: bool = Field(default=True, description="train the largest-magnitude entries (False: the smallest)")
    r: int | None = Field(default=None, ge=1, description="rank of a LoRA trained beside the sparse entries "
                                                          "(the paper's Supra); None: sparse entries only")


class SuperTuning(PeftMethod):
    name = "supertuning"
    aliases = ("super-tuning",)
    family = "sparse"
    description = "Trains the largest-magnitude 1% of each weight's entries in place; merges with no inference cost."
    peft_type = "SUPERTUNING"
    capabilities = Capabilities(merge=True, quantized=False, multi_adapter=True, lora_convertible=False)
    # no PEFT comparison run: as SHiRA, the other sparse method training weight entries directly
    search_space = SearchSpace(learning_rate=(1e-4, 3e-4, 1e-3), settings={"sparsity": (0.99, 0.995)},
                               task_learning_rate={"seq-cls": (3e-4, 1e-3, 3e-3)})
    Settings = SupertuningSettings

    def peft_config(self, settings, task):
        from peft import SupertuningConfig

        return SupertuningConfig(task_type=peft_task_type(task), sparsity=settings.sparsity,
                                 select_top=settings.select_top, r=settings.r, target_modules=settings.target_modules)


@hookimpl
def register_methods(register):
    register(SuperTuning())
