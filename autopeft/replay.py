"""``autopeft replay``: judge the recommender on published benchmark results.

For a directory of results in the PEFT method-comparison layout, replay what a recommendation would
have done: every run is a candidate; the recommender sees only what a pilot of ``budget_fraction``
of the training steps would have seen (the start of each loss curve and the peak memory measured
while training) and the static facts of each candidate, and it is trained only on profiles from
*other* benchmarks. Its choice is then scored against the best run that fits the memory cap (the
oracle) and against two baselines: LoRA with the benchmark's default settings, and the candidate
with the lowest pilot loss.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from .errors import BadInputError
from .profiles import ProfileRecord, end_loss, import_peft_results, load_records


class Pick(BaseModel):
    """One way of choosing, and how it turned out."""

    choice: str | None = Field(description="the experiment chosen; None when nothing it would pick fits")
    score: float | None = None
    regret: float | None = Field(default=None, description="oracle score minus this score, in points (x100)")


class ReplayResult(BaseModel):
    """What ``replay --json`` prints."""

    benchmark: str
    metric: str
    budget_fraction: float
    max_vram: int | None
    candidates: int
    feasible: int
    chosen: str
    chosen_score: float
    oracle: str
    oracle_score: float
    regret: float = Field(description="oracle_score - chosen_score, in points (x100)")
    baselines: dict[str, Pick]
    compute_fraction: float = Field(description="pilot compute as a fraction of training every feasible candidate")
    mode: str = Field(description="pilot: ranked from pilot curves; static: from static features and priors only")
    trained_on: list[str] = Field(description="the benchmarks the recommender learned from")


def replay(results_dir: str | Path, budget_fraction: float = 0.1, max_vram: int | None = None,
           records: list[ProfileRecord] | None = None) -> ReplayResult:
    """Replay a recommendation on the results in ``results_dir`` (see the module docstring).

    :param records: what the recommender may learn from; default: every profile on this machine.
        Records of the replayed benchmark itself are always left out.
    """
    from .recommender import Candidate, Recommender

    if not 0 < budget_fraction <= 1:
        raise BadInputError(f"--budget-fraction must be in (0, 1], got {budget_fraction}")
    runs = [r for r in import_peft_results(Path(results_dir)) if r.score is not None]
    if len(runs) < 2:
        raise BadInputError("fewer than two finished runs to choose among", source=str(results_dir))
    benchmark = runs[0].benchmark
    fitting = [r for r in runs if max_vram is None or (r.peak_memory_bytes or 0) <= max_vram]
    if not fitting:
        raise BadInputError(f"no run of {benchmark} fits in {max_vram} bytes")
    learn_from = [r for r in (records if records is not None else load_records()) if r.benchmark != benchmark]
    recommender = Recommender().fit(learn_from)

    candidates = [Candidate.from_record(r, budget_fraction) for r in fitting]
    predicted = recommender.predict(candidates)
    chosen = fitting[int(predicted.argmax())]
    oracle = max(fitting, key=lambda r: r.quality())
    lowest = min((r for r, c in zip(fitting, candidates) if c.pilot), key=lambda r: end_loss(r.pilot(budget_fraction)),
                 default=None)
    lora = _default_lora(runs)

    def pick(record: ProfileRecord | None) -> Pick:
        if record is None or record not in fitting:
            return Pick(choice=None if record is None else f"{record.experiment} (does not fit)")
        return Pick(choice=record.experiment, score=record.score, regret=_points(oracle, record))

    steps = sum(r.total_steps for r in fitting)
    return ReplayResult(
        benchmark=benchmark, metric=runs[0].metric, budget_fraction=budget_fraction, max_vram=max_vram,
        candidates=len(runs), feasible=len(fitting), chosen=chosen.experiment, chosen_score=chosen.score,
        oracle=oracle.experiment, oracle_score=oracle.score, regret=_points(oracle, chosen),
        baselines={"lora_default": pick(lora), "lowest_pilot_loss": pick(lowest)},
        compute_fraction=sum(budget_fraction * r.total_steps for r in fitting) / steps,
        mode=recommender.mode(candidates), trained_on=recommender.benchmarks_)


def _points(oracle: ProfileRecord, record: ProfileRecord) -> float:
    return 100 * (oracle.quality() - record.quality())


def _default_lora(runs: list[ProfileRecord]) -> ProfileRecord | None:
    """LoRA with the benchmark's default settings: the plain LoRA run with the plainest name."""
    loras = [r for r in runs if r.method == "lora"]
    return min(loras, key=lambda r: (r.experiment.count("-"), len(r.experiment)), default=None)
