"""Task metrics in a run: greedy generation on the validation and test sets, batched, scored against the
references by the metrics asked for (``--metric``; see :mod:`autopeft.methods.metrics`).

A run's scores land in its metrics as ``NAME`` (validation), ``test_NAME`` (the ``--test`` file) and,
with ``metrics_before``, ``NAME_before`` and ``test_NAME_before`` (the model as loaded, before the method
is built onto it). Every answer goes to ``generations.jsonl`` in the output directory, the first few to
run.json and the report.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from typing import Callable

from ..data import GenerationExample, generation_examples
from ..errors import BadInputError
from ..methods.metrics import Metric, checked_score, checked_score_one, resolve_metrics
from .outputs import GeneratedAnswer, TaskScores

log = logging.getLogger("autopeft")

#: answers of each split kept in run.json and shown in the report (generations.jsonl holds all)
REPORT_ROWS = 10
GENERATIONS_FILE = "generations.jsonl"


def generate_answers(model, tokenizer, prompts: list[str], *, special_tokens: bool, max_new_tokens: int,
                     batch_size: int, max_length: int | None = None,
                     on_batch: Callable[[int], None] | None = None) -> list[str]:
    """Greedy continuations of already-rendered prompts, ``batch_size`` at a time, left-padded; prompts
    longer than ``max_length`` tokens keep their end. Stops at the tokenizer's or the model's end token.
    ``on_batch(done)`` is called after each batch with the number of answers so far."""
    import torch

    if not prompts:
        return []
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config = _greedy_config(model, tokenizer, max_new_tokens, 0 if pad_id is None else pad_id)
    saved = (tokenizer.padding_side, tokenizer.truncation_side, tokenizer.pad_token)
    tokenizer.padding_side, tokenizer.truncation_side = "left", "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # longest first, so that each batch pads little and a too-large batch fails at once
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    answers: list[str] = [""] * len(prompts)
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                chosen = order[start:start + batch_size]
                batch = tokenizer([prompts[i] for i in chosen], return_tensors="pt", padding=True,
                                  add_special_tokens=special_tokens, truncation=max_length is not None,
                                  max_length=max_length).to(device)
                out = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                     generation_config=config)
                width = batch["input_ids"].shape[1]
                for i, row in zip(chosen, out):
                    answers[i] = tokenizer.decode(row[width:], skip_special_tokens=True).strip()
                if on_batch is not None:
                    on_batch(min(start + batch_size, len(order)))
    finally:
        tokenizer.padding_side, tokenizer.truncation_side, tokenizer.pad_token = saved
        model.train(was_training)
    return answers


def _greedy_config(model, tokenizer, max_new_tokens: int, pad_id: int):
    """The model's generation config made greedy, with the tokenizer's end token among the stops
    (training appended it to every answer)."""
    from transformers import GenerationConfig

    base = getattr(model, "generation_config", None)
    config = copy.deepcopy(base) if isinstance(base, GenerationConfig) else GenerationConfig()
    config.do_sample, config.num_beams = False, 1
    config.temperature = config.top_p = config.top_k = None
    config.max_new_tokens, config.max_length = max_new_tokens, None
    config.pad_token_id = pad_id
    config.use_cache = True  # training may have turned it off (gradient checkpointing)
    ends = config.eos_token_id if isinstance(config.eos_token_id, list) else (
        [] if config.eos_token_id is None else [config.eos_token_id])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ends:
        ends = [*ends, tokenizer.eos_token_id]
    config.eos_token_id = ends or None
    return config


class TaskScoring:
    """A run's task metrics: the examples to generate from, checked before training; the answers before
    (optional) and after training; their scores.

    :param limit: validation examples to generate (the first ones); the test set is generated whole.
    """

    def __init__(self, metrics: list[Metric], data, tokenizer, *, max_new_tokens: int, limit: int | None,
                 batch_size: int, max_length: int):
        self.metrics = metrics
        self.tokenizer = tokenizer
        self.max_new_tokens, self.batch_size, self.max_length = max_new_tokens, batch_size, max_length
        self.splits: dict[str, list[GenerationExample]] = {}
        self.validation_total = len(data.validation_records.rows) if data.validation_records else 0
        if data.validation_records is not None:
            self.splits["validation"] = generation_examples(data.validation_records, tokenizer, limit)
        if data.test_records is not None:
            self.splits["test"] = generation_examples(data.test_records, tokenizer)
        if not self.splits:
            raise BadInputError("task metrics need examples to score: a validation split (keep "
                                "--validation-fraction above 0), a --validation file or a --test file",
                                source="--metric")
        self._check_references()
        self.before: dict[str, list[str]] | None = None
        self.seconds_before: float | None = None

    @classmethod
    def for_run(cls, opts, data, tokenizer) -> TaskScoring | None:
        """The scoring ``opts`` asks for (None without metrics); a wrong name, task or reference is
        refused here, before any model loads."""
        if not opts.metrics:
            return None
        metrics = resolve_metrics(opts.metrics)
        if data.info.task != "causal-lm":
            raise BadInputError(f"task metrics score generated text, so they need causal-LM data; this is "
                                f"{data.info.format} ({data.info.task})", source="--metric")
        return cls(metrics, data, tokenizer, max_new_tokens=opts.generate_max_new_tokens,
                   limit=opts.generate_max_examples, batch_size=opts.batch_size, max_length=opts.max_length)

    def _check_references(self) -> None:
        for examples in self.splits.values():
            for example in examples:
                for metric in self.metrics:
                    problem = metric.reference_problem(example.reference)
                    if problem:
                        raise BadInputError(problem, example.source, example.line)

    @property
    def count(self) -> int:
        """Answers generated per pass (validation and test together)."""
        return sum(len(v) for v in self.splits.values())

    def generate(self, model, *, when: str, progress: bool) -> tuple[dict[str, list[str]], float]:
        """Every split's answers from ``model``, and the seconds it took; ``when`` names the pass
        ("before training" or "after training") in the progress lines."""
        from .progress import GenerationProgress

        started = time.perf_counter()
        answers = {}
        for split, examples in self.splits.items():
            shown = GenerationProgress(f"{split} answers {when}", len(examples), enabled=progress)
            answers[split] = generate_answers(
                model, self.tokenizer, [e.prompt for e in examples], special_tokens=examples[0].special_tokens
                if examples else True, max_new_tokens=self.max_new_tokens, batch_size=self.batch_size,
                max_length=self.max_length, on_batch=shown.update)
            shown.finish()
        return answers, time.perf_counter() - started

    def score_before(self, model, *, progress: bool) -> None:
        """Generate with the model as loaded (before the method is built onto it, before training)."""
        self.before, self.seconds_before = self.generate(model, when="before training", progress=progress)

    def expected_seconds(self) -> float:
        """How long the pass after training should take: as long as the one before, where it ran."""
        return self.seconds_before or 0.0

    def score_after(self, model, *, progress: bool) -> tuple[dict[str, float | None], TaskScores, list[dict]]:
        """Generate with the trained model; return the metrics (named as the run's metrics are), the
        run.json section, and every answer as a row of generations.jsonl."""
        after, seconds = self.generate(model, when="after training", progress=progress)
        scores: dict[str, float | None] = {}
        errors: list[str] = []
        for split, examples in self.splits.items():
            references = [e.reference for e in examples]
            prefix = "test_" if split == "test" else ""
            for metric in self.metrics:
                passes = [("", after[split])] + ([("_before", self.before[split])] if self.before else [])
                for suffix, answers in passes:
                    value, error = checked_score(metric, answers, references)
                    scores[f"{prefix}{metric.name}{suffix}"] = value
                    if error and error not in errors:
                        errors.append(error)
                        log.warning(error)
        rows = [self._row(split, i, example, after) for split, examples in self.splits.items()
                for i, example in enumerate(examples)]
        section = TaskScores(
            metrics={m.name: m.direction for m in self.metrics}, max_new_tokens=self.max_new_tokens,
            validation_examples=len(self.splits.get("validation", [])), validation_total=self.validation_total,
            test_examples=len(self.splits.get("test", [])), seconds=seconds, seconds_before=self.seconds_before,
            errors=errors, samples=[GeneratedAnswer(**row) for split in self.splits
                                    for row in [r for r in rows if r["split"] == split][:REPORT_ROWS]])
        return scores, section, rows

    def _row(self, split: str, i: int, example: GenerationExample, after: dict[str, list[str]]) -> dict:
        before = self.before[split][i] if self.before else None
        return {"split": split, "source": example.source, "line": example.line, "input": example.input,
                "prompt": example.prompt, "reference": example.reference, "output": after[split][i], "output_before": before,
                "scores": {m.name: checked_score_one(m, after[split][i], example.reference) for m in self.metrics},
                "scores_before": ({m.name: checked_score_one(m, before, example.reference) for m in self.metrics}
                                  if before is not None else {})}


def check_request(data: str, metrics, task: str | None = None) -> None:
    """Refuse task metrics that cannot score a run on ``data`` (an unknown name, classification or plain
    text data), from the names and the data file alone: what ``tune`` and ``bench`` check before their
    pilots and runs. The references are checked when each run starts."""
    from ..data import read_records

    if not resolve_metrics(metrics):
        return
    fmt = read_records(data)[0]
    if task == "seq-cls" or fmt == "classification":
        raise BadInputError(f"task metrics score generated text, so they need causal-LM data; {data} is "
                            f"{fmt} data" + (" (--task seq-cls)" if task == "seq-cls" else ""), source="--metric")
    if fmt not in ("prompt-completion", "alpaca", "chat"):
        raise BadInputError(f"task metrics score answers to prompts, and {fmt} records have none; use "
                            f"prompt-completion, alpaca or chat data", data)


def write_generations(path, rows: list[dict]) -> None:
    """Every answer of the run, one JSON object a line."""
    from .outputs import write_text

    write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
