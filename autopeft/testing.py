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
build on at least one model of each task it declares. Last, every capability it declares (merge, a
second adapter, conversion to LoRA, a quantised base, layer types) is probed
(:mod:`autopeft.methods.probes`): declaring one the probe does not find fails. A failed check raises
``AssertionError`` naming the method, the model and the check.

A method that initialises from data (``data_batches`` > 0) must refuse to build without batches
(a ``BadInputError``); it is built with :func:`sample_batches` (prompt-answer rows whose prompts end
in the same three tokens, one row padded), on whose first batch its training step then runs. A method
unavailable on this machine (``unavailable_reason()``) is checked as far as the machine allows: its
contract, settings, capability probes and the cost model's build on the meta device (which may
refuse the model with a ``BadInputError``).
"""

from __future__ import annotations

from typing import Any

from .errors import BadInputError
from .methods.base import TASKS, Method, build_method, contract_problems
from .methods.probes import (ANSWER_HEADER, TASK_MODELS, TINY_CONFIGS, build_with_sample_data, mismatches,
                             probe_capabilities, sample_batches, tiny_model)

__all__ = ["check_method", "tiny_model", "sample_batches", "build_with_sample_data", "ANSWER_HEADER", "TINY_CONFIGS",
           "TASK_MODELS"]


def check_method(method: Method, settings: dict[str, Any] | None = None, *, tasks: tuple[str, ...] | None = None) -> None:
    """Run every check on ``method`` for each of its tasks (or ``tasks``), then probe its declared
    capabilities (:mod:`autopeft.methods.probes`); raise AssertionError on the first that fails.
    ``settings``: values that fit the tiny models' 64-wide layers (default: ``method.probe_settings``)."""
    problems = contract_problems(method)
    assert not problems, f"{type(method).__name__} is incomplete: {'; '.join(problems)}"
    label = f"method {method.name}"
    settings = method.probe_settings if settings is None else settings
    chosen = method.settings(settings)  # a BadInputError here names the setting
    method.info().model_dump_json()  # what `autopeft methods --json` prints
    for task in tasks or method.tasks:
        assert task in TASKS, f"unknown task {task!r}; tasks are {', '.join(TASKS)}"
        assert task in method.tasks, f"{label} does not declare task {task}"
        if method.unavailable_reason():
            for arch in TASK_MODELS[task]:
                _check_estimate_only(method, chosen, task, arch)
            continue
        refusals = [_check_on(method, chosen, task, arch, f"{label} on a tiny {arch} ({task})")
                    for arch in TASK_MODELS[task]]
        assert not all(refusals), f"{label} builds on no tiny model for {task}: {'; '.join(refusals)}"
    found = mismatches(method, probe_capabilities(method, settings))
    assert not found, f"{label} {'; '.join(found)}"


def _check_estimate_only(method: Method, settings, task: str, arch: str) -> None:
    """For a method this machine cannot run: the cost model builds it on meta, or refuses the model."""
    from .costmodel import estimate

    base = tiny_model(task, arch)
    settings = method.settings_for_run(method.settings_for_model(base, settings), total_steps=10)
    try:
        estimate(None, method, settings=settings.model_dump(), task=task, config=base.config, batch_size=2,
                 seq_len=16, device="cpu")
    except BadInputError:
        pass


def _check_on(method: Method, settings, task: str, arch: str, label: str) -> str | None:
    """Every check on one tiny model; the reason when the method refused the model, else None."""
    import torch

    from .costmodel import estimate

    base = tiny_model(task, arch)
    settings = method.settings_for_run(method.settings_for_model(base, settings), total_steps=10)
    kwargs = dict(settings=settings.model_dump(), task=task, config=base.config, batch_size=2, seq_len=16,
                  device="cpu")
    batches = sample_batches(task, method.data_batches) if method.data_batches else None
    if batches:
        try:
            method.build(tiny_model(task, arch), settings, task)
        except BadInputError:
            pass
        except Exception as exc:
            raise AssertionError(f"{label}: build() without batches raised {type(exc).__name__}, not a "
                                 f"BadInputError: {exc}") from exc
        else:
            raise AssertionError(f"{label}: build() without batches built; it needs {method.data_batches} "
                                 f"training batches (data_batches) and must refuse with a BadInputError")
    try:
        model = build_method(method, base, settings, task, batches)
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
    if batches:  # the data it initialised from (an aLoRA is active only after the prompt's header)
        step = batches[0]
    else:
        ids = torch.randint(3, 256, (2, 16))
        labels = {"causal-lm": ids, "token-cls": ids % 2}.get(task, torch.tensor([0, 1]))
        step = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    model.train()
    loss = model(**step).loss
    assert loss is not None and torch.isfinite(loss), f"{label}: the training loss is {loss}"
    loss.backward()
    optimizer.step()
    changed = {k for k, p in model.named_parameters() if not torch.equal(before[k], p.detach())}
    frozen = {k for k, p in model.named_parameters() if not p.requires_grad}
    assert changed, f"{label}: a training step changed no parameter"
    assert not changed & frozen, f"{label}: a step changed frozen parameters: {sorted(changed & frozen)[:3]}"
    assert method.adapter_state_dict(model), f"{label}: adapter_state_dict() is empty"
    return None
