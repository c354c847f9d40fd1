"""Profile records: what the recommender learns from.

One record is one finished fine-tune: the task and model, the method and its settings, what it cost
(trainable parameters, adapter bytes, peak memory, time) and how it went (the loss curve and the
final score). Records come from three places, all read by :func:`load_records`:

- ``profiles/*.jsonl`` shipped with autopeft (produced by its own benchmark sweeps);
- the local store, ``$AUTOPEFT_HOME/profiles.jsonl``, to which every finished ``train`` and ``tune``
  appends its run, so the next recommendation on this machine knows more (one writer at a time,
  whole lines only; a damaged line is skipped with one warning: :func:`read_store`, :func:`append`);
- results imported from the PEFT method-comparison suite (:func:`import_peft_results`), or any
  directory in that layout.

A *benchmark* groups the records that were trained on the same data and model with the same budget,
so that their scores can be compared with one another; the recommender learns from the ranking
inside each benchmark, never across them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import BadInputError
from .locks import locked

log = logging.getLogger("autopeft")

#: 2 added ``seed``, ``fingerprint`` and ``data_stats`` (an older autopeft keeps such records unread)
SCHEMA_VERSION = 2
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
    seed: int | None = Field(default=None, description="the training seed where runs of one configuration differ in "
                                                       "it (None: the only run, or seed 0): several tell its spread")
    fingerprint: str | None = Field(default=None, description="sha256 of the training file's bytes: a user's data "
                                                              "is this run's data when they are equal")
    data_stats: dict[str, float] | None = Field(
        default=None, description="how the data looks: examples (trained on), mean_tokens, labels (classes; 0 for "
                                  "causal LM), so that runs on data like a user's can be found")

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
    """This machine's store: ``$AUTOPEFT_HOME/profiles.jsonl``."""
    from .models import autopeft_home

    return autopeft_home() / STORE_NAME


def load_records(paths: Iterable[Path] | None = None, *, shipped: bool = True, store: bool = True) -> list[ProfileRecord]:
    """Every record from the shipped profiles, the local store and ``paths`` (files or dirs of
    ``.jsonl`` record files, or dirs in the PEFT method-comparison layout). A damaged line of the
    store is skipped with one warning (:func:`read_store`); one in a file given here is an error."""
    records: list[ProfileRecord] = []
    if shipped:
        for f in sorted((f for f in shipped_folder().iterdir() if f.name.endswith(".jsonl")), key=lambda f: f.name):
            records += read_jsonl(f)
    if store:
        records += read_store()
    for path in (Path(p) for p in paths or ()):
        if path.is_dir() and not any(path.glob("*.jsonl")):
            records += import_peft_results(path)
        elif path.is_dir():
            for f in sorted(path.glob("*.jsonl")):
                records += read_jsonl(f)
        else:
            records += read_jsonl(path)
    return records


def read_jsonl(path) -> list[ProfileRecord]:
    """Records from a JSONL file (a path, or a shipped resource), one per line; the first line that
    is not a record is an error naming its number."""
    scan = scan_jsonl(path)
    if scan.damaged:
        first = scan.damaged[0]
        raise BadInputError(first.reason, source=str(path), line=first.line)
    if scan.newer:
        raise BadInputError(f"a record of a newer autopeft (schema version above {SCHEMA_VERSION}): upgrade "
                            f"autopeft to read it", source=str(path), line=scan.newer[0])
    return scan.records


# -- the local store: appended to by every run, read by every recommendation ----------------------
#
# JSONL that writers append to in turn, under a POSIX lock on a lock file beside it (.NAME.lock):
# each append is one write of whole lines, starting on a fresh line, made durable with fsync, and
# undone if it fails part-way. A crash in the middle of one (or a copy taken mid-write) leaves at
# most a torn last line, which readers skip with one warning and the next writer steps over. See
# docs/reliability.md for why this and not SQLite.

#: how long a writer waits for the store's lock (a write holds it for milliseconds)
WRITE_WAIT_SECONDS = 60.0
#: how long a reader waits for it before reading anyway
READ_WAIT_SECONDS = 10.0


@dataclass
class DamagedLine:
    line: int
    reason: str


@dataclass
class Scan:
    """What a JSONL record file holds, line by line."""

    path: str
    records: list[ProfileRecord] = field(default_factory=list)
    damaged: list[DamagedLine] = field(default_factory=list)
    newer: list[int] = field(default_factory=list)  # lines of a newer schema: whole, kept, not read
    whole_lines: list[bytes] = field(default_factory=list)  # the records' and newer lines' own bytes
    ends_mid_line: bool = False


def lock_path(path: Path) -> Path:
    """The lock file of a record file: ``.NAME.lock`` beside it."""
    return Path(path).with_name(f".{Path(path).name}.lock")


def scan_jsonl(path, data: bytes | None = None) -> Scan:
    """Parse a JSONL record file (or its bytes ``data``) line by line, keeping what is whole and
    naming what is not: a torn line, bytes that are not UTF-8, a line that is not JSON, JSON that is
    not a profile record. Blank lines are nothing."""
    if data is None:
        try:
            data = (path if hasattr(path, "read_bytes") else Path(path)).read_bytes()
        except OSError as exc:
            raise BadInputError(f"cannot read profile records: {exc.__class__.__name__}: {exc.strerror or exc}",
                                source=str(path)) from None
    scan = Scan(path=str(path), ends_mid_line=bool(data) and not data.endswith(b"\n"))
    lines = data.split(b"\n")
    if not scan.ends_mid_line:
        lines.pop()  # what follows the last newline: nothing
    for number, raw in enumerate(lines, 1):
        torn = scan.ends_mid_line and number == len(lines)
        reason, record = _parse_line(raw, torn)
        if reason == "":
            continue
        if reason == "newer":
            scan.newer.append(number)
            scan.whole_lines.append(raw)
        elif reason is not None:
            scan.damaged.append(DamagedLine(number, reason))
        else:
            scan.records.append(record)
            scan.whole_lines.append(raw)
    return scan


def _parse_line(raw: bytes, torn: bool) -> tuple[str | None, ProfileRecord | None]:
    """(None, the record) for a whole record; ("", None) for a blank line; ("newer", None) for a
    record of a newer schema; else (why it is damaged, None)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not UTF-8 text (byte {exc.start + 1})", None
    if not text.strip():
        return "", None
    if "\x00" in text:
        return "holds NUL bytes (a write the machine never finished)", None
    try:
        obj = json.loads(text)
    except ValueError as exc:
        if torn:
            return "cut off: the file ends in the middle of this line (a write that never finished)", None
        message, at = getattr(exc, "msg", str(exc)), getattr(exc, "pos", 0)
        if message.startswith("Unterminated string") or at >= len(text.rstrip()):
            return "cut off: the line ends in the middle of a record (a write that never finished)", None
        return f"not JSON: {message} (column {getattr(exc, 'colno', '?')})", None
    if not isinstance(obj, dict):
        return f"not a profile record (a JSON {type(obj).__name__}, not an object)", None
    version = obj.get("schema_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        return "newer", None
    try:
        return None, ProfileRecord.model_validate(obj)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "record"
        return f"not a profile record: {where}: {err['msg']}", None


def _read_shared(path: Path) -> bytes:
    """The file's bytes, read under a shared lock so that no append is seen half-done (after
    :data:`READ_WAIT_SECONDS` without the lock, read anyway)."""
    try:
        with locked(lock_path(path), shared=True, timeout=READ_WAIT_SECONDS):
            return path.read_bytes()
    except TimeoutError:
        return path.read_bytes()


_warned: set[tuple[str, tuple[int, ...]]] = set()


def _lines(numbers: list[int], limit: int = 5) -> str:
    shown = ", ".join(str(n) for n in numbers[:limit])
    more = f" and {len(numbers) - limit} more" if len(numbers) > limit else ""
    return f"line{'s' if len(numbers) > 1 else ''} {shown}{more}"


def _repair_command(path: Path) -> str:
    return "autopeft profiles check --repair" + ("" if Path(path) == store_path() else f" {path}")


def _warn_once(key: tuple[str, tuple[int, ...]], message: str) -> None:
    """Each finding is said once per process, however often the file is read."""
    if key not in _warned:
        _warned.add(key)
        log.warning(message)


def read_store(path: Path | None = None) -> list[ProfileRecord]:
    """The whole records of a record file autopeft appends to (this machine's store by default; a
    bench's ``records.jsonl``). A damaged line is skipped and said once, in one line: how many and
    where, and the command that removes them. A store that cannot be read at all is said so too."""
    path = Path(path) if path is not None else store_path()
    if not path.is_file():
        return []
    try:
        data = _read_shared(path)
    except OSError as exc:
        _warn_once((str(path), ()), f"cannot read the profile records in {path} ({exc.strerror or exc}): "
                                    f"going on without them")
        return []
    scan = scan_jsonl(path, data)
    if scan.damaged:
        numbers = [d.line for d in scan.damaged]
        n = len(numbers)
        _warn_once((str(path), tuple(numbers)),
                   f"skipped {n} damaged line{'s' if n > 1 else ''} of {path}: {_lines(numbers)}; "
                   f"`{_repair_command(path)}` removes {'them' if n > 1 else 'it'}")
    if scan.newer:
        _warn_once((str(path), (0, *scan.newer)),
                   f"{path}: left {len(scan.newer)} record{'s' if len(scan.newer) > 1 else ''} of a newer "
                   f"autopeft unread ({_lines(scan.newer)}); upgrade autopeft to learn from them")
    return scan.records


def append(records: Iterable[ProfileRecord], path: Path | None = None) -> Path:
    """Append records to the local store (or to ``path``): whole or not at all, on a line of their
    own, one writer at a time (see the note above :data:`WRITE_WAIT_SECONDS`)."""
    from .errors import AutopeftError

    path = Path(path) if path is not None else store_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = b"".join(r.model_dump_json().encode("utf-8") + b"\n" for r in records)
    if not payload:
        return path
    try:
        with locked(lock_path(path), timeout=WRITE_WAIT_SECONDS) as held:
            if not held:
                _warn_once((str(lock_path(path)), ()), f"cannot lock {lock_path(path)}: appending to {path} "
                                                       f"without a lock (another writer could collide)")
            _append_locked(path, payload)
    except TimeoutError:
        raise AutopeftError(f"{path} stayed locked by another process for {WRITE_WAIT_SECONDS:.0f} s "
                            f"(its lock file: {lock_path(path)})") from None
    return path


def _append_locked(path: Path, payload: bytes) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            # the last write never finished: the torn line stays a line of its own, this one starts afresh
            payload = b"\n" + payload
            data = path.read_bytes()
            tail = scan_jsonl(path, data)
            if tail.damaged and tail.damaged[-1].line == data.count(b"\n") + 1:
                log.warning(f"the last line of {path} (line {tail.damaged[-1].line}) was cut off by a write that "
                            f"never finished; the new record starts on the next line "
                            f"(`{_repair_command(path)}` removes the damaged one)")
        written = 0
        try:
            while written < len(payload):
                written += os.write(fd, payload[written:])
            os.fsync(fd)
        except BaseException:
            if written < len(payload):  # a full disk, an I/O error, a signal mid-write: leave no part behind
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


def check_store(path: Path | None = None) -> Scan | None:
    """What the store (or ``path``) holds, line by line; None when there is no such file."""
    path = Path(path) if path is not None else store_path()
    if not path.is_file():
        return None
    try:
        return scan_jsonl(path, _read_shared(path))
    except OSError as exc:
        raise BadInputError(f"cannot read it: {exc.strerror or exc}", source=str(path)) from None


def repair_store(path: Path | None = None) -> tuple[Scan | None, Path | None]:
    """Rewrite the store (or ``path``) without its damaged lines, keeping every whole record as it
    was, byte for byte. The damaged file is kept beside it as ``NAME.damaged-<time>``, and the new
    one replaces it in one rename, under the writers' lock. Returns (what it held, the backup; None
    when nothing was damaged)."""
    path = Path(path) if path is not None else store_path()
    if not path.is_file():
        return None, None
    try:
        with locked(lock_path(path), timeout=WRITE_WAIT_SECONDS):
            data = path.read_bytes()
            scan = scan_jsonl(path, data)
            if not scan.damaged:
                return scan, None
            mode = os.stat(path).st_mode & 0o777
            backup = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
            n = 1
            while backup.exists():
                backup, n = backup.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}-{n}"), n + 1
            _write_durably(backup, data, mode)
            tmp = path.with_name(f".{path.name}.repair-{os.getpid()}.tmp")
            _write_durably(tmp, b"".join(line + b"\n" for line in scan.whole_lines), mode)
            os.replace(tmp, path)
            _sync_dir(path.parent)
            return scan, backup
    except TimeoutError:
        from .errors import AutopeftError

        raise AutopeftError(f"{path} stayed locked by another process for {WRITE_WAIT_SECONDS:.0f} s") from None


def _write_durably(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def record_from_run(run, benchmark: str | None = None) -> ProfileRecord:
    """A profile record from a finished :class:`autopeft.outputs.RunRecord`."""
    from .methods.registry import get_methods

    task = run.task
    # classification by its accuracy, token classification by its entity F1, causal LM by its loss
    metric, higher = {"seq-cls": ("accuracy", True), "token-cls": ("f1", True)}.get(task, ("eval_loss", False))
    if run.options.get("test"):  # scored on a test file: the validation set guided the run
        metric = f"test_{metric.removeprefix('eval_')}"
    task_metric = task_metric_of(run)
    if task_metric is not None:  # the first --metric asked for scores the run
        metric, higher = task_metric
    data = run.data or {}
    fingerprint = data.get("fingerprint") or "unknown"
    method = get_methods().get(run.method)
    curve = [CurvePoint(step=p.step, train_loss=p.loss, eval_loss=p.eval_loss,
                        eval_score=p.eval_f1 if task == "token-cls" else p.eval_accuracy)
             for p in run.history if p.loss is not None or p.eval_loss is not None]
    return ProfileRecord(
        benchmark=benchmark or (f"local/{run.model}/{fingerprint[:12]}/bs{run.batch_size}-steps{run.steps}"
                                # runs compare only by one metric: a task metric makes a benchmark of its own
                                + (f"/{metric}" if task_metric is not None else "")),
        experiment=f"{run.method}-lr{run.learning_rate:g}-{Path(run.output_dir).name}", task=task,
        model=run.model, dataset=str(run.options.get("data")), method=run.method,
        family=method.family if method else None, settings=run.settings, learning_rate=run.learning_rate,
        batch_size=run.batch_size, total_steps=max(1, run.steps), trainable_params=run.trainable_params,
        total_params=run.total_params, adapter_bytes=run.adapter_bytes, peak_memory_bytes=run.peak_memory_bytes,
        estimated_peak_memory_bytes=run.estimated_peak_memory_bytes, train_seconds=run.train_seconds,
        device=run.hardware.device_name, curve=curve, metric=metric,
        higher_is_better=higher, score=run.metrics.get(metric), source="autopeft run on this machine",
        seed=(run.options or {}).get("seed") or None, fingerprint=data.get("fingerprint"), data_stats=data_stats(data))


def data_stats(data: dict[str, Any]) -> dict[str, float] | None:
    """The figures of a run's data (``run.json``'s ``data``) that tell how alike two data sets are."""
    tokens = data.get("tokens") or {}
    if not data.get("num_train") or not tokens.get("mean"):
        return None
    return {"examples": float(data["num_train"]), "mean_tokens": float(tokens["mean"]),
            "labels": float(len(data.get("labels") or ()))}


def data_source(record: ProfileRecord) -> str:
    """The data set a record's training data came from, however it was sampled or relabelled: tasks of
    one source (SST-2 at two sizes; GSM8K questions labelled two ways) teach each other their answers,
    so an evaluation leaves a source out whole. ``../shared/data/sst2/train.tsv`` and ``sst2 train (2,000
    sampled)`` are ``sst2``; ``derived/gsm8k-division-train.jsonl`` is ``gsm8k``."""
    text = record.dataset.replace("\\", "/").lower()
    match = re.search(r"/data/([^/]+)/", text) or re.search(r"derived/([a-z0-9]+)", text)
    if match:
        return match.group(1)
    stem = Path(text.split()[0]).name if text.split() else text
    return re.split(r"[-_.]", stem)[0] or text


def configuration_key(record: ProfileRecord) -> str:
    """What runs of one configuration share, whatever their seed: benchmark, method, settings, rate."""
    return json.dumps([record.benchmark, record.method, record.settings, record.learning_rate], sort_keys=True,
                      default=str)


def task_metric_of(run) -> tuple[str, bool] | None:
    """The task metric that scores ``run`` (a RunRecord): the first ``--metric`` it was asked for, on the
    test file where it has one, and whether higher is better; None for a run without task metrics."""
    generation = getattr(run, "generation", None)
    if generation is None or not generation.metrics:
        return None
    name, direction = next(iter(generation.metrics.items()))
    key = f"test_{name}" if generation.test_examples else name
    return key, direction == "higher"


# -- the PEFT method-comparison layout -----------------------------------------------------------

#: the direction of the metrics the PEFT suite's tasks report (each as ``test <name>`` at the end and
#: ``valid <name>`` along the way), True where higher is better. The order is also the preference:
#: where a run reports several test metrics, the first entry that matches one is its score (metrics
#: of unknown direction beside a known one are passed over; with none known, the file is refused). A name
#: matches an entry equal to it, starting with ``<entry>_`` or ending with ``_<entry>`` (after
#: lower-casing it and turning spaces and punctuation into ``_``); an entry ending in ``*`` matches
#: any name that starts with the rest (``rouge*``: rouge1, rougeL).
METRIC_DIRECTIONS: tuple[tuple[str, bool], ...] = (
    ("accuracy", True), ("exact_match", True), ("final_number", True), ("json_equal", True), ("json_valid", True),
    ("pass_*", True), ("f1", True), ("rouge*", True), ("bleu", True),
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
