"""RoAd: each output pair of a layer is rotated and scaled by a trained 2D rotation (Liao & Monz, 2024)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from autopeft import (BadInputError, Capabilities, PeftMethod, SearchSpace, Targeted, divisor_of_layer_sizes,
                      hookimpl, peft_task_type)


class RoadSettings(Targeted):
    variant: Literal["road_1", "road_2", "road_4"] = Field(
        default="road_2", description="road_1: one angle and scale per output pair; road_2: per element (2x); "
                                      "road_4: two per element (4x)")
    group_size: int = Field(default=64, ge=2, multiple_of=2,
                            description="elements paired for rotation; must divide the out sizes of targeted layers; "
                                        "left unset, the largest even size up to 64 that does")


class RoAd(PeftMethod):
    name = "road"
    family = "rotation"
    description = "Trained 2D rotations and scales of output pairs: very few parameters, mergeable, batchable."
    peft_type = "ROAD"
    capabilities = Capabilities(merge=True, quantized=True, multi_adapter=True, lora_convertible=False)
    # PEFT's MetaMathQA comparison trains road_2, group 64, on q/v at 1e-3
    search_space = SearchSpace(learning_rate=(3e-4, 1e-3, 3e-3), settings={"variant": ("road_1", "road_2", "road_4")},
                               task_learning_rate={"seq-cls": (3e-3, 1e-2, 3e-2)})
    Settings = RoadSettings
    probe_settings = {"group_size": 32}

    def settings_for_model(self, model, settings):
        if "group_size" in settings.model_fields_set:
            return settings
        common = divisor_of_layer_sizes(model, 1 << 30)  # the gcd of the blocks' layer sizes
        if common == 1 << 30:  # no linear layer in the blocks: PEFT says what is wrong
            return settings
        if common % 2:
            raise BadInputError(f"method road pairs output elements in groups of an even size, but this model's "
                                f"layer sizes have no even common divisor ({common}); set group_size and "
                                "target_modules to layers it divides")
        wanted = settings.group_size // 2
        half = max(d for d in range(1, min(wanted, common // 2) + 1) if (common // 2) % d == 0)
        return settings.model_copy(update={"group_size": 2 * half})

    def build(self, model, settings, task):
        return super().build(model, self.settings_for_model(model, settings), task)

    def peft_config(self, settings, task):
        from peft import RoadConfig

        return RoadConfig(task_type=peft_task_type(task), variant=settings.variant, group_size=settings.group_size,
                          target_modules=settings.target_modules)

    def build_from_peft_config(self, model, peft_config):
        try:
            return super().build_from_peft_config(model, peft_config)
        except ValueError as exc:
            if "divisible by group_size" in str(exc):
                raise BadInputError(f"method road: group_size {peft_config.group_size} does not divide the out size "
                                    "of every targeted layer; choose a group_size that does") from None
            raise


@hookimpl
def register_methods(register):
    register(RoAd())
