"""What the LoRA variants that initialise from data or add a training loss share: the batches they
need, the target layers the cost model sizes their one-off initialisation from, and the loss term."""

from __future__ import annotations

import functools

from autopeft import BadInputError


def require_batches(method, batches) -> list:
    """``batches`` as a list, or a BadInputError saying that ``method`` initialises from training data."""
    if not batches:
        raise BadInputError(f"method {method.name} initialises from the training data: build() needs "
                            f"batches=[...] ({method.data_batches} training batches, as the collator makes them)")
    return list(batches)


def target_layers(model) -> list[tuple[int, int, int]]:
    """``(out_features, in_features, bytes per weight value)`` of the base layer under every LoRA layer
    of a PEFT model (the meta build works: only shapes are read)."""
    from peft.tuners.lora import LoraLayer

    layers = []
    for module in model.modules():
        if isinstance(module, LoraLayer):
            weight = module.get_base_layer().weight
            layers.append((module.out_features, module.in_features, weight.element_size()))
    return layers


def logits_bytes(model, batch_size: int, seq_len: int) -> int:
    """Bytes of one forward pass's float32 logits over the vocabulary (causal LM) or the labels (of each
    sequence, or of each token in token classification)."""
    task = _task_type(model)
    causal = task.endswith("CAUSAL_LM")
    width = getattr(model.config, "vocab_size", 2) if causal else getattr(model.config, "num_labels", 2)
    per_token = causal or task.endswith("TOKEN_CLS")
    return 4 * batch_size * (seq_len if per_token else 1) * width


def _task_type(model) -> str:
    return str(getattr(getattr(model, "peft_config", {}).get("default"), "task_type", None))


def with_default_targets(model, config):
    """``config`` with ``target_modules`` filled in as PEFT does for the architecture, for the
    preprocessing steps (CorDA's) that read it before PEFT would fill it."""
    if config.target_modules is not None:
        return config
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    targets = DEFAULTS.get(getattr(model.config, "model_type", None))
    if targets is None:
        raise BadInputError(f"no default target modules for a {model.config.model_type} model: set target_modules")
    config.target_modules = set(targets)
    return config


def model_inputs(batch: dict, task: str) -> dict:
    """A training batch as a forward pass for initialisation takes it (classification labels dropped:
    they are one per row, not one per token)."""
    return {k: v for k, v in batch.items() if not (k == "labels" and task == "seq-cls")}


def add_training_loss(net, term):
    """Make ``net``'s forward add ``term()`` (a regulariser PEFT leaves to the training loop) to the
    loss while training; evaluation reports the task loss alone."""
    original = net.forward

    @functools.wraps(original)
    def forward(*args, **kwargs):
        out = original(*args, **kwargs)
        if net.training and getattr(out, "loss", None) is not None:
            out.loss = out.loss + term()
        return out

    net.forward = forward
    return net
