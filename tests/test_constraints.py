"""Constraints: parsing what people type, and fitting a candidate under a memory budget before excluding it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import autopeft
from autopeft.choose.constraints import Constraints, check, nearest_misses, parse_duration
from autopeft.errors import BadInputError

GB = 10**9


def _estimate(batch: int, per_example: float = 1.0, fixed: float = 2.0, ckpt_saving: float = 0.6,
              params: int = 1_000_000, adapter: int = 4_000_000):
    """A fake cost model: fixed + batch * per_example GB, checkpointing keeps 40% of the activations."""
    plain = int((fixed + batch * per_example) * GB)
    ckpt = int((fixed + batch * per_example * (1 - ckpt_saving)) * GB)
    return SimpleNamespace(peak_memory_bytes=plain, peak_memory_bytes_without_checkpointing=plain,
                           peak_memory_bytes_with_checkpointing=ckpt, trainable_params=params, adapter_bytes=adapter)


def _check(constraints, batch=8, method="lora", **estimate):
    m = autopeft.get_method(method)
    return check(m, m.settings({}), constraints, batch, lambda b: _estimate(b, **estimate))


def test_parse_sizes_durations_and_lists():
    c = Constraints.parse(max_vram="12GB", max_adapter_size="20MiB", time_budget="1h30m", methods="lora, DoRA",
                          require=["merge"], max_trainable_params="1,000,000")
    assert c.max_vram == 12 * GB and c.max_adapter_size == 20 * 2**20 and c.time_budget == 5400
    assert c.methods == ("lora", "dora") and c.require == ("merge",) and c.max_trainable_params == 10**6
    assert parse_duration("90") == 90 and parse_duration("45m") == 2700 and parse_duration("2h") == 7200


@pytest.mark.parametrize("kwargs", [{"max_vram": "-3GB"}, {"max_vram": "12XB"}, {"time_budget": "soon"},
                                    {"require": "fast"}, {"max_rank": "0"}, {"max_trainable_params": "many"}])
def test_nonsense_is_bad_input(kwargs):
    with pytest.raises(BadInputError):
        Constraints.parse(**kwargs)


def test_fits_as_asked_when_it_can():
    verdict = _check(Constraints(max_vram=11 * GB))
    assert verdict.feasible and verdict.fit.batch_size == 8 and not verdict.fit.gradient_checkpointing


def test_gradient_checkpointing_before_smaller_batches():
    verdict = _check(Constraints(max_vram=6 * GB))  # 10 GB as asked, 5.2 GB with checkpointing
    assert verdict.feasible and verdict.fit.gradient_checkpointing and verdict.fit.batch_size == 8


def test_smaller_micro_batch_keeps_the_effective_batch():
    verdict = _check(Constraints(max_vram=int(3.5 * GB)))  # micro 2 with checkpointing: 2.8 GB
    assert verdict.feasible
    fit = verdict.fit
    assert fit.batch_size * fit.gradient_accumulation_steps == 8 and fit.peak_memory_bytes <= 3.5 * GB


def test_nothing_fits_says_by_how_much():
    verdict = _check(Constraints(max_vram=2 * GB))  # even micro 1 with checkpointing needs 2.4 GB
    assert not verdict.feasible and "micro-batch 1" in verdict.reasons[0]
    assert verdict.overshoot == pytest.approx(0.2, abs=0.01)


def test_rank_size_params_and_capabilities():
    assert "rank 16 > --max-rank 4" in _check(Constraints(max_rank=4)).reasons
    assert not _check(Constraints(max_adapter_size=1_000_000)).feasible
    assert not _check(Constraints(max_trainable_params=1000)).feasible
    prompt = _check(Constraints(require=("merge",)), method="prompt_tuning")
    assert prompt.reasons == ["cannot be merged into the base"]
    assert _check(Constraints(exclude=("lora",))).reasons == ["excluded by --exclude"]


def test_nearest_misses_are_ordered_by_how_close_they_came():
    verdicts = {"a": _check(Constraints(max_vram=2 * GB)), "b": _check(Constraints(max_vram=GB)),
                "c": _check(Constraints(exclude=("lora",))), "d": _check(Constraints())}
    assert [name for name, _ in nearest_misses(verdicts)] == ["a", "b", "c"]
