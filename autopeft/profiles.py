"""Profile records: what the recommender learns from.

One record is one finished fine-tune: the task and model, the method and its settings, what it cost
(trainable parameters, adapter bytes, peak memory, time) and how it went (the loss curve and the
final score). Records come from three places, all read by :func:`load_records`:

- ``profiles/*.jsonl`` shipped with autopeft (produced by its own benchmark sweeps);
- the local store, ``$AUTOPEFT_HOME/profiles.jsonl``, to which every finished ``train`` and ``tune``
  appends its run, so the next recommendation on this machine knows more;
- results imported from the PEFT method-comparison suite (:func:`import_peft_results`), or any
  directory in that layout.

A *benchmark* groups the records that were trained on the same data and model with the same budget,
so that their scores can be compared with one another; the recommender learns from the ranking
inside each benchmark, never across them.
"""

from __future__ import annotations

import json
import os
import re
import statistics
from pathlib import Path
from typing import Any, Iterable

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import BadInputError

SCHEMA_VERSION = 1
#: the package the top-level ``profiles/`` folder is installed as: records and tables read at run time
SHIPPED_PACKAGE = "autopeft_profiles"
STORE_NAME = "profiles.jsonl"


class CurvePoint(BaseModel):
    """The training loss (averaged over the logging window ending at ``step``) and evaluations."""

    model_config = ConfigDict(extra="forbid")

    step: int = Field(ge=0)
    train_loss: float | None = None
    eval_loss: float | None = None
    eval_score: float | None = Field(default=None, description="the benchmark's metric on its validation set")


class ProfileRecord(BaseModel):
    """One finished fine-tune, as the recommender sees it."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    benchmark: str = Field(description="runs comparable with one another: same data, model and budget")
    experiment: str = Field(description="unique within the benchmark")
    task: str
    model: str
    dataset: str
    method: str = Field(description="autopeft's method (its plugin's name; ``peft:<type>`` for a PEFT type no plugin "
                                    "claims yet) where one matches, else the source's name")
    source_method: str | None = Field(default=None, description="the source's own name for the method, e.g. the "
                                                                "PEFT suite's experiment folder 'adaptionprompt'")
    family: str | None = None
    settings: dict[str, Any] = Field(default_factory=dict)
    learning_rate: float | None = None
    batch_size: int | None = None
    total_steps: int = Field(ge=1)
    trainable_params: int | None = None
    total_params: int | None = None
    adapter_bytes: int | None = None
    peak_memory_bytes: int | None = None
    estimated_peak_memory_bytes: int | None = Field(default=None, description="the cost model's prediction")
    train_seconds: float | None = None
    device: str | None = None
    curve: list[CurvePoint] = Field(default_factory=list)
    metric: str = Field(description="what score measures, e.g. test_accuracy or eval_loss")
    higher_is_better: bool = True
    score: float | None = Field(default=None, description="the final metric; None when the run failed")
    error: str | None = Field(default=None, description="why the run failed")
    source: str = Field(description="where the record came from")
    licence: str | None = None

    def pilot(self, fraction: float) -> list[CurvePoint]:
        """The part of the curve a pilot of ``fraction`` of the training steps would have seen."""
        limit = fraction * self.total_steps
        return [p for p in self.curve if 0 < p.step <= limit + 1e-9 and p.train_loss is not None]

    def quality(self) -> float | None:
        """The score with larger always better (a loss is negated)."""
        if self.score is None:
            return None
        return self.score if self.higher_is_better else -self.score


def window_loss(curve: list[CurvePoint], start: float, end: float) -> float:
    """Mean training loss over the points in (start, end] of the curve's length: single logged
    steps are noisy. The nearest point when none falls inside."""
    last = curve[-1].step
    inside = [p.train_loss for p in curve if start * last < p.step <= end * last and p.train_loss is not None]
    if inside:
        return sum(inside) / len(inside)
    return min(curve, key=lambda p: abs(p.step - end * last)).train_loss


#: where a curve's end begins, as a share of its length: single logged steps are too noisy to compare
END_WINDOW = 0.75


def end_loss(curve: list[CurvePoint]) -> float:
    """Where a (pilot) loss curve ended: the mean over its last quarter; infinite for no curve."""
    return window_loss(curve, END_WINDOW, 1.0) if curve else float("inf")


def end_loss_gap(a: list[CurvePoint], b: list[CurvePoint]) -> tuple[float, float] | None:
    """How much lower curve ``a`` ended than ``b``, with the standard error of that gap: the mean and
    spread of the step-by-step differences over the last quarter. Pilots of one run see the same
    batches in the same order, so the difference at each step is the methods', not the batches'.
    None when the curves share fewer than 3 steps there."""
    if not a or not b or a[-1].step != b[-1].step:
        return None
    last = a[-1].step
    losses_b = {p.step: p.train_loss for p in b if p.train_loss is not None}
    gaps = [losses_b[p.step] - p.train_loss for p in a
            if END_WINDOW * last < p.step and p.train_loss is not None and p.step in losses_b]
    if len(gaps) < 3:
        return None
    return statistics.fmean(gaps), statistics.stdev(gaps) / len(gaps) ** 0.5


def shipped_folder():
    """The folder of records and tables shipped with autopeft (an ``importlib.resources`` traversable)."""
    from importlib import resources

    from .errors import AutopeftError

    try:
        return resources.files(SHIPPED_PACKAGE)
    except ModuleNotFoundError:
        raise AutopeftError(f"autopeft's shipped profiles (the package {SHIPPED_PACKAGE}) are not installed: "
                            f"reinstall autopeft") from None


def store_path() -> Path:
    from .models import autopeft_home

    return autopeft_home() / STORE_NAME


def load_records(paths: Iterable[Path] | None = None, *, shipped: bool = True, store: bool = True) -> list[ProfileRecord]:
    """Every record from the shipped profiles, the local store and ``paths`` (files or dirs of
    ``.jsonl`` record files, or dirs in the PEFT method-comparison layout)."""
    files: list = []
    if shipped:
        files += sorted((f for f in shipped_folder().iterdir() if f.name.endswith(".jsonl")),
                        key=lambda f: f.name)
    if store and store_path().is_file():
        files.append(store_path())
    records: list[ProfileRecord] = []
    for path in [*files, *(Path(p) for p in paths or ())]:
        if path.is_dir() and not any(path.glob("*.jsonl")):
            records += import_peft_results(path)
        elif path.is_dir():
            for f in sorted(path.glob("*.jsonl")):
                records += read_jsonl(f)
        else:
            records += read_jsonl(path)
    return records


def read_jsonl(path) -> list[ProfileRecord]:
    """Records from a JSONL file (a path, or a shipped resource), one per line; a bad line is named
    with its number."""
    out = []
    try:
        lines = (path if hasattr(path, "read_text") else Path(path)).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(f"cannot read profile records: {exc.__class__.__name__}", source=str(path)) from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(ProfileRecord.model_validate_json(line))
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "record"
            raise BadInputError(f"not a profile record: {where}: {err['msg']}", source=str(path), line=number) from None
    return out


def append(records: Iterable[ProfileRecord], path: Path | None = None) -> Path:
    """Append records to the local store (one write per call, so a crash leaves whole lines)."""
    path = path or store_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(r.model_dump_json() + "\n" for r in records)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, text.encode("utf-8"))
    finally:
        os.close(fd)
    return path


def record_from_run(run, benchmark: str | None = None) -> ProfileRecord:
    """A profile record from a finished :class:`autopeft.outputs.RunRecord`."""
    from .methods.registry import get_methods

    task = run.task
    # classification by its accuracy, token classification by its entity F1, causal LM by its loss
    metric, higher = {"seq-cls": ("accuracy", True), "token-cls": ("f1", True)}.get(task, ("eval_loss", False))
    if run.options.get("test"):  # scored on a test file: the validation set guided the run
        metric = f"test_{metric.removeprefix('eval_')}"
    data = run.data or {}
    fingerprint = data.get("fingerprint") or "unknown"
    method = get_methods().get(run.method)
    curve = [CurvePoint(step=p.step, train_loss=p.loss, eval_loss=p.eval_loss,
                        eval_score=p.eval_f1 if task == "token-cls" else p.eval_accuracy)
             for p in run.history if p.loss is not None or p.eval_loss is not None]
    return ProfileRecord(
        benchmark=benchmark or f"local/{run.model}/{fingerprint[:12]}/bs{run.batch_size}-steps{run.steps}",
        experiment=f"{run.method}-lr{run.learning_rate:g}-{Path(run.output_dir).name}", task=task,
        model=run.model, dataset=str(run.options.get("data")), method=run.method,
        family=method.family if method else None, settings=run.settings, learning_rate=run.learning_rate,
        batch_size=run.batch_size, total_steps=max(1, run.steps), trainable_params=run.trainable_params,
        total_params=run.total_params, adapter_bytes=run.adapter_bytes, peak_memory_bytes=run.peak_memory_bytes,
        estimated_peak_memory_bytes=run.estimated_peak_memory_bytes, train_seconds=run.train_seconds,
        device=run.hardware.device_name, curve=curve, metric=metric,
        higher_is_better=higher, score=run.metrics.get(metric), source="autopeft run on this machine")


# -- the PEFT method-comparison layout -----------------------------------------------------------

#: the direction of the metrics the PEFT suite's tasks report (each as ``test <name>`` at the end and
#: ``valid <name>`` along the way), True where higher is better. The order is also the preference:
#: where a run reports several test metrics, the first entry that matches one is its score (metrics
#: of unknown direction beside a known one are passed over; with none known, the file is refused). A name
#: matches an entry equal to it, starting with ``<entry>_`` or ending with ``_<entry>`` (after
#: lower-casing it and turning spaces and punctuation into ``_``); an entry ending in ``*`` matches
#: any name that starts with the rest (``rouge*``: rouge1, rougeL).
METRIC_DIRECTIONS: tuple[tuple[str, bool], ...] = (
    ("accuracy", True), ("exact_match", True), ("pass_*", True), ("f1", True), ("rouge*", True), ("bleu", True),
    ("chrf", True), ("meteor", True), ("dino_similarity", True), ("similarity", True), ("reward", True),
    ("loss", False), ("perplexity", False), ("ppl", False), ("nll", False), ("error", False), ("wer", False),
    ("cer", False), ("drift", False), ("mse", False), ("mae", False), ("rmse", False),
)
#: the PEFT suite's optimizer types that make a LoRA run another autopeft method (the adapter is plain
#: LoRA); with any other (``riemannian``, a torch optimizer) the run is its adapter config's method
PEFT_OPTIMIZER_METHODS = {"lora+": "loraplus", "lora-fa": "lorafa"}
#: experiment-name markers that make a PEFT LoRA run one of autopeft's LoRA variants (for runs without
#: an adapter config with a ``peft_type``, where the name is all there is to go by)
_LORA_VARIANTS = (("rslora", "rslora"), ("dora", "dora"), ("lorafa", "lorafa"), ("loraplus", "loraplus"),
                  ("pissa", "pissa"))
#: the suite's experiment folders whose autopeft method differs in name (used without an adapter config)
_PEFT_NAMES = {"full-finetuning": "full", "prefixtuning": "prefix_tuning", "adaptionprompt": "adaption_prompt"}


def metric_direction(name: str) -> bool | None:
    """Whether a larger value of metric ``name`` is better (see :data:`METRIC_DIRECTIONS`); None if unknown."""
    rank = _metric_rank(name)
    return None if rank is None else METRIC_DIRECTIONS[rank][1]


def _metric_key(name: str) -> str:
    """A metric's name as matched and recorded: lower case, runs of anything else than letters and digits as ``_``."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _metric_rank(name: str) -> int | None:
    """The index of the first entry of :data:`METRIC_DIRECTIONS` that ``name`` matches."""
    key = _metric_key(name)
    for i, (entry, _) in enumerate(METRIC_DIRECTIONS):
        if entry.endswith("*"):
            if key.startswith(entry[:-1]):
                return i
        elif key == entry or key.startswith(entry + "_") or key.endswith("_" + entry):
            return i
    return None


def import_peft_results(directory: Path) -> list[ProfileRecord]:
    """Records from a directory in the PEFT method-comparison layout (one JSON per run with
    ``run_info`` and ``train_info``, whose ``metrics`` list ends with the ``test <name>`` scores). The
    benchmark is the directory's name; its metric is the most preferred one (:data:`METRIC_DIRECTIONS`)
    that every scored run reports, so that the runs' scores compare."""
    directory = Path(directory)
    if not directory.is_dir():
        raise BadInputError("not a directory of benchmark results", source=str(directory))
    files = sorted(directory.glob("*.json"))
    if not files:
        raise BadInputError("no result files (*.json) here", source=str(directory))
    runs = [_read_peft_run(f) for f in files]
    metric = _shared_metric(runs, directory)
    return [_peft_record(path, doc, metric, directory.name) for path, doc in runs]


def _read_peft_run(path: Path) -> tuple[Path, dict]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(doc["run_info"]["train_config"], dict) or not isinstance(doc["train_info"]["metrics"], list):
            raise TypeError("run_info.train_config is not an object or train_info.metrics not a list")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BadInputError(f"not a PEFT method-comparison result ({exc.__class__.__name__}: {exc})",
                            source=str(path)) from None
    return path, doc


def _test_metrics(doc: dict) -> list[str]:
    """The names of the ``test <name>`` scores in the last metrics entry holding any (none for a failed run)."""
    for entry in reversed(doc["train_info"]["metrics"]):
        names = [k[len("test "):] for k in entry if isinstance(k, str) and k.startswith("test ")]
        if names:
            return names
    return []


def _shared_metric(runs: list[tuple[Path, dict]], directory: Path) -> str:
    """The metric to score every run by: the most preferred one of known direction that every run
    with test scores reports. A run whose test scores all have no known direction is named."""
    known = ", ".join(entry for entry, _ in METRIC_DIRECTIONS)
    shared: set[str] | None = None
    for path, doc in runs:
        names = _test_metrics(doc)
        if not names:
            continue
        oriented = {n for n in names if _metric_rank(n) is not None}
        if not oriented:
            listed = ", ".join(repr(f"test {n}") for n in sorted(names))
            raise BadInputError(f"metric {listed} has no known direction (known: {known})", source=str(path))
        shared = oriented if shared is None else shared & oriented
    if shared is None:  # no run has a score: the metric names nothing measured
        return "accuracy"
    if not shared:
        raise BadInputError("its runs share no test metric of known direction", source=str(directory))
    return min(shared, key=lambda n: (_metric_rank(n), n))


def peft_method(run_info: dict[str, Any]) -> str:
    """autopeft's method for a run of the PEFT method-comparison suite (its ``run_info``): by the
    suite's optimizer type where that makes it another method (:data:`PEFT_OPTIMIZER_METHODS`), else
    the installed method that recognises its adapter config (``peft:<type>`` where no plugin claims
    that PEFT type yet), else by the experiment's name (full fine-tuning has no adapter config)."""
    return _match_peft_method(run_info)[0]


def _match_peft_method(run_info: dict[str, Any]) -> tuple[str, str | None]:
    """(autopeft's method name, its family) for a run's ``run_info``."""
    from .errors import UnknownMethodError
    from .methods.adapter_config import method_for
    from .methods.registry import get_methods

    installed = get_methods()
    optimizer = (run_info.get("train_config") or {}).get("optimizer_type")
    name = PEFT_OPTIMIZER_METHODS.get(optimizer)
    config = run_info.get("peft_config")
    if name is None and isinstance(config, dict) and isinstance(config.get("peft_type"), str):
        try:
            method = method_for(config)
            return method.name, method.family
        except UnknownMethodError:  # a PEFT type the installed PEFT does not know: go by the name
            pass
    if name is None:
        name = _method_name(run_info.get("experiment_name") or "")
    method = installed.get(name)
    return name, method.family if method else None


def _source_method(experiment: str) -> str:
    """The source's name for the method of an experiment such as ``lora/llama-3.2-3B-rank64-rslora``
    (the part before the first ``/`` or ``--``): ``lora``."""
    return experiment.replace("--", "/").partition("/")[0]


def _peft_record(path: Path, doc: dict, metric: str, benchmark: str) -> ProfileRecord:
    run, info = doc["run_info"], doc["train_info"]
    config = run["train_config"]
    metrics = info["metrics"]
    test, valid = f"test {metric}", f"valid {metric}"
    final = next((m for m in reversed(metrics) if test in m), {})
    curve = [CurvePoint(step=m["step"], train_loss=m.get("train loss"), eval_loss=m.get("valid loss"),
                        eval_score=m.get(valid))
             for m in metrics if valid in m]
    if not curve:  # no validation scores: the training loss is the curve
        curve = [CurvePoint(step=m["step"], train_loss=m["train loss"]) for m in metrics
                 if m.get("train loss") is not None and not any(str(k).startswith("test ") for k in m)]
    experiment = run.get("experiment_name") or path.stem
    success = info.get("status") == "success" and test in final
    method, family = _match_peft_method({**run, "experiment_name": experiment})
    return ProfileRecord(
        benchmark=f"peft-method-comparison/{benchmark}", experiment=experiment, task="causal-lm",
        model=config.get("model_id", "unknown"), dataset=benchmark, method=method, family=family,
        source_method=_source_method(experiment),
        settings={k: v for k, v in (run.get("peft_config") or {}).items()
                  if isinstance(v, (int, float, str, bool)) and k != "base_model_name_or_path"},
        learning_rate=(config.get("optimizer_kwargs") or {}).get("lr"), batch_size=config.get("batch_size"),
        total_steps=config.get("max_steps") or max((m["step"] for m in metrics), default=1),
        trainable_params=info.get("num_trainable_params"), total_params=info.get("num_total_params"),
        adapter_bytes=info.get("file_size"), peak_memory_bytes=info.get("accelerator_memory_max"),
        train_seconds=info.get("train_time"),
        device=((doc.get("meta_info") or {}).get("system_info") or {}).get("accelerator"),
        curve=curve, metric=f"test_{_metric_key(metric)}",
        higher_is_better=metric_direction(metric), score=final.get(test) if success else None,
        source=f"PEFT method-comparison suite ({path.name})", licence="Apache-2.0")


def _method_name(experiment: str) -> str:
    """autopeft's name for a PEFT benchmark experiment such as ``lora/llama-3.2-3B-rank64-rslora``, by
    its name alone."""
    head, _, rest = experiment.replace("--", "/").partition("/")
    if head == "lora":
        for marker, name in _LORA_VARIANTS:
            if rest.endswith(marker) or f"-{marker}-" in rest:
                return name
        return "lora"
    return _PEFT_NAMES.get(head, head)
