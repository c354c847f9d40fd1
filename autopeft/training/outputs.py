"""What a run leaves in its output directory, and how it gets there without half-written files.

    OUT/adapter_config.json, adapter_model.safetensors   the adapter (PEFT format; full weights for
                                                          methods that change the base itself)
    OUT/tokenizer files                                   so OUT loads on its own
    OUT/run.json                                          RunRecord: settings, versions, hardware, data,
                                                          metrics, history, measured memory and time
    OUT/report.md, OUT/loss.png                           the report with its loss curves
    OUT/README.md                                         the model card
    OUT/generations.jsonl                                 with --metric: every generated answer, its
                                                          reference and its scores
    OUT/checkpoints/                                      Trainer checkpoints, for --resume
    OUT/autopeft-run.json                                 the options of the run (written first: marks
                                                          OUT as autopeft's and lets --resume continue)
    OUT/recommendation.json                               from `tune`: the choice, kept from the start so
                                                          that a resumed fine-tune still reports it

Every file is written under a temporary name and renamed into place; run.json comes last, so a
directory with a run.json holds a finished run. While a run writes into OUT, it holds the lock file
``.OUT.autopeft-lock`` beside it (:func:`claim_output_dir`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import shutil
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from ..errors import BadInputError
from ..profiles import CurvePoint

OPTIONS_FILE = "autopeft-run.json"
RECORD_FILE = "run.json"
RECOMMENDATION_FILE = "recommendation.json"
CHECKPOINTS = "checkpoints"


class HistoryPoint(BaseModel):
    step: int
    epoch: float | None = None
    loss: float | None = None
    eval_loss: float | None = None
    eval_accuracy: float | None = None
    eval_f1: float | None = Field(default=None, description="token classification: the validation entity F1")
    learning_rate: float | None = None


class Hardware(BaseModel):
    device: str
    device_name: str
    cpu_count: int | None
    memory_bytes: int
    accelerator_memory_bytes: int | None = None


class RankReport(BaseModel):
    """What one process did."""

    rank: int
    examples: int = Field(description="training examples this process computed on")
    data_fingerprint: str = Field(description="hash of the set of examples it trained on")
    weights_fingerprint: str | None = Field(description="hash of its trainable weights after training "
                                                        "(None where they are sharded)")
    peak_memory_bytes: int


class DistributedRun(BaseModel):
    """The ``distributed`` section of run.json."""

    num_processes: int
    strategy: str
    backend: str | None
    ranks: list[RankReport]
    shared_examples: int = Field(description="examples more than one process trained on (the sampler pads "
                                             "the last batch by repeating a few)")
    replicas_identical: bool | None = Field(description="whether every process ended with the same trainable "
                                                        "weights (None when the strategy shards them)")


class PilotResult(BaseModel):
    """What one pilot measured."""

    status: Literal["ok", "oom", "failed", "timeout"]
    error: str | None = None
    steps: int = 0
    total_steps: int | None = Field(default=None, description="steps of the full run this pilot stands for")
    curve: list[CurvePoint] = Field(default_factory=list)
    peak_memory_bytes: int | None = None
    train_seconds: float | None = None
    seconds: float | None = Field(default=None, description="wall time of the whole pilot process")
    seconds_per_step: float | None = Field(default=None, description="training loop time per step, timed after the "
                                                                     "first step (its one-off costs and the method's "
                                                                     "initialisation not included)")
    init_seconds: float | None = Field(default=None, description="building the method, a one-off before step 1 "
                                                                 "(data-driven and decomposing inits)")
    tokens_per_second: float | None = None
    learning_rate: float | None = None
    trainable_params: int | None = None
    total_params: int | None = None
    reused: bool = Field(default=False, description="read from the pilot cache, not run again")


class GeneratedAnswer(BaseModel):
    """One generated answer against its reference (task metrics)."""

    split: Literal["validation", "test"]
    source: str
    line: int
    input: str = Field(default="", description="the user's text of the prompt (no template or headers)")
    prompt: str = Field(description="the prompt as the model saw it (rendered as in training)")
    reference: str
    output: str = Field(description="the trained model's greedy answer")
    output_before: str | None = Field(default=None, description="the model's answer before training, where scored")
    scores: dict[str, float | None] = Field(default_factory=dict, description="each per-example metric's score")
    scores_before: dict[str, float | None] = Field(default_factory=dict)


class TaskScores(BaseModel):
    """The ``generation`` section of run.json: how the task metrics were measured (the scores are in
    ``metrics``), and the first answers of each split (``generations.jsonl`` holds them all)."""

    metrics: dict[str, str] = Field(description="each metric asked for, and which way is better (higher/lower)")
    max_new_tokens: int
    validation_examples: int = Field(description="validation examples generated (the first ones)")
    validation_total: int = Field(description="validation examples there were")
    test_examples: int
    seconds: float = Field(description="generating after training")
    seconds_before: float | None = Field(default=None, description="generating before training, where asked")
    errors: list[str] = Field(default_factory=list, description="metrics that failed to score (they score None)")
    samples: list[GeneratedAnswer] = Field(default_factory=list)


class RunRecord(BaseModel):
    """Everything a finished run measured. ``--json`` prints the first six fields."""

    method: str
    settings: dict[str, Any]
    output_dir: str
    metrics: dict[str, float | None]
    peak_memory_bytes: int
    seconds: float
    model: str
    task: str
    learning_rate: float
    batch_size: int
    steps: int
    options: dict[str, Any]
    data: dict[str, Any]
    trainable_params: int
    total_params: int
    adapter_bytes: int
    estimated_peak_memory_bytes: int | None = None
    tokens_per_second: float | None = Field(default=None, description="non-padding tokens per second of training, "
                                                                        "evaluations excluded")
    train_seconds: float = Field(description="wall time of the training loop, evaluations and checkpoints included")
    eval_seconds: float = 0.0
    init_seconds: float = Field(default=0.0, description="building the method onto the model before step 1: the "
                                                         "one-off cost of initialisations from the weights or the "
                                                         "data (PiSSA's SVD, EVA's, CorDA's, LoRA-GA's gradients); "
                                                         "in seconds, not in train_seconds")
    history: list[HistoryPoint] = Field(default_factory=list)
    samples: list[dict[str, str]] = Field(default_factory=list)
    hardware: Hardware
    versions: dict[str, str]
    recommendation: dict[str, Any] | None = None
    distributed: DistributedRun | None = Field(default=None, description="with several processes: what each did")
    warnings: list[str] = Field(default_factory=list, description="what the run's metrics say it failed to "
                                                                  "learn (autopeft.training.evaluation.learning_warnings)")
    precision: str | None = Field(default=None, description="what training computed in: fp32, bf16 or fp16 "
                                                            "(options.precision holds what was asked, e.g. auto)")
    generation: TaskScores | None = Field(default=None, description="task metrics (--metric): how the answers "
                                                                    "were generated and the first of them")

    def summary(self) -> dict[str, Any]:
        return self.model_dump(include={"method", "settings", "output_dir", "metrics", "peak_memory_bytes",
                                        "seconds"})


def check_output_dir(path: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to write into a directory that holds something else, or a finished run, unless asked."""
    if path.exists() and not path.is_dir():
        raise BadInputError("the output path exists and is not a directory", source=str(path))
    if not path.exists() or not any(path.iterdir()):
        if resume:
            raise BadInputError("nothing to resume: the output directory holds no run", source=str(path))
        return
    ours = (path / OPTIONS_FILE).is_file()
    if not ours:
        raise BadInputError("the output directory exists and was not made by autopeft; choose another",
                            source=str(path))
    if resume:
        return
    if overwrite:
        for child in path.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
        return
    finished = (path / RECORD_FILE).is_file()
    raise BadInputError(f"the output directory already holds {'a finished' if finished else 'an unfinished'} run; "
                        f"pass {'--overwrite' if finished else '--resume to continue it, or --overwrite'}",
                        source=str(path))


def lock_file(path: Path) -> Path:
    """The lock file of an output directory: ``.NAME.autopeft-lock`` beside it (not inside, so that the
    directory holds only the run; resolved, so that every spelling of the path shares one)."""
    real = Path(path).expanduser().resolve()
    return real.with_name(f".{real.name}.autopeft-lock")


@contextlib.contextmanager
def claim_output_dir(path: Path, command: str):
    """Hold ``path`` for this process while the block runs: a second ``train``, ``tune`` or
    ``bench`` given the same directory refuses at once, naming the process that holds it. The lock
    is the kernel's (:mod:`autopeft.locks`): a holder killed with ``kill -9`` leaves it free."""
    from ..locks import Busy, claim, describe, info

    lock = lock_file(path)
    made = [p for p in (lock.parent, *lock.parent.parents) if not p.exists()]  # to remove if left empty
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        held = claim(lock, info(command, output_dir=str(lock.parent / Path(path).expanduser().resolve().name)))
    except Busy as exc:
        raise BadInputError(f"in use by {describe(exc.holder)}; wait for it to end, or choose another output "
                            f"directory (its lock: {lock})", source=str(path)) from None
    except OSError as exc:
        raise BadInputError(f"cannot lock it: {lock}: {exc.strerror or exc}", source=str(path)) from None
    try:
        yield held
    finally:
        held.release()
        for directory in made:  # a run refused before it wrote anything leaves no empty parents behind
            try:
                directory.rmdir()
            except OSError:
                break


def holding_output_dir(command: str):
    """Decorate a function taking ``output_dir`` so that it runs holding that directory
    (:func:`claim_output_dir`)."""

    def decorate(function):
        @functools.wraps(function)
        def holding(*args, **kwargs):
            with claim_output_dir(Path(kwargs["output_dir"]), command):
                return function(*args, **kwargs)

        return holding

    return decorate


def write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def move_into(staging: Path, target: Path) -> None:
    """Rename every file of ``staging`` into ``target`` (each rename is atomic), then drop ``staging``."""
    for item in staging.iterdir():
        os.replace(item, target / item.name)
    staging.rmdir()


def hardware(device: str) -> Hardware:
    import psutil

    name, accel = platform.processor() or platform.machine(), None
    if device == "cuda":
        import torch

        props = torch.cuda.get_device_properties(0)
        name, accel = props.name, int(props.total_memory)
    return Hardware(device=device, device_name=name, cpu_count=os.cpu_count(),
                    memory_bytes=int(psutil.virtual_memory().total), accelerator_memory_bytes=accel)


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for dist in ("autopeft", "torch", "transformers", "peft", "accelerate", "datasets"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


def write_report(out: Path, record: RunRecord) -> None:
    """report.md with the loss curves (loss.png) and the model card README.md."""
    _plot_losses(out / "loss.png", record.history)
    if record.recommendation:
        _plot_pareto(out / "pareto.png", record.recommendation)
    write_text(out / "report.md", _report(record))
    write_text(out / "README.md", _model_card(record))


def _plot_losses(path: Path, history: list[HistoryPoint]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    train = [(h.step, h.loss) for h in history if h.loss is not None]
    evals = [(h.step, h.eval_loss) for h in history if h.eval_loss is not None]
    if train:
        ax.plot(*zip(*train), label="training loss", color="#4477aa")
    if evals:
        ax.plot(*zip(*evals), label="validation loss", color="#ee6677", marker="o")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def _plot_pareto(path: Path, recommendation: dict) -> None:
    """Predicted quality against peak memory for every candidate that ran, the frontier joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [c for c in recommendation.get("candidates", []) if c.get("predicted_score") is not None]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)

    def memory(c):
        measured = (c.get("measured") or {}).get("peak_memory_bytes")
        return (measured or (c.get("estimated") or {}).get("peak_memory_bytes") or 0) / 1e9

    # the frontier drawn is that of the two axes shown (run.json's "pareto" also weighs time and size)
    points = sorted(((memory(c), c["predicted_score"], c) for c in rows), key=lambda p: (p[0], -p[1]))
    front, best = [], -float("inf")
    for x, y, c in points:
        if y > best:
            front.append((x, y, c))
            best = y
    on_front = {id(c) for _, _, c in front}
    labels = []
    for x, y, c in points:
        chosen = c["method"] == recommendation.get("chosen")
        loss = (c.get("measured") or {}).get("pilot_loss")
        color = "#ee6677" if chosen else ("#4477aa" if id(c) in on_front else "#888888")
        # a piloted candidate is a filled point labelled with its pilot loss; one ranked without a pilot is hollow
        ax.scatter(x, y, s=110 if chosen else 30, marker="*" if chosen else "o", zorder=3, linewidths=1,
                   color=color if loss is not None else "none", edgecolors=color)
        if loss is not None or chosen or id(c) in on_front:
            labels.append((x, y, c["method"] + (f" ({loss:.3f})" if loss is not None else "")))
    if len(front) > 1:
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="#4477aa", alpha=0.5, zorder=2,
                label="Pareto frontier (memory, predicted score)")
    _place_labels(fig, ax, labels)
    ax.scatter([], [], s=30, color="#888888", label="piloted (its pilot loss in brackets)")
    ax.scatter([], [], s=30, color="none", edgecolors="#888888", label="ranked without a pilot")
    ax.legend(fontsize=8)
    ax.set_xlabel("peak memory (GB)")
    ax.set_ylabel("predicted score (higher is better)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


#: where a point's label may go, in points from it (right and above first); the first that overlaps no
#: label placed before it is taken, else the first
_LABEL_OFFSETS = ((4, 3, "left"), (4, -9, "left"), (-4, 3, "right"), (-4, -9, "right"), (4, 11, "left"),
                  (4, -17, "left"), (-4, 11, "right"), (-4, -17, "right"))


def _place_labels(fig, ax, labels: list[tuple[float, float, str]]) -> None:
    """Label each point where its text overlaps no label placed before it (a cluster of piloted
    methods at nearly the same memory would otherwise print over each other)."""
    renderer = fig.canvas.get_renderer()
    placed = []
    for x, y, text in labels:
        for dx, dy, align in _LABEL_OFFSETS:
            note = ax.annotate(text, (x, y), fontsize=7, xytext=(dx, dy), textcoords="offset points", ha=align)
            box = note.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed):
                break
            note.remove()
        else:  # nowhere free: the first place
            note = ax.annotate(text, (x, y), fontsize=7, xytext=_LABEL_OFFSETS[0][:2], textcoords="offset points")
            box = note.get_window_extent(renderer)
        placed.append(box)


def _metric_rows(metrics: dict[str, float | None]) -> str:
    return "\n".join(f"| {k} | {'n/a' if v is None else f'{v:.4g}'} |" for k, v in metrics.items())


def _report(r: RunRecord) -> str:
    from ..sizes import format_count, format_size

    data = r.data
    tokens = data.get("tokens") or {}
    lines = [
        f"# {r.method} on {Path(data.get('path', '')).name} with {r.model}", "",
        f"{r.steps} steps at batch {r.batch_size} and learning rate {r.learning_rate:g}, "
        f"in {r.train_seconds:.0f} s of training ({r.seconds:.0f} s in all) on {r.hardware.device} "
        f"({r.hardware.device_name}).", "",
        *(["## Warnings", "", *(f"- {w}" for w in r.warnings), ""] if r.warnings else []),
        "## Metrics", "", "| metric | value |", "|---|---:|", _metric_rows(r.metrics), "",
        "## Cost", "", "| | |", "|---|---:|",
        f"| trainable parameters | {format_count(r.trainable_params)} of {format_count(r.total_params)} |",
        f"| adapter file | {format_size(r.adapter_bytes)} |",
        f"| peak memory, measured | {format_size(r.peak_memory_bytes)} |",
        f"| peak memory, estimated before the run | "
        f"{format_size(r.estimated_peak_memory_bytes) if r.estimated_peak_memory_bytes else 'n/a'} |",
        f"| tokens per second | {r.tokens_per_second:,.0f} |" if r.tokens_per_second else "| tokens per second | n/a |",
        "", "## Loss", "", "![loss curves](loss.png)", "",
        "## Data", "",
        f"Format **{data.get('format')}** ({data.get('task')}), {data.get('num_train')} training and "
        f"{data.get('num_validation')} validation examples (validation from {data.get('validation_source')}); "
        f"tokens per example: median {tokens.get('median')}, 95th percentile {tokens.get('p95')}, max "
        f"{tokens.get('max')}, {tokens.get('truncated', 0)} truncated. Fingerprint `{str(data.get('fingerprint'))[:16]}`.",
    ]
    if r.recommendation:
        rec = r.recommendation
        lines += ["", "## Why this method", "", rec.get("explanation", ""), "",
                  f"Pilots took {rec.get('pilot_seconds', 0):.0f} s. Predicted score against peak memory "
                  f"(the frontier in blue, the choice starred, piloted methods filled and labelled with their pilot loss; "
                  f"methods without a pilot, hollow, rank below those with one):", "", "![pareto](pareto.png)", "",
                  "| method | feasible | predicted | pilot loss | peak memory | why not |", "|---|:-:|---:|---:|---:|---|"]
        if rec.get("confidence") is not None:
            lines[-2:-2] = [f"Confidence: {rec['confidence']:.0%} that {rec.get('chosen')} lands within one point of "
                            f"the best candidate (1 point of accuracy, or 1% of the best-to-worst spread).", ""]
        for c in rec.get("candidates", []):
            m = c.get("measured") or {}
            peak = m.get("peak_memory_bytes") or (c.get("estimated") or {}).get("peak_memory_bytes")
            lines.append(f"| {c['method']} | {'yes' if c['feasible'] else 'no'} | "
                         f"{'' if c.get('predicted_score') is None else format(c['predicted_score'], '.3f')} | "
                         f"{'' if m.get('pilot_loss') is None else format(m['pilot_loss'], '.4f')} | "
                         f"{format_size(peak) if peak else ''} | {'; '.join(c.get('excluded_because') or [])} |")
    if r.generation is not None:
        lines += ["", *_task_metric_lines(r)]
    if r.samples:
        lines += ["", "## Sample generations", ""]
        for s in r.samples:
            lines += ["```text", s["prompt"].strip(), "```", "", "> " + s["output"].replace("\n", "\n> "), ""]
    return "\n".join(lines) + "\n"


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def _cell(text: str | None, limit: int = 160) -> str:
    """``text`` as one Markdown table cell: one line, pipes escaped, long text cut."""
    if text is None:
        return ""
    flat = " ".join(text.split())
    flat = flat if len(flat) <= limit else flat[: limit - 1] + "…"
    return flat.replace("|", "\\|") or "(empty)"


def _task_metric_lines(r: RunRecord) -> list[str]:
    """The task metrics (before and after training, per split) and the first answers against references."""
    g = r.generation
    before = g.seconds_before is not None
    val = (f"the first {g.validation_examples} of {g.validation_total} validation examples"
           if g.validation_examples < g.validation_total else f"{g.validation_examples} validation examples")
    parts = [val] if g.validation_examples else []
    parts += [f"{g.test_examples} test examples"] if g.test_examples else []
    lines = ["## Task metrics", "",
             f"Greedy answers (at most {g.max_new_tokens} new tokens) to {' and '.join(parts)}, scored against "
             f"the references; generating took {g.seconds:.0f} s after training"
             + (f" and {g.seconds_before:.0f} s before." if before else "."), "",
             "| metric | split | " + ("before training | " if before else "") + "after training |",
             "|---|---|" + ("---:|" if before else "") + "---:|"]

    def value(key):
        v = r.metrics.get(key)
        return "n/a" if v is None else f"{v:.4g}"

    for name, direction in g.metrics.items():
        for split, prefix in (("validation", ""), ("test", "test_")):
            if f"{prefix}{name}" in r.metrics:
                lines.append(f"| {name} ({direction} is better) | {split} | "
                             + (f"{value(f'{prefix}{name}_before')} | " if before else "")
                             + f"{value(f'{prefix}{name}')} |")
    lines += [*(f"- {e}" for e in g.errors), ""] if g.errors else [""]
    for split in ("validation", "test"):
        rows = [s for s in g.samples if s.split == split]
        if not rows:
            continue
        scored = [name for name in g.metrics if any(s.scores.get(name) is not None for s in rows)]
        lines += [f"### Answers against references ({split}, first {len(rows)}; all in generations.jsonl)", "",
                  ("| prompt | reference | " + ("before training | " if before else "") + "after training | "
                   + "".join(f"{name} | " for name in scored)).rstrip(),
                  "|---|---|" + ("---|" if before else "") + "---|" + "---:|" * len(scored)]
        for s in rows:
            lines.append((f"| {_cell(s.input or s.prompt, 120)} | {_cell(s.reference)} | "
                          + (f"{_cell(s.output_before)} | " if before else "") + f"{_cell(s.output)} | "
                          + "".join(f"{_number(s.scores.get(name))} | " for name in scored)).rstrip())
        lines.append("")
    return lines


def _task_metric_note(r: RunRecord) -> str:
    g = r.generation
    names = ", ".join(f"`{n}`" for n in g.metrics)
    where = " and ".join(p for p in (f"{g.validation_examples} validation" if g.validation_examples else "",
                                     f"{g.test_examples} test" if g.test_examples else "") if p)
    return (f"Task metrics ({names}) score greedy answers of at most {g.max_new_tokens} new tokens to {where} "
            f"examples against their references" + ("; `_before` is the base model before training." if
                                                     g.seconds_before is not None else "."))


def _model_card(r: RunRecord) -> str:
    from ..tasks import AUTO_CLASSES, CLASSIFICATION_TASKS, PIPELINE_TAGS

    peft = (Path(r.output_dir) / "adapter_config.json").exists()
    auto = AUTO_CLASSES.get(r.task, "AutoModelForCausalLM")
    if peft:
        auto = auto.replace("AutoModel", "AutoPeftModel")
    labels = r.data.get("labels") if r.task in CLASSIFICATION_TASKS and peft else None
    # the base checkpoint has no head: the labels size the one the adapter fills (and name its outputs)
    head = f", id2label={dict(enumerate(labels))!r}" if labels else ""
    load = (f"from {'peft' if peft else 'transformers'} import {auto}\n"
            f"model = {auto}.from_pretrained(\"{r.output_dir}\"{head})")
    return "\n".join([
        "---", f"library_name: {'peft' if peft else 'transformers'}", "tags:", "- autopeft", f"- {r.method}",
        f"pipeline_tag: {PIPELINE_TAGS.get(r.task, 'text-generation')}", "---", "",
        f"# {r.method} fine-tune of {r.model}", "",
        f"Trained with autopeft {r.versions.get('autopeft', '')} using **{r.method}** "
        f"({r.trainable_params:,} trainable parameters) on `{Path(r.data.get('path', '')).name}` "
        f"({r.data.get('num_train')} examples, {r.data.get('format')} format) for {r.steps} steps.", "",
        "## Results", "", "| metric | value |", "|---|---:|", _metric_rows(r.metrics), "",
        *([_task_metric_note(r), ""] if r.generation is not None else []),
        *([f"**Warning:** {w}" for w in r.warnings] + [""] if r.warnings else []),
        "## Use", "", "```python", load, "```", "",
        "Settings, data fingerprint, versions and hardware are in `run.json`; curves in `report.md`.", ""])
