"""FourierFT: the update is learned as a few spectral coefficients of its 2-D Fourier transform (Gao et al., 2024)."""

from __future__ import annotations

from pydantic import Field

from autopeft import Capabilities, PeftMethod, SearchSpace, Targeted, hookimpl, peft_task_type


class FourierFTSettings(Targeted):
    n_frequency: int = Field(default=1000, ge=1, description="spectral coefficients learned per layer")
    scaling: float = Field(default=150.0, gt=0)


class FourierFT(PeftMethod):
    name = "fourierft"
    family = "frequency"
    description = "Learns a sparse set of Fourier coefficients of each update: extremely small adapters."
    peft_type = "FOURIERFT"
    capabilities = Capabilities(merge=True, quantized=False, multi_adapter=True, lora_convertible=True)
    search_space = SearchSpace(learning_rate=(1e-3, 5e-3, 2e-2), settings={"n_frequency": (1000, 5000)},
                               task_learning_rate={"seq-cls": (5e-3, 2e-2, 5e-2)})
    Settings = FourierFTSettings
    probe_settings = {"n_frequency": 64}

    def peft_config(self, settings, task):
        from peft import FourierFTConfig

        return FourierFTConfig(task_type=peft_task_type(task), n_frequency=settings.n_frequency,
                               scaling=settings.scaling, target_modules=settings.target_modules)


@hookimpl
def register_methods(register):
    register(FourierFT())
