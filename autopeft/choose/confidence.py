"""How sure a recommendation is: the probability that its pick lands within one point of the best.

"Within one point" is within 1 point of accuracy (or F1) of the best candidate's final score, or within
1% of the best-to-worst spread for other metrics, judged by configurations' means over seeds where
several were stored. The probability is a logistic model of what the recommender knew when it chose
(:data:`FEATURES`): how far its pick's predicted standing leads the runner-up's in the same rung of
pilots, how many of the candidates were piloted, whether stored runs of this model on this data or
data like it weighed in, and how many candidates there were. It is fitted on the recommender's own
out-of-task choices over the shipped benches, each source of data left out in turn
(``benchmarks/leave_one_task_out.py --sources``), and shipped as ``resources/confidence.json``.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from typing import Sequence

#: what the probability is learned from, in this order
FEATURES = ("margin", "piloted", "evidence", "log_candidates")
#: below this, the explanation says what would make the choice firmer
LOW = 0.5
RESOURCE = "confidence.json"


def features(margin: float, piloted: float, evidence: str | None, candidates: int) -> list[float]:
    """The model's inputs: ``margin`` (pick minus runner-up in predicted standing, clipped to [0, 1]),
    ``piloted`` (share of candidates with a pilot), ``evidence`` (``same``, ``similar`` or None) and
    the number of candidates."""
    return [min(max(margin, 0.0), 1.0), float(piloted), {"same": 1.0, "similar": 0.5}.get(evidence or "", 0.0),
            math.log10(max(candidates, 1))]


def margin_of(predicted: Sequence[float], chosen: int, rivals: Sequence[int]) -> float:
    """How far the chosen candidate's prediction leads the best of ``rivals`` (0 with no rival)."""
    others = [predicted[i] for i in rivals if i != chosen]
    return float(predicted[chosen] - max(others)) if others else 0.0


@lru_cache(maxsize=1)
def shipped_model() -> dict | None:
    """The fitted coefficients shipped with autopeft, or None when the resource is missing."""
    from importlib import resources

    try:
        return json.loads(resources.files("autopeft").joinpath("resources", RESOURCE).read_text())
    except (FileNotFoundError, ModuleNotFoundError, ValueError):
        return None


def probability(x: Sequence[float], model: dict | None = None) -> float | None:
    """The probability of landing within one point, for features ``x`` (:func:`features`)."""
    model = model or shipped_model()
    if model is None:
        return None
    z = model["intercept"] + sum(w * v for w, v in zip(model["coef"], x))
    return 1.0 / (1.0 + math.exp(-z))


def fit(rows: Sequence[Sequence[float]], hits: Sequence[bool], C: float = 1.0) -> dict:
    """A logistic model of ``hits`` (landed within one point) on feature ``rows``, as :func:`probability`
    reads it. Rows all alike in a feature leave its weight at 0."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    x, y = np.asarray(rows, dtype=float), np.asarray(hits, dtype=int)
    if len(set(y)) < 2:  # every choice landed, or none: the frequency is all there is to say
        rate = (y.sum() + 0.5) / (len(y) + 1)
        return {"features": list(FEATURES), "coef": [0.0] * x.shape[1], "intercept": math.log(rate / (1 - rate))}
    model = LogisticRegression(C=C, max_iter=1000).fit(x, y)
    return {"features": list(FEATURES), "coef": [float(c) for c in model.coef_[0]],
            "intercept": float(model.intercept_[0])}


def advice(p: float | None, mode: str, piloted: int, candidates: int) -> str | None:
    """What would make a choice of probability ``p`` firmer, or None when it is firm enough."""
    if p is None or p >= LOW:
        return None
    if mode in ("static", "none") or piloted == 0:
        more = "pilots (drop --no-pilot, or give a --pilot-budget)"
    elif piloted < candidates:
        more = f"a larger --pilot-budget (pilots covered {piloted} of {candidates} candidates)"
    else:
        more = "a larger --pilot-budget (longer pilots) or more training data"
    return f"{more} would make it firmer"
