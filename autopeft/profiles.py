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
    method: str = Field(description="autopeft's method name where one matches, else the source's")
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
    metric, higher = ("accuracy", True) if task == "seq-cls" else ("eval_loss", False)
    if run.options.get("test"):  # scored on a test file: the validation set guided the run
        metric, higher = ("test_accuracy", True) if task == "seq-cls" else ("test_loss", False)
    data = run.data or {}
    fingerprint = data.get("fingerprint") or "unknown"
    method = get_methods().get(run.method)
    curve = [CurvePoint(step=p.step, train_loss=p.loss, eval_loss=p.eval_loss, eval_score=p.eval_accuracy)
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

#: experiment-name markers that make a PEFT LoRA run one of autopeft's LoRA variants
_LORA_VARIANTS = (("rslora", "rslora"), ("dora", "dora"), ("lorafa", "lorafa"), ("loraplus", "loraplus"),
                  ("pissa", "pissa"))
_PEFT_NAMES = {"full-finetuning": "full", "prefixtuning": "prefix_tuning", "prompt_tuning": "prompt_tuning",
               "ptuning": "ptuning", "ln_tuning": "ln_tuning"}


def import_peft_results(directory: Path) -> list[ProfileRecord]:
    """Records from a directory in the PEFT method-comparison layout (one JSON per run with
    ``run_info``, ``train_info`` and a ``metrics`` list). The benchmark is the directory's name."""
    directory = Path(directory)
    if not directory.is_dir():
        raise BadInputError("not a directory of benchmark results", source=str(directory))
    files = sorted(directory.glob("*.json"))
    if not files:
        raise BadInputError("no result files (*.json) here", source=str(directory))
    return [_peft_record(f, directory.name) for f in files]


def _peft_record(path: Path, benchmark: str) -> ProfileRecord:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        run, info = doc["run_info"], doc["train_info"]
        config = run["train_config"]
        metrics = info["metrics"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BadInputError(f"not a PEFT method-comparison result ({exc.__class__.__name__}: {exc})",
                            source=str(path)) from None
    final = next((m for m in reversed(metrics) if "test accuracy" in m), {})
    curve = [CurvePoint(step=m["step"], train_loss=m.get("train loss"), eval_score=m.get("valid accuracy"))
             for m in metrics if "valid accuracy" in m]
    experiment = run.get("experiment_name") or path.stem
    success = info.get("status") == "success" and "test accuracy" in final
    return ProfileRecord(
        benchmark=f"peft-method-comparison/{benchmark}", experiment=experiment, task="causal-lm",
        model=config.get("model_id", "unknown"), dataset=benchmark, method=_method_name(experiment),
        settings={k: v for k, v in (run.get("peft_config") or {}).items()
                  if isinstance(v, (int, float, str, bool)) and k != "base_model_name_or_path"},
        learning_rate=(config.get("optimizer_kwargs") or {}).get("lr"), batch_size=config.get("batch_size"),
        total_steps=config.get("max_steps") or max((m["step"] for m in metrics), default=1),
        trainable_params=info.get("num_trainable_params"), total_params=info.get("num_total_params"),
        adapter_bytes=info.get("file_size"), peak_memory_bytes=info.get("accelerator_memory_max"),
        train_seconds=info.get("train_time"),
        device=((doc.get("meta_info") or {}).get("system_info") or {}).get("accelerator"),
        curve=curve, metric="test_accuracy", higher_is_better=True,
        score=final.get("test accuracy") if success else None,
        source=f"PEFT method-comparison suite ({path.name})", licence="Apache-2.0")


def _method_name(experiment: str) -> str:
    """autopeft's name for a PEFT benchmark experiment such as ``lora/llama-3.2-3B-rank64-rslora``."""
    head, _, rest = experiment.replace("--", "/").partition("/")
    if head == "lora":
        for marker, name in _LORA_VARIANTS:
            if rest.endswith(marker) or f"-{marker}-" in rest:
                return name
        return "lora"
    return _PEFT_NAMES.get(head, head)
