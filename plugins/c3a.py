"""C3A: the update is a block-circulant matrix applied by FFT-based circular convolution (Chen et al., 2025)."""

from __future__ import annotations

from pydantic import Field

from autopeft import (Capabilities, PeftMethod, SearchSpace, Targeted, divisor_of_layer_sizes, hookimpl,
                      peft_task_type)


class C3ASettings(Targeted):
    block_size: int = Field(default=256, ge=1, description="must divide the in and out sizes of targeted layers; "
                                                          "left unset, the largest size up to 256 that does")


class C3A(PeftMethod):
    name = "c3a"
    family = "frequency"
    description = "Block-circulant updates computed by FFT convolution: full-rank-capable, few parameters."
    peft_type = "C3A"
    capabilities = Capabilities(merge=True, quantized=False, multi_adapter=True, lora_convertible=True)
    search_space = SearchSpace(learning_rate=(1e-2, 3e-2, 1e-1), settings={"block_size": (64, 256)},
                               task_learning_rate={"seq-cls": (1e-1, 3e-1, 9e-1)})
    Settings = C3ASettings
    probe_settings = {"block_size": 16}

    def settings_for_model(self, model, settings):
        if "block_size" in settings.model_fields_set:
            return settings
        return settings.model_copy(update={"block_size": divisor_of_layer_sizes(model, settings.block_size)})

    def build(self, model, settings, task):
        return super().build(model, self.settings_for_model(model, settings), task)

    def peft_config(self, settings, task):
        from peft import C3AConfig

        return C3AConfig(task_type=peft_task_type(task), block_size=settings.block_size,
                         target_modules=settings.target_modules)


@hookimpl
def register_methods(register):
    register(C3A())
