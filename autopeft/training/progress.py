"""Training progress for people: a live bar on a terminal, a line every few seconds otherwise.

Both go to stderr, so ``--json`` output on stdout stays one document.
"""

from __future__ import annotations

import sys
import time

from transformers import TrainerCallback

from ..processes import stop_requested


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class ProgressCallback(TrainerCallback):
    """Shows step, loss, tokens/s and the time left; says up front how long the run should take
    once the first steps have been timed."""

    def __init__(self, stream=None, interval: float = 10.0, live: bool | None = None, after_seconds: float = 0.0):
        self.stream = stream or sys.stderr
        self.after_seconds = after_seconds  # what follows training and is known (generating answers)
        self.live = self.stream.isatty() if live is None else live
        self.interval = interval
        self._bar = None
        self._last_line = 0.0
        self._loss = None
        self._eval = None
        self._announced = False
        self._eval_seconds = 0.0
        self._evaluations = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()
        self._first_step = state.global_step  # above 0 when resuming
        self._tokens_at_start = state.num_input_tokens_seen or 0
        if self.live:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            from rich.console import Console

            self._bar = Progress(TextColumn("training"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                 TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                                 console=Console(file=self.stream), transient=False)
            self._bar.start()
            self._task = self._bar.add_task("train", total=state.max_steps, completed=state.global_step, info="")

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" in logs:
            self._loss = logs["loss"]
        if "eval_loss" in logs:
            self._eval = logs["eval_loss"]
            if not self.live:
                extra = "".join(f", {k[5:]} {v:.4g}" for k, v in logs.items()
                                if k.startswith("eval_") and k not in ("eval_loss",) and isinstance(v, float)
                                and not k.endswith(("runtime", "per_second")))
                self._write(f"eval at step {state.global_step}: loss {self._eval:.4f}{extra}")

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self._eval_seconds += (metrics or {}).get("eval_runtime", 0.0)
        self._evaluations += 1

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        done = state.global_step - self._first_step
        elapsed = now - self._start
        # evaluations (one before the first step, on a large validation set) would pass for slow steps
        per_step = max(0.0, elapsed - self._eval_seconds) / max(done, 1)
        left = per_step * (state.max_steps - state.global_step) + self._evaluations_left(args, state)
        tokens = (state.num_input_tokens_seen or 0) - self._tokens_at_start
        rate = tokens / elapsed if elapsed > 0 else 0.0
        # once a stop is asked for, the run's length no longer matters: its last lines say what happens
        if not self._announced and done >= min(3, state.max_steps) and not stop_requested():
            self._announced = True
            # the base's answers run to the token limit more often than trained ones: an upper bound
            after = (f" (then generating answers, up to {_duration(self.after_seconds)} as before training)"
                     if self.after_seconds >= 1 else "")
            self._write(f"{state.max_steps} steps at ~{per_step:.1f} s each: about {_duration(left + elapsed)} "
                        f"in all, {_duration(left)} left{after}")
        info = " ".join(part for part in (
            f"loss {self._loss:.4f}" if self._loss is not None else "",
            f"eval {self._eval:.4f}" if self._eval is not None else "",
            f"{rate:,.0f} tok/s" if rate else "") if part)
        if self._bar is not None:
            self._bar.update(self._task, completed=state.global_step, info=info)
        elif now - self._last_line >= self.interval or state.global_step == state.max_steps:
            self._last_line = now
            self._write(f"step {state.global_step}/{state.max_steps}{' ' + info if info else ''}, "
                        f"{_duration(left)} left")

    def _evaluations_left(self, args, state) -> float:
        """Seconds the evaluations still to come should take: the periodic ones, and one at the end
        where the last step is not one of them."""
        if not self._evaluations or getattr(args, "eval_strategy", None) != "steps":
            return 0.0
        every = state.eval_steps or 1
        coming = state.max_steps // every - state.global_step // every + (1 if state.max_steps % every else 0)
        return self._eval_seconds / self._evaluations * coming

    def on_train_end(self, args, state, control, **kwargs):
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def _write(self, line: str) -> None:
        if self._bar is not None:
            self._bar.console.print(line)
        else:
            print(f"autopeft: {line}", file=self.stream, flush=True)


class GenerationProgress:
    """Generating answers (task metrics): a line every ``interval`` seconds with the count, the time
    spent and the time left, and one at the end with the total; on stderr like training's."""

    def __init__(self, what: str, total: int, *, enabled: bool = True, stream=None, interval: float = 10.0):
        self.what, self.total, self.enabled = what, total, enabled
        self.stream = stream or sys.stderr
        self.interval = interval
        self.started = self._last = time.perf_counter()
        self.done = 0

    def update(self, done: int) -> None:
        self.done = done
        now = time.perf_counter()
        if not self.enabled or now - self._last < self.interval or done >= self.total:
            return
        self._last = now
        spent = now - self.started
        left = spent / max(done, 1) * (self.total - done)
        self._write(f"generating {self.what}: {done}/{self.total}, {_duration(spent)}, about {_duration(left)} left")

    def finish(self) -> float:
        """Say how long it took; return the seconds."""
        seconds = time.perf_counter() - self.started
        if self.enabled and self.total:
            self._write(f"generated {self.total} {self.what} in {_duration(seconds)} "
                        f"({seconds / self.total:.2f} s each)")
        return seconds

    def _write(self, line: str) -> None:
        print(f"autopeft: {line}", file=self.stream, flush=True)
