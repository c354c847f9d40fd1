"""The static cost model: exact parameter counts and adapter size, and predicted peak training memory.

Everything here runs on PyTorch's meta device: the model is instantiated from its config with no
weights, the method's own build function wraps it, and one forward pass is traced (a stack of alike
blocks only until it repeats: the rest take the numbers of one that ran). Parameter counts
and adapter bytes are therefore exact, and the activations are the tensors autograd really saves for
backward with this model code and this adapter code (a saved-tensors hook sees each one), not a
formula per architecture.

Peak memory is the larger of two moments of a training step:

* end of forward / start of backward: weights + optimizer state + saved activations + logits and
  loss (the held logits, the saved log-softmax, and two float32 logit-sized gradients while backward
  starts) + the gradients produced first (those of parameters outside the repeated blocks);
* optimizer step: weights + optimizer state + all gradients + the step's temporaries.

A method that initialises from training data (``data_batches`` > 0: EVA, CorDA, LoRA-GA) has a third
moment, once, before training: weights + what its :meth:`~autopeft.Method.init_memory_bytes` says the
initialisation holds (LoRA-GA's gradients of the full target weights, CorDA's covariances, EVA's SVD
state) + the runtime. The peak is the largest of the three. The meta build has no data, so it builds
the variant's shapes only (see ``autopeft.methods.base.shapes_only``): the data fills values, never
shapes (EVA keeps rank r on every layer), so trainable parameters and adapter size stay exact.

With gradient checkpointing, each block keeps only its input, and one block's activations are
recomputed at a time during backward. Attention is traced as a fused kernel (flash / memory-efficient
SDPA, as on CUDA and on CPU): it keeps q, k, v, its output and the log-sum-exp, never the score matrix.
Framework overhead is the allocator's fragmentation plus the runtime's fixed cost (CUDA context, or
the Python process with torch loaded). On CUDA the caching allocator loses a small fraction of the
activation memory. On CPU, tensors come from glibc malloc: blocks of 32 MiB or more are mmapped and
go back to the system when freed, smaller ones come from the heap, which keeps much of what the
forward pass frees in between (temporaries are freed while saved tensors still sit above them), so
the trace also counts every new tensor the forward pass makes. The heap then holds a few blocks' worth
of those small temporaries at the peak, however deep the model: the next blocks reuse most of the
holes the earlier ones leave (see benchmarks/cpu_memory.py). That is an approximation: the same
architecture built deeper keeps more (see ``HEAP_BLOCKS_RETAINED``).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Any

from pydantic import BaseModel, Field

from .errors import BadInputError, PluginError
from .methods.base import Method, PeftMethod

DTYPES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
          "fp16": "float16", "float16": "float16"}
DEVICES = ("cuda", "cpu", "mps")

#: measured fixed costs: a CUDA context with cuBLAS loaded, and the resident memory of a Python
#: process ready to train, having imported what ``autopeft train`` imports (torch, transformers with
#: its Trainer, peft, autopeft's training module; see benchmarks/cpu_memory.py)
RUNTIME_BYTES = {"cuda": 500 * 2**20, "mps": 300 * 2**20, "cpu": 475 * 2**20}
#: fraction of activation memory lost to the caching allocator's fragmentation on accelerators
FRAGMENTATION = {"cuda": 0.05, "mps": 0.05}
#: glibc's largest mmap threshold (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit): bigger blocks are always
#: mmapped, so freeing them returns them to the system
HEAP_BLOCK_LIMIT = 32 * 2**20
#: how many blocks' worth of the forward pass's small temporaries (those of the mean block) the CPU
#: heap still holds at the peak, however deep the model: an approximation that under-predicts deeper
#: builds of one architecture (why it stays, measured: docs/design/cost-model.md)
HEAP_BLOCKS_RETAINED = 6.5
#: share of all the small temporaries held without blocks to count (a model whose repeated blocks
#: the trace cannot find)
HEAP_RETAINED = 0.55
#: the share with gradient checkpointing, of the temporaries a forward pass that saves makes
#: (measured on SmolLM2-135M, LoRA and full fine-tuning: 0.3 to 1.4, LoRA about 0.3)
HEAP_RETAINED_CHECKPOINTED = 0.3


class MemoryBreakdown(BaseModel):
    """Bytes of each part of peak training memory; they add up to the peak (``init`` only when the peak
    is the initialisation: then gradients, optimizer, activations and logits are 0)."""

    weights: int = Field(description="all parameters and buffers, frozen and trainable (full-weight methods on an "
                                     "accelerator: float32 masters and autocast's half-precision copies)")
    gradients: int = Field(description="gradients alive at the peak")
    optimizer: int = Field(description="optimizer state (and the step's temporaries if the peak is the step)")
    activations: int = Field(description="tensors saved for backward inside the model body")
    logits: int = Field(description="logits, loss and the first gradients of backward")
    communication: int = Field(default=0, description="DDP's gradient buckets, or the block a sharded strategy "
                                                      "gathers (see autopeft.sharding)")
    overhead: int = Field(description="allocator fragmentation and the runtime's fixed cost (and, on a quantised "
                                      "base, the one layer dequantised at a time)")
    runtime: int = Field(description="of the overhead, the fixed cost (CUDA context or process baseline)")
    activations_with_checkpointing: int = Field(description="activations if gradient checkpointing is on")
    activations_without_checkpointing: int = Field(description="activations if it is off")
    init: int = Field(default=0, description="what a data-driven initialisation holds beside the weights, once "
                                             "before training (Method.init_memory_bytes); 0 for other methods")


class Estimate(BaseModel):
    """What training ``model`` with ``method`` costs: the result of ``autopeft estimate``."""

    method: str
    settings: dict[str, Any]
    model: str
    task: str
    device: str
    dtype: str
    batch_size: int
    seq_len: int
    gradient_checkpointing: bool
    quantize: str | None = Field(default=None, description="'4bit' or '8bit': the base's linear layers so stored")
    strategy: str = Field(default="single", description="how several processes split the state (autopeft.sharding); "
                                                         "with several, every memory figure is per device")
    num_processes: int = 1
    trainable_params: int
    total_params: int
    adapter_bytes: int
    peak_memory_bytes: int
    peak_memory_bytes_with_checkpointing: int
    peak_memory_bytes_without_checkpointing: int
    peak_phase: str = Field(description="'forward-backward', 'optimizer-step' or 'initialisation' (a data-driven "
                                        "init, before training): where the peak falls")
    breakdown: MemoryBreakdown


class _Trace(BaseModel):
    """What one meta forward pass revealed."""

    outside_blocks: int = 0  # saved bytes before the first / after the last block, except the head
    head: int = 0  # saved bytes after the last block (final norm, logits, loss)
    largest_head_tensor: int = 0
    blocks: list[int] = []  # saved bytes per block
    block_inputs: list[int] = []  # bytes of each block's input (what checkpointing keeps)
    logits: int = 0  # the logits tensor the caller holds during backward
    # small (heap-sized) tensors made by the forward pass and not saved for backward
    temporaries_outside_blocks: int = 0
    block_temporaries: list[int] = []


def estimate(model: str | None = None, method: str | Method | None = None, *, settings: dict | None = None,
             peft_config: dict | None = None, task: str | None = None, batch_size: int = 4, seq_len: int = 512,
             dtype: str | None = None, device: str = "cuda", gradient_checkpointing: bool = False,
             num_labels: int = 2, trust_remote_code: bool = False, config=None, strategy: str | None = None,
             num_processes: int = 1, quantize: str | None = None, master_weights: bool | None = None) -> Estimate:
    """Estimate the cost of training ``model`` with ``method`` (or an adapter config dict).

    :param model: embedded name, local dir (a dir holding only config.json is enough) or Hub id;
        None picks the task's embedded default.
    :param method: a method name or instance; may be None when ``peft_config`` is given.
    :param settings: the method's settings (validated by the method).
    :param peft_config: the dict of a PEFT ``adapter_config.json``, used instead of ``settings``.
    :param dtype: ``bf16``, ``fp16`` or ``fp32``; default bf16 on accelerators, fp32 on CPU.
    :param config: an already loaded transformers config (skips loading ``model``).
    :param strategy: with ``num_processes`` > 1, how they split the state: ``ddp`` (the default),
        ``zero1``, ``zero2``, ``zero3`` or ``fsdp``; memory figures are then per device and
        ``batch_size`` is each device's micro-batch (see :mod:`autopeft.sharding`).
    :param quantize: ``4bit`` or ``8bit``: the base's linear layers stored as bitsandbytes stores them
        (QLoRA-style, CUDA only; see :mod:`autopeft.quantization`), for methods that support it.
    :param master_weights: whether a half-precision run keeps float32 weights and computes under
        autocast; default: as ``autopeft train`` does, for full-weight methods on accelerators.
        False: the weights themselves are half precision (as PEFT's method-comparison suite trains).
    """
    from .sharding import sharding

    from .methods import adapter_config as ac
    from .models import default_model, load_config, task_of_model
    from .methods.registry import get_method

    if batch_size < 1 or seq_len < 1:
        raise BadInputError(f"batch size and sequence length must be at least 1, got {batch_size} and {seq_len}")
    plan = sharding(strategy, num_processes)
    if device not in DEVICES:
        raise BadInputError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    from .dtypes import short_dtype

    dtype = dtype or ("fp32" if device == "cpu" else "bf16")
    dtype_name = DTYPES.get(short_dtype(dtype) or str(dtype).lower())
    if dtype_name is None:
        raise BadInputError(f"dtype must be one of bf16, fp16, fp32, got {dtype!r}")
    if peft_config is not None and method is None:
        method = ac.method_for(peft_config)
    if method is None:
        raise BadInputError("give a method (--method NAME) or an adapter config (--peft-config FILE)")
    method_obj = get_method(method, source="--method") if isinstance(method, str) else method
    if quantize is not None:
        from .quantization import check_supported

        check_supported(quantize, method_obj)
        if device != "cuda":
            raise BadInputError(f"a {quantize} base trains only on CUDA (bitsandbytes), not on {device}",
                                source="--quantize")
    task = task or task_of(peft_config)
    model_name = model or default_model(task or "causal-lm")
    if config is None:
        config = load_config(model_name, trust_remote_code=trust_remote_code)
    task = task or task_of_model(model_name, config)
    if task not in method_obj.tasks:
        raise BadInputError(f"method {method_obj.name} does not support task {task} (it supports {', '.join(method_obj.tasks)})")
    method_settings = method_obj.settings(settings) if peft_config is None else None

    import torch

    torch_dtype = getattr(torch, dtype_name)
    with _meta_nonzero():
        return _estimate_on_meta(
            config, task, torch_dtype, num_labels, method_obj, method_settings, peft_config, model_name,
            dtype_name, device, batch_size, seq_len, gradient_checkpointing, plan, quantize,
            method_obj.family == "full" and device != "cpu" if master_weights is None else master_weights)


@contextlib.contextmanager
def _meta_nonzero():
    """Let torch.nonzero run on meta tensors (as if every element were non-zero): sparse masks and
    AdaLoRA's rank pattern use it, and only its shape, not its values, matters for costs."""
    import torch.fx.experimental._config as fx_config

    previous = fx_config.meta_nonzero_assume_all_nonzero
    fx_config.meta_nonzero_assume_all_nonzero = True
    try:
        yield
    finally:
        fx_config.meta_nonzero_assume_all_nonzero = previous


def _estimate_on_meta(config, task, torch_dtype, num_labels, method_obj, method_settings, peft_config, model_name,
                      dtype_name, device, batch_size, seq_len, gradient_checkpointing, plan, quantize,
                      master_weights) -> Estimate:
    from .quantization import bytes_saved
    from .sharding import per_device

    limit = getattr(config, "max_position_embeddings", None)
    if limit and seq_len > limit and getattr(config, "position_embedding_type", None) == "absolute":
        raise BadInputError(f"sequence length {seq_len} exceeds this model's {limit} positions", source="--seq-len")
    net, quantized, method_settings = _build_on_meta(config, task, torch_dtype, num_labels, method_obj,
                                                     method_settings, peft_config, quantize)
    trainable = _unique(p for p in net.parameters() if p.requires_grad)
    if not trainable:
        raise PluginError(f"method {method_obj.name} left no trainable parameter on this model")
    weights = _tensor_bytes(_unique(net.parameters())) + _tensor_bytes(_unique(net.buffers()))
    if quantize:
        weights -= bytes_saved(quantized, quantize)
    grads = _tensor_bytes(trainable)
    total_params = sum(p.numel() for p in _unique(net.parameters()))
    trainable_params = sum(p.numel() for p in trainable)
    state_settings = method_settings if method_settings is not None else method_obj.Settings()
    try:
        opt_state = int(method_obj.optimizer_state_bytes(net, state_settings))
    except Exception as exc:
        raise PluginError(f"method {method_obj.name}: optimizer_state_bytes failed: {exc}") from None
    adapter = adapter_bytes(method_obj, net)
    # float32 master weights under half-precision autocast (how training.run trains full-weight methods
    # on accelerators): weights, gradients and optimizer state are float32, and autocast holds a
    # half-precision copy of every matrix it multiplies by until backward has used it
    master = 4 // torch_dtype.itemsize if master_weights else 1
    autocast_copies = _tensor_bytes(p for p in _unique(net.parameters()) if p.dim() >= 2) if master > 1 else 0
    weights += (master - 1) * _tensor_bytes(_unique(net.parameters()))
    grads, opt_state = master * grads, master * opt_state
    token = _TRACE_DEVICE.set(device)
    try:
        trace = _trace(net, task, batch_size, seq_len, num_labels)
    finally:
        _TRACE_DEVICE.reset(token)

    block_layer_grads = _block_param_ids(net)
    nonblock_grads = master * _tensor_bytes(p for p in trainable if id(p) not in block_layer_grads)
    blocks = _blocks(net)
    block_weights = master * max((_tensor_bytes(_unique(b.parameters())) for b in blocks), default=0)
    if quantize and blocks:  # a sharded strategy gathers a block as it is stored
        ids = {id(p) for p in blocks[0].parameters()}
        block_weights -= bytes_saved([q for q in quantized if id(q[2]) in ids], quantize)
    block_grads = master * max((_tensor_bytes(p for p in _unique(b.parameters()) if p.requires_grad) for b in blocks),
                               default=0)
    step_temp = master * _optimizer_step_temporaries(trainable, device)
    # bitsandbytes' matmul dequantises one layer's weight at a time into the compute dtype
    dequantised = max((w.numel() * w.element_size() for _, _, w in quantized), default=0)
    acts_plain = trace.outside_blocks + sum(trace.blocks)
    acts_ckpt = trace.outside_blocks + sum(trace.block_inputs) + (max(trace.blocks) if trace.blocks else 0)
    logits = trace.logits + trace.head + 2 * trace.largest_head_tensor

    def share(gradients: int, optimizer: int):
        return per_device(plan, weights=weights, gradients=gradients, optimizer=optimizer, all_gradients=grads,
                          block_weights=block_weights, block_gradients=block_grads)

    try:
        init = int(method_obj.init_memory_bytes(net, state_settings, batch_size=batch_size, seq_len=seq_len,
                                                activations=acts_plain + logits, device=device)) if method_obj.data_batches else 0
    except Exception as exc:
        raise PluginError(f"method {method_obj.name}: init_memory_bytes failed: {exc}") from None

    def peak(acts: int) -> tuple[int, MemoryBreakdown, str]:
        at_backward = share(nonblock_grads, opt_state)
        at_step = share(grads, opt_state + step_temp)
        forward_backward = acts + logits + autocast_copies + at_backward.gradients + at_backward.optimizer
        optimizer_step = at_step.gradients + at_step.optimizer
        phase = "forward-backward" if forward_backward >= optimizer_step else "optimizer-step"
        held = at_backward if phase == "forward-backward" else at_step
        runtime = RUNTIME_BYTES[device]
        overhead = (runtime + _fragmentation(device, trace, acts + logits, checkpointed=acts == acts_ckpt)
                    + dequantised)
        parts = MemoryBreakdown(
            weights=held.weights + (autocast_copies if phase == "forward-backward" else 0),
            gradients=held.gradients, optimizer=held.optimizer,
            activations=acts if phase == "forward-backward" else 0,
            logits=logits if phase == "forward-backward" else 0,
            communication=held.communication, overhead=overhead, runtime=runtime,
            activations_with_checkpointing=acts_ckpt, activations_without_checkpointing=acts_plain)
        total = (parts.weights + parts.gradients + parts.optimizer + parts.activations + parts.logits
                 + parts.communication + parts.overhead)
        if init and weights + init + runtime > total:  # the one-off initialisation, on the whole model
            parts = MemoryBreakdown(weights=weights, gradients=0, optimizer=0, activations=0, logits=0, overhead=runtime,
                                    runtime=runtime, init=init, activations_with_checkpointing=acts_ckpt,
                                    activations_without_checkpointing=acts_plain)
            return weights + init + runtime, parts, "initialisation"
        return total, parts.model_copy(update={"init": init}), phase

    with_ckpt, _, _ = peak(acts_ckpt)
    without_ckpt, _, _ = peak(acts_plain)
    chosen, breakdown, phase = peak(acts_ckpt if gradient_checkpointing else acts_plain)
    shown_settings = (method_settings.model_dump(mode="json") if method_settings is not None
                      else {k: v for k, v in peft_config.items() if not k.startswith("_")})
    return Estimate(
        method=method_obj.name, settings=shown_settings, model=model_name, task=task, device=device,
        dtype=dtype_name, batch_size=batch_size, seq_len=seq_len, gradient_checkpointing=gradient_checkpointing,
        quantize=quantize, strategy=plan.strategy, num_processes=plan.num_processes,
        trainable_params=trainable_params, total_params=total_params, adapter_bytes=adapter,
        peak_memory_bytes=chosen, peak_memory_bytes_with_checkpointing=with_ckpt,
        peak_memory_bytes_without_checkpointing=without_ckpt, peak_phase=phase, breakdown=breakdown)


def _fragmentation(device: str, trace: _Trace, activations: int, checkpointed: bool) -> int:
    """Bytes the allocator holds beyond the live tensors at the peak."""
    if device != "cpu":
        return int(FRAGMENTATION[device] * activations)
    temporaries = trace.temporaries_outside_blocks + sum(trace.block_temporaries)
    if checkpointed:
        # every block's tensors are temporaries on the way forward and again when it is recomputed in
        # backward, but fewer are alive at once, so the heap's share is smaller
        return int(HEAP_RETAINED_CHECKPOINTED * temporaries)
    if trace.block_temporaries:
        blocks = trace.block_temporaries
        return int(min(temporaries, HEAP_BLOCKS_RETAINED * sum(blocks) / len(blocks)))  # a shallow model keeps all
    return int(HEAP_RETAINED * temporaries)


def task_of(peft_config: dict | None) -> str | None:
    if not peft_config:
        return None
    from .tasks import task_of_peft_type

    return task_of_peft_type(peft_config.get("task_type"))


def meta_model(config, task: str, num_labels: int = 2, torch_dtype=None):
    """The model of ``config`` for ``task`` on the meta device: its modules and shapes, no weights
    (milliseconds, where loading the weights takes seconds to minutes)."""
    import torch
    import transformers

    from .tasks import AUTO_CLASSES, CLASSIFICATION_TASKS

    _register_trace_attention()
    auto = getattr(transformers, AUTO_CLASSES[task])
    kwargs = {"num_labels": num_labels} if task in CLASSIFICATION_TASKS else {}
    dtype = torch_dtype or torch.float32
    try:
        config = config.__class__.from_dict({**config.to_dict(), **kwargs})
        with torch.device("meta"):
            try:
                return auto.from_config(config, dtype=dtype, attn_implementation="autopeft_trace")
            except (ValueError, TypeError):  # architecture without the attention interface
                return auto.from_config(config, dtype=dtype)
    except Exception as exc:
        raise BadInputError(f"cannot build a {task} model from this config: {str(exc).splitlines()[0]}",
                            source="--model") from None


def _build_on_meta(config, task, torch_dtype, num_labels, method_obj, method_settings, peft_config, quantize=None):
    """The model with the method applied, on the meta device, (with ``quantize``) the base layers
    bitsandbytes would convert, and the settings as the method adapted them to the model (what a
    training run records)."""
    import torch

    from .methods import adapter_config as ac

    net = meta_model(config, task, num_labels, torch_dtype)
    if quantize:
        from .quantization import quantized_layers

        quantized = quantized_layers(net, task)
    else:
        quantized = []
    if isinstance(method_obj, PeftMethod):  # names that match no module: refused here, not dropped by PEFT
        from .methods.targets import check_adapter_config, check_module_settings

        if peft_config is not None:
            check_adapter_config(net, peft_config)
        else:
            check_module_settings(net, method_settings, method=method_obj.name)
    try:
        if peft_config is not None:
            if not isinstance(method_obj, PeftMethod):
                raise BadInputError(f"method {method_obj.name} does not take a PEFT adapter config")
            built = method_obj.build_from_peft_config(net, ac.to_peft_config(peft_config, task))
        else:
            method_settings = method_obj.settings_for_model(net, method_settings)
            built = method_obj.build(net, method_settings, task)
    except BadInputError:
        raise
    except NotImplementedError as exc:
        # e.g. an initialisation that clusters or decomposes the real weights
        raise PluginError(f"method {method_obj.name} needs real weights to initialise, so its cost cannot be "
                          f"computed from the config alone ({str(exc).strip().splitlines()[0]})") from None
    except (ValueError, TypeError, KeyError) as exc:
        # PEFT validates configs against the model with ValueError: that is the user's input
        raise BadInputError(f"method {method_obj.name} cannot be applied to this model: "
                            f"{str(exc).strip().splitlines()[0]}") from None
    except Exception as exc:
        raise PluginError(f"method {method_obj.name} failed to build on the meta device: "
                          f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}") from None
    if not isinstance(built, torch.nn.Module):
        raise PluginError(f"method {method_obj.name} (plugin {method_obj.source}) built a {type(built).__name__}, "
                          f"not a torch module")
    return built, quantized, method_settings


# Which device the trace stands for: its attention keeps what that device's kernel keeps.
_TRACE_DEVICE: contextvars.ContextVar[str] = contextvars.ContextVar("autopeft_trace_device", default="cuda")


def _register_trace_attention() -> None:
    """A stand-in attention that keeps for backward exactly what PyTorch's SDPA keeps on the traced device."""
    import torch
    from transformers import AttentionInterface

    if "autopeft_trace" in AttentionInterface._global_mapping:
        return

    class _FusedAttention(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v):
            out = torch.empty_like(q)
            lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
            ctx.save_for_backward(q, k, v, out, lse)
            return out

        @staticmethod
        def backward(ctx, grad):  # pragma: no cover - the trace never runs backward
            q, k, v, _, _ = ctx.saved_tensors
            return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)

    def attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                  **kwargs):
        if dropout and _TRACE_DEVICE.get() == "cpu":
            # The CPU flash kernel has no dropout, so PyTorch falls back to the math path, which keeps the
            # attention probabilities and the dropout mask: run that path itself on meta to see them.
            causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", False))
            causal = causal and attention_mask is None and query.shape[2] > 1
            out, _ = torch.ops.aten._scaled_dot_product_attention_math(
                query, key, value, attention_mask, dropout, causal, scale=scaling,
                enable_gqa=query.shape[1] != key.shape[1])
        else:
            out = _FusedAttention.apply(query, key, value)
        return out.transpose(1, 2).contiguous(), None

    AttentionInterface.register("autopeft_trace", attention)


def _trace(net, task: str, batch_size: int, seq_len: int, num_labels: int, *, every_block: bool = False) -> _Trace:
    """Trace one forward pass of ``net`` on meta tensors.

    Within a run of alike blocks (same structure and settings, inputs of the same shape that require
    grad alike: :func:`_block_signature`), every block from the third on would save and make what the
    second did, so it is not run: it takes the second's numbers, and a view of its input stands in for
    its output (see :class:`_RepeatedBlocks`). A 30-layer decoder is traced in three blocks' time.
    ``every_block`` runs them all, as the tests do to check that both agree.
    """
    import torch

    blocks = _blocks(net)
    known = {_storage_key(t) for t in [*net.parameters(), *net.buffers()]}
    seen: set[int] = set()
    kept: list = []
    result = _Trace(blocks=[0] * len(blocks), block_inputs=[0] * len(blocks), block_temporaries=[0] * len(blocks))
    made: dict[int, tuple[int, Any]] = {}  # storage key -> (bytes, region) of each small tensor the forward makes
    where = {"block": None, "after": False}
    handles = []

    def enter(index):
        def hook(module, args, kwargs):
            where["block"] = index
            hidden = args[0] if args else next(iter(kwargs.values()), None)
            if isinstance(hidden, torch.Tensor) and result.block_inputs[index] == 0:
                result.block_inputs[index] = hidden.numel() * hidden.element_size()
        return hook

    def leave(index):
        def hook(module, args, kwargs, output):
            where["block"] = None
            where["after"] = index == len(blocks) - 1
        return hook

    for i, block in enumerate(blocks):
        handles.append(block.register_forward_pre_hook(enter(i), with_kwargs=True))
        handles.append(block.register_forward_hook(leave(i), with_kwargs=True))
    repeated = None if every_block else _RepeatedBlocks(blocks, seen)

    def pack(tensor):
        key = _storage_key(tensor)
        if key in known or key in seen:
            return tensor
        seen.add(key)
        kept.append(tensor)  # keep it alive: a freed storage's address could be reused and look "seen"
        nbytes = _saved_bytes(tensor)
        made.pop(key, None)  # saved, so not a temporary
        if where["block"] is not None:
            result.blocks[where["block"]] += nbytes
        elif where["after"]:
            result.head += nbytes
            result.largest_head_tensor = max(result.largest_head_tensor, nbytes)
        else:
            result.outside_blocks += nbytes
        return tensor

    def made_tensor(tensor):
        key = _storage_key(tensor)
        if key in known or key in seen or key in made:
            return
        nbytes = _saved_bytes(tensor)
        if 0 < nbytes < HEAP_BLOCK_LIMIT:
            made[key] = (nbytes, where["block"])
            kept.append(tensor)

    ids = torch.zeros(batch_size, seq_len, dtype=torch.long, device="meta")
    # one label per token (causal LM, token classification) or per sequence (sequence classification)
    labels = torch.zeros(batch_size, dtype=torch.long, device="meta") if task == "seq-cls" else ids
    net.train()
    try:
        with _data_branches_not_taken(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
                _NewTensors(made_tensor):
            out = net(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
    except Exception as exc:
        raise PluginError(f"tracing a training step failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    finally:
        for handle in handles:
            handle.remove()
        if repeated is not None:
            repeated.restore()
    for nbytes, block in made.values():
        if block is None:
            result.temporaries_outside_blocks += nbytes
        else:
            result.block_temporaries[block] += nbytes
    if repeated is not None:
        repeated.fill_in(result, made)
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor) and _storage_key(logits) not in seen:
        result.logits = logits.numel() * logits.element_size()
    return result


class _RepeatedBlocks:
    """Skips the blocks of a trace that would repeat the one before them, and fills in their numbers.

    Each block gets a ``forward`` that runs the block unless the two blocks before it were alike
    (:func:`_block_signature`, and inputs alike) and it is alike too; then it returns a view of its
    input shaped as the last run block's output. The second block of a run stands for the rest: the
    first also saves what all of them share (rotary tables, the mask), and only from the second on is
    the input the output of an alike block.

    The small temporaries need care at the run's edges: a block's output is a temporary unless the
    next block saves it, so the stand-for block's own output (the one the skipped blocks pass on)
    counts as what the *last* block of the run leaves to whatever follows.
    """

    def __init__(self, blocks: list, seen: set[int]):
        self.seen = seen
        self.signatures = [_block_signature(block) for block in blocks]
        self.keys: list[tuple | None] = [None] * len(blocks)
        self.ran: dict[int, tuple[bool, int, int, Any]] = {}  # block -> (saved its input, out key, out bytes, out)
        self.runs: list[list[int]] = []  # [stand-for block, first skipped, last skipped]
        # a block with a forward of its own (a hook set on the instance) is left alone, and always runs
        self.wrapped = [block for block, signature in zip(blocks, self.signatures) if signature is not None]
        for i, block in enumerate(blocks):
            if self.signatures[i] is not None:
                block.forward = self._forward(i, type(block).forward.__get__(block))

    def restore(self) -> None:
        for block in self.wrapped:
            del block.forward

    def _forward(self, index: int, original):
        import torch

        def forward(*args, **kwargs):
            hidden = args[0] if args else kwargs.get("hidden_states")
            if isinstance(hidden, torch.Tensor):
                self.keys[index] = (self.signatures[index], hidden.requires_grad, tuple(hidden.shape), hidden.dtype)
                standin = self._standin(index, hidden)
                if standin is not None:
                    return standin
            output = original(*args, **kwargs)
            first = output[0] if isinstance(output, tuple) and output else output
            if isinstance(hidden, torch.Tensor) and isinstance(first, torch.Tensor):
                self.ran[index] = (_storage_key(hidden) in self.seen, _storage_key(first), _saved_bytes(first), output)
            return output
        return forward

    def _standin(self, index: int, hidden):
        if index < 2 or not self.keys[index] == self.keys[index - 1] == self.keys[index - 2]:
            return None
        if self.runs and self.runs[-1][2] == index - 1:
            stand_for = self.runs[-1][0]
        elif index - 1 in self.ran and index - 2 in self.ran:
            stand_for = index - 1
        else:
            return None
        standin = _standin_output(self.ran[stand_for][3], hidden)
        if standin is None:
            return None
        if self.runs and self.runs[-1][2] == index - 1:
            self.runs[-1][2] = index
        else:
            self.runs.append([stand_for, index, index])
        return standin

    def fill_in(self, result: _Trace, made: dict[int, tuple[int, Any]]) -> None:
        """Give the skipped blocks the stand-for block's numbers, with its output counted where it belongs."""
        for stand_for, first, last in self.runs:
            saved_input, out_key, out_bytes, _ = self.ran[stand_for]
            out = out_bytes if 0 < out_bytes < HEAP_BLOCK_LIMIT else 0
            left_over = out if out_key in made else 0  # nothing after the run saved it
            own = result.block_temporaries[stand_for] - left_over  # without its output
            steady = own + (0 if saved_input else out)
            result.block_temporaries[stand_for] = steady
            for i in range(first, last + 1):
                result.blocks[i] = result.blocks[stand_for]
                result.block_temporaries[i] = steady
            result.block_temporaries[last] = own + left_over


def _standin_output(output, hidden):
    """``output`` (a block's: a tensor, or a tuple starting with one) with its hidden state replaced
    by a view of ``hidden``; None when the output has another form or another shape."""
    import torch

    first = output[0] if isinstance(output, tuple) and output else output
    if not isinstance(first, torch.Tensor) or first.shape != hidden.shape or first.dtype != hidden.dtype:
        return None
    view = hidden.view_as(hidden)  # a new tensor on the same storage: nothing new is allocated or saved
    return (view, *output[1:]) if isinstance(output, tuple) else view


def _block_signature(block) -> tuple | None:
    """What makes two blocks trace alike: each submodule's class, the shapes, dtypes and trainability
    of its parameters and buffers, and its plain settings (a sliding-window flag, an adapter's rank),
    but not its position in the stack. None for a block with a forward of its own already."""
    if "forward" in block.__dict__:
        return None
    parts = []
    for name, module in block.named_modules():
        settings = tuple(sorted((k, v) for k, v in vars(module).items()
                                if isinstance(v, (bool, int, float, str, type(None)))
                                and not k.startswith("_") and k not in _POSITION_ATTRIBUTES))
        tensors = tuple((n, tuple(t.shape), t.dtype, t.requires_grad)
                        for n, t in (*module.named_parameters(recurse=False), *module.named_buffers(recurse=False))
                        if t is not None)
        parts.append((name, type(module).__qualname__, settings, tensors))
    return tuple(parts)


#: attributes that hold a block's position in the stack, not something that changes what it computes
_POSITION_ATTRIBUTES = frozenset({"layer_idx", "layer_id", "layer_index", "layer_number", "block_idx", "idx"})


def _NewTensors(callback):
    """A dispatch mode that hands ``callback`` every tensor an operator returns (views included: the
    callback keys them by storage)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    class NewTensors(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for tensor in (out if isinstance(out, (tuple, list)) else (out,)):
                if isinstance(tensor, torch.Tensor) and not tensor.is_sparse:
                    callback(tensor)
            return out

    return NewTensors()


@contextlib.contextmanager
def _data_branches_not_taken():
    """Meta tensors have no values, so ``if tensor.any():`` cannot be decided. Adapters use such
    branches for guards (``if logits.isinf().any(): raise``), so the trace takes the normal path."""
    import torch

    original = torch.Tensor.__bool__

    def meta_false(self):
        return False if self.is_meta else original(self)

    torch.Tensor.__bool__ = meta_false
    try:
        yield
    finally:
        torch.Tensor.__bool__ = original


def _blocks(net) -> list:
    """The repeated blocks (decoder/encoder layers) gradient checkpointing works on, in order."""
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer
    except ImportError:  # older transformers
        GradientCheckpointingLayer = ()
    names = set(getattr(_unwrap(net), "_no_split_modules", None) or [])
    found = [m for m in net.modules()
             if (GradientCheckpointingLayer and isinstance(m, GradientCheckpointingLayer))
             or type(m).__name__ in names]
    # keep the outermost ones only (a block may contain checkpointable sub-layers)
    inner = {id(sub) for m in found for sub in m.modules() if sub is not m}
    return [m for m in found if id(m) not in inner]


def _block_param_ids(net) -> set[int]:
    return {id(p) for block in _blocks(net) for p in block.parameters()}


def _unwrap(net):
    get_base = getattr(net, "get_base_model", None)
    return get_base() if callable(get_base) else net


def _optimizer_step_temporaries(trainable, device: str) -> int:
    """AdamW's foreach path (CUDA default) makes one temporary per state; the per-tensor path one per parameter."""
    sizes = [p.numel() * p.element_size() for p in trainable]
    if device == "cuda":
        return sum(sizes)
    return max(sizes, default=0)


def adapter_bytes(method_obj: Method, net) -> int:
    """Size of the adapter file the method saves: tensor bytes plus the safetensors header."""
    try:
        state = method_obj.adapter_state_dict(net)
    except Exception as exc:
        raise PluginError(f"method {method_obj.name}: adapter_state_dict failed: {exc}") from None
    data = sum(t.numel() * t.element_size() for t in state.values())
    header = 0
    for name, t in state.items():
        # '"name":{"dtype":"F32","shape":[a,b],"data_offsets":[x,y]},' as safetensors writes it
        offsets = 2 * max(len(str(data)), 1)
        header += len(name) + 2 + 40 + len(",".join(str(s) for s in t.shape)) + offsets
    header += len('{"__metadata__":{"format":"pt"}}')
    return 8 + int(math.ceil(header / 8) * 8) + data


def _unique(tensors) -> list:
    seen, out = set(), []
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _saved_bytes(tensor) -> int:
    if tensor.is_sparse:  # SHiRA's sparse delta: its values and indices
        return _saved_bytes(tensor._values()) + _saved_bytes(tensor._indices())
    try:
        return tensor.untyped_storage().nbytes()
    except Exception:
        return tensor.numel() * tensor.element_size()


def _storage_key(tensor) -> int:
    try:
        return tensor.untyped_storage()._cdata
    except Exception:  # tensor subclasses without a storage
        return id(tensor)
