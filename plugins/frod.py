"""FRoD: weights rewritten in a basis shared by alike layers, trained through per-layer scales and a sparse coupling matrix (AAAI 2026)."""

from __future__ import annotations

import contextlib

from pydantic import Field

from autopeft import Capabilities, PeftMethod, SearchSpace, Targeted, hookimpl, on_meta_device, peft_task_type


class FrodSettings(Targeted):
    sparse_rate: float = Field(default=0.01, gt=0, le=1, description="fraction of each in×in coupling matrix "
                                                                     "that is trained (off the diagonal)")
    dropout: float = Field(default=0.0, ge=0, lt=1, description="dropout on the adapter's input")


class FRoD(PeftMethod):
    name = "frod"
    family = "subspace"
    description = "Joint decomposition of alike layers; trains diagonal scales and a sparse coupling: mergeable."
    peft_type = "FROD"
    capabilities = Capabilities(merge=True, quantized=False, multi_adapter=True, lora_convertible=False)
    # PEFT's MetaMathQA comparison: sparse rate 0.01 on q/v at 1e-4 (51% on GSM8K; 0.02 at 1e-3: 27%)
    search_space = SearchSpace(learning_rate=(5e-5, 1e-4, 3e-4), settings={"sparse_rate": (0.01, 0.02)},
                               task_learning_rate={"seq-cls": (3e-4, 1e-3, 3e-3)})
    Settings = FrodSettings

    def peft_config(self, settings, task):
        from peft import FrodConfig

        return FrodConfig(task_type=peft_task_type(task), sparse_rate=settings.sparse_rate,
                          frod_dropout=settings.dropout, target_modules=settings.target_modules, progressbar=False)

    def build_from_peft_config(self, model, peft_config):
        if not on_meta_device(model):
            return super().build_from_peft_config(model, peft_config)
        with _decompositions_without_values():
            built = super().build_from_peft_config(model, peft_config)
        _dense_coupling_on_meta(built)
        return built


@contextlib.contextmanager
def _decompositions_without_values():
    """On the meta device, make FRoD's shared bases and per-layer factors with their shapes and dtypes
    but no values (PEFT decomposes the real stacked weights, on the CPU): the trained scales and sparse
    coupling values, and every frozen buffer, are as a real build makes them."""
    from peft.tuners.frod import layer, model

    original_init = model.FrodModel._init_frod_projections
    original_factors = layer.FrodLayer._calculate_frod_u_and_lambda

    def init_projections(self, config, adapter_name):
        if not on_meta_device(self.model):
            return original_init(self, config, adapter_name)
        return _init_projections_on_meta(self, config, adapter_name)

    def factors(self, V, W):
        if not W.is_meta:
            return original_factors(self, V, W)
        import torch

        # U (out × in) in the weight's dtype, as update_layer casts it; left unfilled (no memory touched)
        return torch.empty(W.shape, dtype=W.dtype), torch.empty(W.shape[1], dtype=torch.float32, device="meta")

    model.FrodModel._init_frod_projections = init_projections
    layer.FrodLayer._calculate_frod_u_and_lambda = factors
    try:
        yield
    finally:
        model.FrodModel._init_frod_projections = original_init
        layer.FrodLayer._calculate_frod_u_and_lambda = original_factors


def _dense_coupling_on_meta(model):
    """Sparse tensors have no meta kernels: in a meta build's forward pass, make each layer's sparse
    coupling matrix dense from its trained values, as PEFT does for half precision on GPUs (and keep its
    size off ``frod_s_size``, whose values meta tensors lack)."""
    import types

    from peft.tuners.frod.layer import FrodLayer

    for module in model.modules():
        if isinstance(module, FrodLayer):
            module._get_frod_tensors = types.MethodType(_frod_tensors_dense, module)
            module._sparse_activation_mm = types.MethodType(_dense_activation_mm, module)


def _frod_tensors_dense(self, adapter, *, device, dtype):
    import torch

    U = self.frod_U[adapter].to(device=device, dtype=dtype)
    V = self.frod_V[adapter].to(device=device, dtype=dtype)
    indices = self.frod_s_indices[adapter].to(device=device, dtype=torch.long)
    values = self.frod_lambda_s_values[adapter].to(device=device, dtype=dtype)
    lambda_l = self.frod_lambda_l[adapter].to(device=device, dtype=dtype)
    S = torch.zeros(V.shape[0], V.shape[0], device=device, dtype=dtype).index_put((indices[0], indices[1]), values)
    return U, V, S, lambda_l


def _dense_activation_mm(self, z_flat, S):
    return z_flat @ S.t()


def _init_projections_on_meta(tuner, config, adapter_name):
    """PEFT's ``FrodModel._init_frod_projections`` less the decomposition: each category's in×in basis is
    left unfilled; the sparse coupling's positions are drawn as PEFT draws them."""
    from collections import defaultdict

    import torch
    from peft.tuners._buffer_dict import BufferDict
    from peft.tuners.frod import model as frod
    from peft.tuners.tuners_utils import _maybe_include_all_linear_layers
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    weights = defaultdict(dict)
    peft_config = tuner._prepare_adapter_config(config, tuner.get_model_config(tuner.model))
    peft_config = _maybe_include_all_linear_layers(peft_config, tuner.model)
    fallback = 0
    for key, module in tuner.model.named_modules():
        if not tuner._check_target_module_exists(peft_config, key):
            continue
        if isinstance(module, nn.Linear):
            weight = module.weight
        elif isinstance(module, Conv1D):
            weight = module.weight.T
        else:
            continue
        weights[frod._layer_index_from_key(key, fallback)][frod._category_from_key(key)] = weight
        fallback += 1
    if not weights:
        raise ValueError("No layer types compatible with FRoD were found. Please check `peft_config.target_modules`.")
    if not hasattr(tuner, "frod_V"):
        tuner.frod_V, tuner.frod_s_indices, tuner.frod_s_size = nn.ModuleDict(), nn.ModuleDict(), nn.ModuleDict()
    generator = torch.Generator(device="cpu").manual_seed(config.projection_prng_key)
    for category in sorted({c for layer_weights in weights.values() for c in layer_weights}):
        example = next(w[category] for _, w in sorted(weights.items()) if category in w)
        in_dim = example.shape[1]
        if category not in tuner.frod_V:
            for name in ("frod_V", "frod_s_indices", "frod_s_size"):
                getattr(tuner, name)[category] = BufferDict({}, persistent=config.save_projection)
        tuner.frod_V[category][adapter_name] = torch.empty(in_dim, in_dim, dtype=example.dtype)
        off_diagonal = in_dim * in_dim - in_dim
        nnz = min(int(in_dim * in_dim * config.sparse_rate), off_diagonal)
        if config.sparse_rate > 0 and off_diagonal > 0:
            nnz = max(1, nnz)
        if nnz:
            rows, cols = torch.meshgrid(torch.arange(in_dim), torch.arange(in_dim), indexing="ij")
            pairs = torch.stack([rows.flatten(), cols.flatten()], dim=1)
            pairs = pairs[pairs[:, 0] != pairs[:, 1]]
            indices = pairs[torch.randperm(pairs.shape[0], generator=generator)[:nnz]].t().contiguous()
        else:
            indices = torch.empty(2, 0, dtype=torch.long)
        tuner.frod_s_indices[category][adapter_name] = indices
        tuner.frod_s_size[category][adapter_name] = torch.tensor([in_dim, in_dim], dtype=torch.long)


@hookimpl
def register_methods(register):
    register(FRoD())
