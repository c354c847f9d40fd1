"""Conformance checks a method plugin's author runs on their own method, as autopeft runs them on every
built-in one (in the spirit of scikit-learn's ``check_estimator``)::

    from autopeft.testing import check_method

    def test_my_method():
        check_method(MyMethod(), settings={"r": 4})

Each declared task is checked on tiny models built from configs with random weights (no download):
a Llama for causal LM, a BERT and a Llama for classification. The method must be complete (see
:func:`autopeft.methods.base.contract_problems`) and its settings must validate. On each model it
builds without raising, leaves something and only its own parameters to train, its cost-model estimate
on the meta device counts the same trainable parameters as the real build, and one real training step
gives a finite loss and moves those parameters and nothing else. A method may refuse a model it cannot
serve by raising ``autopeft.BadInputError`` (the cost model must then refuse it too), but it must
build on at least one model of each task it declares. A failed check raises ``AssertionError`` naming
the method, the model and the check.
"""

from __future__ import annotations

from typing import Any

from .errors import BadInputError
from .methods.base import TASKS, Method, contract_problems

#: the tiny models to check on: 2 layers, 64 wide (settings must fit 64-wide layers); the Llama has
#: biases, so that bias-only methods have something to train
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "llama": {
        "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 256,
        "max_position_embeddings": 128, "tie_word_embeddings": True, "attention_bias": True, "mlp_bias": True,
        "pad_token_id": 0,
    },
    "bert": {
        "model_type": "bert", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "vocab_size": 256, "max_position_embeddings": 128,
    },
}
#: which tiny models each task is checked on
TASK_MODELS = {"causal-lm": ("llama",), "seq-cls": ("bert", "llama")}


def check_method(method: Method, settings: dict[str, Any] | None = None, *, tasks: tuple[str, ...] | None = None) -> None:
    """Run every check on ``method`` for each of its tasks (or ``tasks``); raise AssertionError on
    the first that fails. ``settings``: values that fit the tiny models' 64-wide layers."""
    problems = contract_problems(method)
    assert not problems, f"{type(method).__name__} is incomplete: {'; '.join(problems)}"
    label = f"method {method.name}"
    chosen = method.settings(settings)  # a BadInputError here names the setting
    method.info().model_dump_json()  # what `autopeft methods --json` prints
    for task in tasks or method.tasks:
        assert task in TASKS, f"unknown task {task!r}; tasks are {', '.join(TASKS)}"
        assert task in method.tasks, f"{label} does not declare task {task}"
        refusals = [_check_on(method, chosen, task, arch, f"{label} on a tiny {arch} ({task})")
                    for arch in TASK_MODELS[task]]
        assert not all(refusals), f"{label} builds on no tiny model for {task}: {'; '.join(refusals)}"


def tiny_model(task: str, arch: str | None = None, seed: int = 0):
    """A tiny random-weight model the checks use for ``task`` (``arch``: a key of TINY_CONFIGS)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    torch.manual_seed(seed)
    values = dict(TINY_CONFIGS[arch or TASK_MODELS[task][0]])
    config = AutoConfig.for_model(values.pop("model_type"), **values, num_labels=2)
    auto = AutoModelForCausalLM if task == "causal-lm" else AutoModelForSequenceClassification
    return auto.from_config(config)


def _check_on(method: Method, settings, task: str, arch: str, label: str) -> str | None:
    """Every check on one tiny model; the reason when the method refused the model, else None."""
    import torch

    from .costmodel import estimate

    base = tiny_model(task, arch)
    settings = method.settings_for_run(method.settings_for_model(base, settings), total_steps=10)
    kwargs = dict(settings=settings.model_dump(), task=task, config=base.config, batch_size=2, seq_len=16,
                  device="cpu")
    try:
        model = method.build(base, settings, task)
    except BadInputError as exc:  # a refusal: the cost model must say the same before anything trains
        try:
            estimate(None, method, **kwargs)
        except BadInputError:
            return f"{arch}: {exc}"
        raise AssertionError(f"{label}: build() refused the model ({exc}) but the cost model estimates it") from exc
    except Exception as exc:
        raise AssertionError(f"{label}: build() raised {type(exc).__name__}: {exc}") from exc
    assert isinstance(model, torch.nn.Module), f"{label}: build() returned a {type(model).__name__}, not a module"
    trainable = {id(p): p for p in model.parameters() if p.requires_grad}
    assert trainable, f"{label}: build() left nothing to train"

    est = estimate(None, method, **kwargs)
    real = sum(p.numel() for p in trainable.values())
    assert est.trainable_params == real, (f"{label}: the estimate on the meta device counts {est.trainable_params:,} "
                                          f"trainable parameters, the real build {real:,}")

    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    optimizer = method.optimizer(model, settings, learning_rate=1e-2) or torch.optim.AdamW(
        list(trainable.values()), lr=1e-2)
    ids = torch.randint(3, 256, (2, 16))
    labels = ids if task == "causal-lm" else torch.tensor([0, 1])
    model.train()
    loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
    assert loss is not None and torch.isfinite(loss), f"{label}: the training loss is {loss}"
    loss.backward()
    optimizer.step()
    changed = {k for k, p in model.named_parameters() if not torch.equal(before[k], p.detach())}
    frozen = {k for k, p in model.named_parameters() if not p.requires_grad}
    assert changed, f"{label}: a training step changed no parameter"
    assert not changed & frozen, f"{label}: a step changed frozen parameters: {sorted(changed & frozen)[:3]}"
    assert method.adapter_state_dict(model), f"{label}: adapter_state_dict() is empty"
    return None
