"""AdaMSS: the weights' SVD space is segmented into subspaces, each trained with its own tiny low-rank update (Adaptive Multi-Subspace approach, NeurIPS 2025)."""

from __future__ import annotations

import contextlib

from pydantic import Field

from autopeft import Capabilities, PeftMethod, SearchSpace, Targeted, hookimpl, on_meta_device, peft_task_type


class AdamssSettings(Targeted):
    r: int = Field(default=100, ge=1, le=4096, description="rank of each weight's SVD that is segmented "
                                                           "(at most the layer's smaller size)")
    num_subspaces: int = Field(default=32, ge=1, le=1024, description="subspaces the output rows are clustered "
                                                                     "into, each trained separately")
    subspace_rank: int = Field(default=1, ge=1, le=64, description="rank of each subspace's update")


class AdaMSS(PeftMethod):
    name = "adamss"
    family = "subspace"
    description = "SVD subspaces clustered per layer, each with a tiny trained update: very few parameters."
    peft_type = "ADAMSS"
    capabilities = Capabilities(merge=True, quantized=False, multi_adapter=True, lora_convertible=False)
    # PEFT's MetaMathQA comparison: r=100, 32 subspaces of rank 1 on q/v at 1e-4
    search_space = SearchSpace(learning_rate=(1e-4, 3e-4, 1e-3), settings={"num_subspaces": (8, 32)},
                               task_learning_rate={"seq-cls": (3e-4, 1e-3, 3e-3)})
    Settings = AdamssSettings

    def unavailable_reason(self):
        import importlib.util

        if importlib.util.find_spec("sklearn") is None:
            return "AdaMSS clusters each weight's singular vectors with scikit-learn, which is not installed"
        return None

    def peft_config(self, settings, task):
        from peft import AdamssConfig

        return AdamssConfig(task_type=peft_task_type(task), r=settings.r, num_subspaces=settings.num_subspaces,
                            subspace_rank=settings.subspace_rank, target_modules=settings.target_modules)

    def build_from_peft_config(self, model, peft_config):
        if not on_meta_device(model):
            return super().build_from_peft_config(model, peft_config)
        with _clusters_without_values():
            return super().build_from_peft_config(model, peft_config)


@contextlib.contextmanager
def _clusters_without_values():
    """On the meta device, where K-means has no values to cluster, split the rows into the same number of
    even contiguous subspaces. Only which row goes where differs from a real build: the subspaces, and
    (at rank 1, or subspaces of at least ``subspace_rank`` rows) the trained parameters, are the same."""
    import torch
    from peft.tuners.adamss import layer

    original = layer.clustering_Z

    def clustering(vt, num_subspaces, iternum):
        if not vt.is_meta:
            return original(vt, num_subspaces, iternum)
        rows = vt.shape[0]
        k = min(num_subspaces, rows)
        return torch.arange(rows) * k // rows, k

    layer.clustering_Z = clustering
    try:
        yield
    finally:
        layer.clustering_Z = original


@hookimpl
def register_methods(register):
    register(AdaMSS())
