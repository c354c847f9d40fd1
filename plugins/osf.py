"""OSF: each weight's top singular directions are frozen and only the rest of its spectrum is trained, orthogonal to them (Orthogonal Subspace Fine-tuning; Nayak et al., 2025)."""

from __future__ import annotations

import re
import warnings

from pydantic import Field

from autopeft import Capabilities, PeftMethod, SearchSpace, Targeted, hookimpl, peft_task_type


class OsfSettings(Targeted):
    r: int = Field(default=128, ge=1, le=65536, description="singular directions trained per layer (the "
                                                            "smallest ones; the rest stay frozen); at most the "
                                                            "layer's smaller size less one")


class OSF(PeftMethod):
    name = "osf"
    family = "subspace"
    description = "Trains each weight's least significant singular directions, orthogonal to the frozen top ones."
    peft_type = "OSF"
    capabilities = Capabilities(merge=True, quantized=False, multi_adapter=True, lora_convertible=False)
    # PEFT's MetaMathQA comparison: 128 trained directions in every linear layer at 5e-5
    search_space = SearchSpace(learning_rate=(2e-5, 5e-5, 1e-4), settings={"r": (64, 128)},
                               task_learning_rate={"seq-cls": (1e-4, 3e-4, 1e-3)})
    Settings = OsfSettings

    def build(self, model, settings, task):
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_OSF_TARGET_MODULES_MAPPING as DEFAULTS

        config = self.peft_config(settings, task)
        config.rank_pattern = frozen_ranks(model, settings.r)
        if config.target_modules is None and model.config.model_type not in DEFAULTS:
            config.target_modules = "all-linear"  # what PEFT falls back to, said here so the head stays out of it
        with warnings.catch_warnings():
            # the pattern names every linear layer, the targeted ones and the rest (the head): PEFT warns of the rest
            warnings.filterwarnings("ignore", message="The following rank_pattern keys did not match",
                                    category=RuntimeWarning)
            return self.build_from_peft_config(model, config)

    def peft_config(self, settings, task):
        from peft import OSFConfig

        return OSFConfig(task_type=peft_task_type(task), target_modules=settings.target_modules)


def frozen_ranks(model, trained: int) -> dict[str, int]:
    """OSF's ``rank_pattern``: for each linear layer, the singular directions kept frozen (PEFT's
    ``effective_rank``), its smaller size less ``trained`` and at least one. One pattern per layer
    name where all layers of that name agree in size, else one per layer. A pattern matches the
    whole last part of a module's name (``(?<![^.])q_proj$``) both as OSF searches it and as PEFT's
    ``get_pattern_key`` matches it (``(.*\.)?(KEY)$``)."""
    import torch

    sizes: dict[str, set[int]] = {}
    full: dict[str, int] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name:
            smaller = min(module.in_features, module.out_features)
            sizes.setdefault(name.rsplit(".", 1)[-1], set()).add(smaller)
            full[name] = smaller
    pattern = {}
    for leaf, found in sizes.items():
        if len(found) == 1:
            pattern[rf"(?<![^.]){re.escape(leaf)}$"] = max(found.pop() - trained, 1)
    for name, smaller in full.items():
        if len(sizes[name.rsplit(".", 1)[-1]]) > 1:
            pattern[rf"^{re.escape(name)}$"] = max(smaller - trained, 1)
    return pattern


@hookimpl
def register_methods(register):
    register(OSF())
