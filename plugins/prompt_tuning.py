"""Prompt tuning: learned soft-prompt embeddings prepended to the input (Lester et al., 2021)."""

from __future__ import annotations

from autopeft import Capabilities, PeftMethod, PromptSettings, SearchSpace, hookimpl, peft_task_type


class PromptTuning(PeftMethod):
    name = "prompt_tuning"
    aliases = ("prompt-tuning",)
    family = "prompt"
    description = "Learned virtual-token embeddings prepended to every input; the model itself is untouched."
    peft_type = "PROMPT_TUNING"
    # PEFT prepends the virtual tokens to a token classifier's input too, so its tags no longer line up
    # with the words (a shape error in the loss): not for token classification
    tasks = ("causal-lm", "seq-cls")
    layer_types = ("embedding",)
    capabilities = Capabilities(merge=False, quantized=True, multi_adapter=True, lora_convertible=False)
    search_space = SearchSpace(learning_rate=(1e-3, 1e-2, 3e-2), settings={"num_virtual_tokens": (20, 50)})
    Settings = PromptSettings
    probe_settings = {"num_virtual_tokens": 4}

    def peft_config(self, settings, task):
        from peft import PromptTuningConfig

        return PromptTuningConfig(task_type=peft_task_type(task), num_virtual_tokens=settings.num_virtual_tokens)


@hookimpl
def register_methods(register):
    register(PromptTuning())
