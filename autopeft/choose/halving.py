"""How successive halving spends a pilot budget: shared by ``tune`` (real pilots, in seconds) and
``replay`` (recorded curves, in training steps), so that replay judges the plan that ``tune`` runs.

Each rung runs every surviving configuration for a given length; the best ``1/ETA`` of the methods
go on to the next rung, which is at least twice as long. Pilots start from scratch each rung. ETA is
3 rather than the usual 4: pilot curves are noisy early, and keeping a third lets fewer good
configurations drop out on one noisy rung (measured: ``docs/design/halving.md``).
"""

from __future__ import annotations

import math
from typing import Callable, Hashable, Sequence, TypeVar

T = TypeVar("T")

ETA = 3
#: the longest pilot, as a fraction of the run: beyond it the budget is better spent on the run itself
MAX_FRACTION = 0.5


def rounds_needed(methods: int) -> int:
    """Rungs it takes to get from ``methods`` methods down to one."""
    return max(1, math.ceil(math.log(max(methods, 2), ETA) - 1e-9))


def survivors(methods: int) -> int:
    """How many of ``methods`` ranked methods go on to the next rung: the best third, at least two."""
    return methods if methods <= 2 else max(2, math.ceil(methods / ETA))


def best_of_each(items: Sequence[T], scores: Sequence[float], group: Callable[[T], Hashable]) -> dict[Hashable, T]:
    """The best-scored item of each group (a method's learning rates), best first. One ranking of the
    whole rung decides both which rate of a method goes on and which methods do."""
    best: dict[Hashable, T] = {}
    for i in sorted(range(len(items)), key=lambda i: -scores[i]):
        best.setdefault(group(items[i]), items[i])
    return best


def next_length(configs: int, methods: int, left: float, *, overhead: float, per_unit: float,
                shortest: float, cap: float) -> float | None:
    """The length of the next rung, in units of training (steps, or a fraction of the run).

    The budget ``left`` is split evenly over the rungs still needed to get down to one method, except
    that no pilot runs past ``cap``: what a later rung cannot spend below it goes to this one, so a
    large budget buys longer pilots of every candidate rather than staying unspent. This rung stays
    at most half the cap while later rungs follow (each is at least twice as long). When the split
    makes pilots shorter than ``shortest`` (too short to learn from, or not longer than the last
    rung's), fewer rungs are planned and each gets more. A rung of ``configs`` pilots of length ``x``
    costs ``configs * (overhead + x * per_unit)``; a later rung has one configuration per method going
    on (:func:`survivors`).

    :returns: at most ``cap``; None when even one rung of ``shortest`` is not affordable.
    """
    if configs <= 0:
        return None
    per_unit = max(per_unit, 1e-12)
    for rounds in range(rounds_needed(methods), 0, -1):
        later, going_on = [], methods
        for _ in range(rounds - 1):
            going_on = survivors(going_on)
            later.append(going_on)
        share, sharing = left, 1 + len(later)
        for n in sorted(later):  # the fewest pilots reach the cap first
            at_cap = n * (overhead + cap * per_unit)
            if share / sharing < at_cap:
                break
            share, sharing = share - at_cap, sharing - 1
        length = min(cap, (share / sharing / configs - overhead) / per_unit)
        if later:
            length = min(length, cap / 2)
        if length >= shortest:
            return length
    return None


def plan_cost(configs: int, methods: int, *, overhead: float, per_unit: float, shortest: float,
              rungs: int | None = None) -> float:
    """The least a plan over ``configs`` (of ``methods`` methods) costs: every rung it needs (at most
    ``rungs``) at its shortest, the first ``configs`` pilots of ``shortest``, each next one the
    survivors (one configuration per method) at twice the length. Counting every rung as dear as the
    first, as this did before, left a third of a 150 s budget unspent on SST-2 with 9 of 27 methods
    piloted."""
    cost, length = 0.0, shortest
    for _ in range(min(rounds_needed(methods), rungs or rounds_needed(methods))):
        cost += configs * (overhead + length * per_unit)
        methods = configs = survivors(methods)
        length *= 2
    return cost


def planned_cost(configs: int, methods: int, budget: float, *, overhead: float, per_unit: float, shortest: float,
                 cap: float) -> float:
    """What a plan over ``configs`` (of ``methods`` methods) is expected to spend of ``budget``: each rung
    as :func:`next_length` sizes it, its survivors counted rather than chosen, until one is left, the
    rungs reach ``cap`` or the budget buys none longer than the last. Less than the budget where the
    pilots reach ``cap`` first: a short job's budget has a floor in time that its pilots may not need."""
    spent, length = 0.0, 0.0
    while configs > 1 or not spent:
        floor = 2 * length if length else shortest
        planned = next_length(configs, methods, budget - spent, overhead=overhead, per_unit=per_unit,
                              shortest=floor, cap=cap)
        if spent and (planned is None or int(planned) < floor):
            break
        length = max(int(planned or 0), shortest)
        spent += configs * (overhead + length * per_unit)
        methods = configs = survivors(methods)
        if length >= cap:
            break
    return spent
