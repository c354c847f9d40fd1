"""WaveFT: sparse trained wavelet coefficients, inverse-transformed into the update (arXiv:2505.12532, 2025)."""

from __future__ import annotations

from pydantic import Field

from autopeft import Capabilities, PeftMethod, SearchSpace, Targeted, hookimpl, peft_task_type


class WaveFTSettings(Targeted):
    n_frequency: int = Field(default=5000, ge=1, description="trained wavelet coefficients per layer "
                                                            "(at most the layer's in x out size)")
    scaling: float = Field(default=25.0, gt=0, description="scale of the reconstructed update")
    wavelet_family: str = Field(default="db1", description="the wavelet (PEFT's supported families)")


class WaveFT(PeftMethod):
    name = "waveft"
    family = "frequency"
    description = "Sparse trained wavelet coefficients per layer, inverse-transformed into a dense, mergeable update."
    peft_type = "WAVEFT"
    capabilities = Capabilities(merge=True, quantized=False, multi_adapter=True, lora_convertible=True)
    # PEFT's MetaMathQA comparison trains 5000 coefficients, scaling 25, on q/v at 1e-4
    search_space = SearchSpace(learning_rate=(3e-5, 1e-4, 3e-4), settings={"n_frequency": (2592, 5000)},
                               task_learning_rate={"seq-cls": (3e-4, 1e-3, 3e-3)})
    Settings = WaveFTSettings
    probe_settings = {"n_frequency": 64}

    def peft_config(self, settings, task):
        from peft import WaveFTConfig

        return WaveFTConfig(task_type=peft_task_type(task), n_frequency=settings.n_frequency,
                            scaling=settings.scaling, wavelet_family=settings.wavelet_family,
                            target_modules=settings.target_modules)


@hookimpl
def register_methods(register):
    register(WaveFT())
