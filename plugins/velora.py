"""VeLoRA: LoRA whose A projection keeps a compressed copy of its input for backward (Miles et al., 2024)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from autopeft import Capabilities, LowRank, SearchSpace, hookimpl, on_meta_device

from .lora import LoRA


class VeloraSettings(LowRank):
    num_groups: int = Field(default=64, ge=1, description="groups each input is split into; each keeps one number "
                                                          "for backward (more: a finer gradient, more memory)")
    init_type: Literal["batch_average", "batch_average_once", "random"] = Field(
        default="batch_average", description="the projection each group is compressed on: the batch's mean "
                                             "(every step, or the first only) or random")


class VeLoRA(LoRA):
    name = "velora"
    description = "LoRA that saves a rank-1 compression of the adapter inputs for backward: less activation memory."
    # bitsandbytes layers refuse VeLoRA
    capabilities = Capabilities(merge=True, quantized=False, multi_adapter=True, lora_convertible=True)
    search_space = SearchSpace(learning_rate=(1e-4, 3e-4, 1e-3), settings={"r": (8, 16, 32)},
                               task_learning_rate={"seq-cls": (3e-4, 1e-3, 3e-3)})
    Settings = VeloraSettings

    def lora_kwargs(self, settings):
        from peft import VeloraConfig

        return {"velora_config": VeloraConfig(num_groups=settings.num_groups, init_type=settings.init_type)}

    def build_from_peft_config(self, model, peft_config):
        net = super().build_from_peft_config(model, peft_config)
        if on_meta_device(net):
            # the projection is refreshed from each batch (group_dim values a layer): on meta keep the one
            # made at init, so that every traced block saves what the alike block it stands for does
            for module in net.modules():
                for adapter in getattr(module, "lora_velora_init_type", {}):
                    module.lora_velora_init_type[adapter] = "random"
        return net


@hookimpl
def register_methods(register):
    register(VeLoRA())
