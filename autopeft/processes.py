"""Running a function in a child process that this one watches: pilots, bench runs and ``tune``'s
fine-tune each run so, so that an out-of-memory, a crash or a hang ends that child, never the caller.

On CPU, a child whose resident memory (with its own children) goes over its budget is stopped at
once; on CUDA the child caps its own allocator. On Linux children are forked by a fork server that
has imported the heavy libraries once, so a child costs its work, not a fresh interpreter.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from typing import Callable

#: what the fork server imports once, before it forks any child
PRELOAD = ("torch", "transformers", "peft", "autopeft.training.run", "autopeft.choose.pilots")
POLL_SECONDS = 0.02
#: a watched child is stopped this far below its memory budget: the watcher samples, and memory
#: can grow between two samples
GUARD_MARGIN = 0.01


def run_watched(target: Callable, args: tuple, *, max_memory: int | None = None,
                timeout: float | None = None, env: dict[str, str] | None = None) -> tuple[int, tuple[str, str] | None]:
    """Run ``target(*args)`` in a child process and watch it. ``max_memory`` holds it to a budget: on
    CPU, a child whose resident memory (with its own children) goes over it is stopped at once; on
    CUDA, the child caps its own allocator at it (an allocation past it raises out-of-memory there). A
    child running past ``timeout`` seconds is stopped. ``env`` adds to the child's environment.
    Returns (peak resident bytes seen: host memory, the budget's measure only on CPU; None or
    (status, reason))."""
    import psutil

    started = time.perf_counter()
    # the fork server keeps the environment it started with; the child gets this process's own now
    environ = {**os.environ, **(env or {})}
    child = _context().Process(target=_in_child, args=(environ, max_memory, target, args), daemon=True)
    child.start()
    watched = psutil.Process(child.pid)
    peak, failure = 0, None
    while child.is_alive():
        try:
            rss = watched.memory_info().rss + sum(c.memory_info().rss for c in watched.children(recursive=True))
        except psutil.Error:
            rss = 0
        peak = max(peak, rss)
        if max_memory is not None and rss > (1 - GUARD_MARGIN) * max_memory and not on_accelerator():
            failure = ("oom", f"stopped at {rss:,} bytes resident, at the budget of {max_memory:,}")
        elif timeout is not None and time.perf_counter() - started > timeout:
            failure = ("timeout", f"no result after {timeout:.0f} s")
        if failure:
            child.kill()
            child.join()
            break
        child.join(POLL_SECONDS)
    if failure is None and child.exitcode not in (0, None):
        failure = ("failed", f"the process ended with exit code {child.exitcode}")
    return peak, failure


def on_accelerator() -> bool:
    """Whether work here runs on a CUDA device (and memory budgets are the allocator's, not RSS)."""
    import torch

    return torch.cuda.is_available()


def _context():
    """Forkserver on Linux: a clean single-threaded server process that has imported the heavy
    libraries once forks each child, so a pilot starts in about a second. Forking this process
    itself would be faster still but is not safe: it has run threads (tokenizers, torch) whose locks
    a forked child inherits held, and such a child hangs. Spawn elsewhere."""
    if sys.platform.startswith("linux"):
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(list(PRELOAD))
        return ctx
    return multiprocessing.get_context("spawn")


def _in_child(environ: dict[str, str], max_memory: int | None, target: Callable, args: tuple) -> None:
    os.environ.clear()
    os.environ.update(environ)
    if max_memory is not None and on_accelerator():
        import torch

        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, max_memory / total))
    target(*args)
