"""LLaMA-Adapter: trained adaption prompts in the top attention layers, mixed in through a zero-initialised gate (Zhang et al., 2023)."""

from __future__ import annotations

from pydantic import Field

from autopeft import BadInputError, Capabilities, MethodSettings, PeftMethod, SearchSpace, hookimpl, peft_task_type

#: the model types PEFT's adaption prompt knows how to wrap (peft.tuners.adaption_prompt.config)
SUPPORTED = ("llama", "mistral", "gpt2")


class AdaptionPromptSettings(MethodSettings):
    adapter_len: int = Field(default=100, ge=1, le=4096, description="adaption-prompt tokens per adapted layer")
    adapter_layers: int | None = Field(default=None, ge=1, description="adapted attention layers, counted from "
                                                                        "the top; None: every layer")


class AdaptionPrompt(PeftMethod):
    name = "adaption_prompt"
    aliases = ("llama_adapter", "llama-adapter", "adaption-prompt")
    family = "prompt"
    description = "LLaMA-Adapter: gated learned prompts in the top attention layers (Llama, Mistral, GPT-2 only)."
    peft_type = "ADAPTION_PROMPT"
    # PEFT's adaption prompt wraps Llama-style causal LMs only; a classifier's new head would not be trained
    tasks = ("causal-lm",)
    layer_types = ("attention",)
    capabilities = Capabilities(merge=False, quantized=False, multi_adapter=True, lora_convertible=False)
    # PEFT's MetaMathQA comparison: 100 tokens in all 28 layers; 5e-3 (38% on GSM8K) beat 5e-4 (21%)
    search_space = SearchSpace(learning_rate=(1e-3, 5e-3, 1e-2), settings={"adapter_len": (10, 100)})
    Settings = AdaptionPromptSettings

    def settings_for_model(self, model, settings):
        if settings.adapter_layers is not None:
            return settings
        layers = getattr(_config(model), "num_hidden_layers", None) or getattr(_config(model), "n_layer", None)
        return settings.model_copy(update={"adapter_layers": layers}) if layers else settings

    def build(self, model, settings, task):
        model_type = getattr(_config(model), "model_type", None)
        if model_type not in SUPPORTED:
            raise BadInputError(f"method {self.name} (LLaMA-Adapter) works on {', '.join(SUPPORTED)} models only; "
                                f"this one is {model_type!r}")
        settings = self.settings_for_model(model, settings)
        layers = getattr(_config(model), "num_hidden_layers", None) or getattr(_config(model), "n_layer", None)
        if layers and settings.adapter_layers and settings.adapter_layers > layers:
            raise BadInputError(f"method {self.name}: adapter_layers is {settings.adapter_layers}, but the model "
                                f"has {layers} layers")
        return super().build(model, settings, task)

    def peft_config(self, settings, task):
        from peft import AdaptionPromptConfig

        if settings.adapter_layers is None:
            raise BadInputError(f"method {self.name}: adapter_layers is unset and the model's layer count unknown")
        return AdaptionPromptConfig(task_type=peft_task_type(task), adapter_len=settings.adapter_len,
                                    adapter_layers=settings.adapter_layers)


def _config(model):
    return getattr(model, "config", None)


@hookimpl
def register_methods(register):
    register(AdaptionPrompt())
