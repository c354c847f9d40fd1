"""Running a function in a child process that this one watches: pilots, bench runs and ``tune``'s
fine-tune each run so, so that an out-of-memory, a crash or a hang ends that child, never the caller.
And stopping: Ctrl-C or SIGTERM stops a command within seconds, keeps what is finished and leaves no
child process behind.

On CPU, a child whose resident memory (with its own children) goes over its budget is stopped at
once; on CUDA the child caps its own allocator. On Linux children are forked by a fork server that
has imported the heavy libraries once, so a child costs its work, not a fresh interpreter.

Stopping. While :func:`handling_stop_signals` is held (the CLI holds it for a command's lifetime),
SIGTERM, which schedulers (Slurm, Kubernetes) send to stop a job, does what Ctrl-C does. The first
signal interrupts at once (KeyboardInterrupt), except inside :func:`deferring_stop` (a training step,
a watched child, a write that must not be cut): there it is noted (:func:`stop_requested`) and the
code stops at its next safe point. A second signal stops at once, killing every child process. The
exit status is 128 + the signal's number (130 for SIGINT, 143 for SIGTERM). A terminal's Ctrl-C
reaches the whole process group, so watched children ignore SIGINT: their parent ends them, with
SIGTERM (a fine-tune then checkpoints) and, after a grace period, SIGKILL for them and their own
children. Children also die with their parent when it is killed outright: on Linux the fork server
and each child ask the kernel for that (``PR_SET_PDEATHSIG``; see :mod:`autopeft.lifeline`).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, Iterator

#: what the fork server imports once, before it forks any child (the lifeline first: it ties the
#: server to the process that started it, and leaves Ctrl-C to that process)
PRELOAD = ("autopeft.lifeline", "torch", "transformers", "peft", "autopeft.training.run", "autopeft.choose.pilots")
POLL_SECONDS = 0.02
#: a watched child is stopped this far below its memory budget: the watcher samples, and memory
#: can grow between two samples
GUARD_MARGIN = 0.01

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: seconds a stopped child may take to end by itself before it is killed: a pilot or a bench run only
#: unwinds; a fine-tune finishes its step and writes a checkpoint, within what schedulers allow
#: between SIGTERM and SIGKILL (Slurm's KillWait and Kubernetes' grace period are 30 s by default)
CHILD_GRACE_SECONDS = 3.0
FINE_TUNE_GRACE_SECONDS = 25.0
#: the exit code of a watched child that stopped because it was asked to
STOPPED_EXIT = 128 + signal.SIGTERM
#: set while the fork server starts: the pid it must die with (read by :mod:`autopeft.lifeline`)
PARENT_ENV = "AUTOPEFT_FORK_SERVER_PARENT"
_PR_SET_PDEATHSIG = 1
#: how soon an interrupt that came inside a destructor is tried again
RETRY_SECONDS = 0.05


class _StopState:
    """This process's stop signals: which came first, and how the code here is set to take them."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.at_once = False  # a second signal came
        self.ending = False  # the command is saying how it stopped and exiting: further signals only end children
        self.handling = 0  # depth of handling_stop_signals (main thread)
        self.deferred = 0  # depth of deferring regions (main thread)
        self.notes: list[str] = []
        self.child = False  # a watched child: the parent speaks, and SIGINT is the parent's
        self.previous: dict = {}


_stop = _StopState()


def stop_requested() -> bool:
    """Whether a stop signal came (code in a :func:`deferring_stop` region polls this)."""
    return _stop.signum is not None


def stop_exit_status() -> int:
    """The conventional exit status of a command stopped by a signal: 128 + its number."""
    return 128 + (_stop.signum or signal.SIGINT)


def stop_word() -> str:
    """How the command's last line names the stop: ``interrupted`` (Ctrl-C) or ``terminated`` (SIGTERM)."""
    return "terminated" if _stop.signum == signal.SIGTERM else "interrupted"


def end_after_stop() -> None:
    """The command has stopped and is on its way out: a further stop signal from here on only kills
    the child processes left, and does not interrupt the last words and clean-up."""
    _stop.ending = True


def check_stop() -> None:
    """Raise KeyboardInterrupt if a stop was requested: a safe point to stop at (and a stop that
    landed where some library swallowed the exception is not lost)."""
    if _stop.signum is not None:
        raise KeyboardInterrupt


@contextlib.contextmanager
def handling_stop_signals() -> Iterator[None]:
    """SIGINT and SIGTERM stop the work within (see the module docstring). Re-entrant; only the
    main thread can hold signal handlers, elsewhere this does nothing. When the outermost holder
    ends after a stop, every child process left is killed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    outermost = _stop.handling == 0
    if outermost:
        _stop.signum = None
        _stop.previous = {s: signal.signal(s, _on_stop_signal) for s in STOP_SIGNALS}
        _take_retries()
    _stop.handling += 1
    try:
        yield
    finally:
        _stop.handling -= 1
        if outermost:
            try:
                if _stop.signum is not None:
                    end_children()
            finally:
                if _stop.previous.get(signal.SIGALRM) is not None:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                for signum, handler in _stop.previous.items():
                    signal.signal(signum, handler)
                _stop.signum, _stop.at_once, _stop.ending = None, False, False


@contextlib.contextmanager
def stop_note(note: str | None) -> Iterator[None]:
    """What the first stop signal says will happen, while within (``{again}`` becomes "Ctrl-C again"
    or "SIGTERM again"). Said on stderr as the signal comes, so a user knows it was heard."""
    if note is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    _stop.notes.append(note)
    try:
        yield
    finally:
        _stop.notes.pop()


@contextlib.contextmanager
def deferring_stop(note: str | None = None) -> Iterator[None]:
    """Within, the first stop signal does not interrupt: it is noted (:func:`stop_requested`), and
    KeyboardInterrupt is raised when the outermost such region ends (unless something else was
    raised). For steps that must not be cut, and for code that polls for a stop to end cleanly."""
    with handling_stop_signals():
        with stop_note(note), _deferred():
            yield
        if _stop.deferred == 0:
            check_stop()


@contextlib.contextmanager
def _deferred() -> Iterator[None]:
    main = threading.current_thread() is threading.main_thread()
    if main:
        _stop.deferred += 1
    try:
        yield
    finally:
        if main:
            _stop.deferred -= 1


def _on_stop_signal(signum, frame) -> None:
    if _stop.ending:
        if not _stop.child:
            end_children()
        return
    if _stop.signum is not None:  # a second one: at once
        _stop.at_once = True
        if not _stop.child:
            end_children()
        _interrupt(frame)
        return
    _stop.signum = signum
    if not _stop.child and _stop.notes:
        again = "Ctrl-C again" if signum == signal.SIGINT else f"{signal.Signals(signum).name} again"
        _say(f"autopeft: {stop_word()}: {_stop.notes[-1].replace('{again}', again)}")
    if not _stop.deferred:
        _interrupt(frame)


def _interrupt(frame) -> None:
    """Raise KeyboardInterrupt, unless in a destructor or a finalizer (there Python prints it as
    "Exception ignored" and carries on): then try again a moment later, where the code has moved on."""
    if _interruptible(frame):
        raise KeyboardInterrupt
    if _stop.previous.get(signal.SIGALRM) is not None:
        signal.setitimer(signal.ITIMER_REAL, RETRY_SECONDS)


def _interruptible(frame) -> bool:
    while frame is not None:
        code = frame.f_code
        if code.co_name == "__del__" or code.co_filename.endswith(("weakref.py", "_weakrefset.py")):
            return False
        frame = frame.f_back
    return True


def _on_retry(signum, frame) -> None:
    if _stop.signum is not None and not _stop.ending and (_stop.at_once or not _stop.deferred):
        _interrupt(frame)


def _take_retries() -> None:
    """Use SIGALRM to retry an interrupt that came at a bad moment, unless something else uses it."""
    if signal.getsignal(signal.SIGALRM) == signal.SIG_DFL:
        _stop.previous[signal.SIGALRM] = signal.signal(signal.SIGALRM, _on_retry)


def _say(line: str) -> None:
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (RuntimeError, OSError, ValueError):  # the handler interrupted a write to stderr
        with contextlib.suppress(OSError):
            os.write(2, (line + "\n").encode())


def end_children(timeout: float = 3.0) -> None:
    """Kill every process this one started, and theirs (the fork server and its children included).
    Grandchildren are waited for; direct children are left for their owners to reap (the fork
    server's owner checks on it with waitpid and starts a new one)."""
    import psutil

    try:
        me = psutil.Process()
        children = me.children(recursive=True)
        direct = {p.pid for p in me.children()}
    except psutil.Error:
        return
    for proc in children:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs([p for p in children if p.pid not in direct], timeout=timeout)


def kill_tree(pid: int, timeout: float = 3.0) -> None:
    """SIGKILL a process and all of its descendants."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [*root.children(recursive=True), root]
    except psutil.Error:
        return
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs([p for p in procs if p.pid != pid], timeout=timeout)


def die_with_parent(signum: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send ``signum`` to this process when its parent ends (Linux; elsewhere it
    does nothing and returns False)."""
    prctl = _prctl()
    return prctl is not None and prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0


@functools.lru_cache(maxsize=1)
def _prctl():
    """libc's prctl (Linux), looked up once: a child between fork and exec must not load libraries."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def leave_interrupts_to_parent() -> None:
    """Ignore SIGINT here: a terminal's Ctrl-C reaches the whole process group, and the parent
    decides how its children stop (main thread only)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_watched(target: Callable, args: tuple, *, max_memory: int | None = None,
                timeout: float | None = None, env: dict[str, str] | None = None,
                grace: float = CHILD_GRACE_SECONDS) -> tuple[int, tuple[str, str] | None]:
    """Run ``target(*args)`` in a child process and watch it. ``max_memory`` holds it to a budget: on
    CPU, a child whose resident memory (with its own children) goes over it is stopped at once; on
    CUDA, the child caps its own allocator at it (an allocation past it raises out-of-memory there). A
    child running past ``timeout`` seconds is stopped. ``env`` adds to the child's environment.
    Returns (peak resident bytes seen: host memory, the budget's measure only on CPU; None or
    (status, reason)).

    On a stop signal the child gets SIGTERM (in it, KeyboardInterrupt, or a stop request where it
    defers one: see :func:`deferring_stop`) and ``grace`` seconds to end; then it is killed with its
    own children, and KeyboardInterrupt is raised here. A child that finished its work as the stop
    came is not lost: inside a :func:`deferring_stop` region its result is returned, for the region
    to keep before it stops."""
    import psutil

    check_stop()
    started = time.perf_counter()
    # the fork server keeps the environment it started with; the child gets this process's own now
    environ = {**os.environ, **(env or {})}
    peak, failure, stopped_at = 0, None, None
    with handling_stop_signals(), _deferred():
        child = _context().Process(target=_in_child, args=(environ, max_memory, os.getpid(), target, args),
                                   daemon=True)
        child.start()
        try:
            watched = psutil.Process(child.pid)
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
                    break
                if stop_requested():
                    if stopped_at is None:
                        stopped_at = time.perf_counter()
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(child.pid, signal.SIGTERM)
                    elif time.perf_counter() - stopped_at > grace:
                        break
                child.join(POLL_SECONDS)
        finally:
            if child.is_alive():
                kill_tree(child.pid)
            child.join()
        # a child that finished is kept for an enclosing region to use before it stops; without one,
        # the stop is this call's to raise
        enclosed = _stop.deferred > 1 or threading.current_thread() is not threading.main_thread()
        if stop_requested() and (child.exitcode != 0 or not enclosed):
            raise KeyboardInterrupt
    if failure is None and child.exitcode not in (0, None):
        failure = ("failed", f"the process ended with exit code {child.exitcode}")
    return peak, failure


def run_command(command: list[str], *, env: dict[str, str] | None = None,
                grace: float = FINE_TUNE_GRACE_SECONDS) -> int:
    """Run ``command`` (a launcher such as ``accelerate launch``) and return its exit status. It gets
    SIGTERM if this process dies (so it can end its own workers), and on a stop signal SIGTERM, then
    after ``grace`` seconds SIGKILL with all its descendants; KeyboardInterrupt is then raised here."""
    check_stop()
    with handling_stop_signals(), _deferred():
        prctl = _prctl()
        tie = (lambda: prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)) if prctl is not None else None
        proc = subprocess.Popen(command, env=env, preexec_fn=tie)
        stopped_at = None
        try:
            while proc.poll() is None:
                if stop_requested():
                    if stopped_at is None:
                        stopped_at = time.perf_counter()
                        proc.terminate()
                    elif time.perf_counter() - stopped_at > grace:
                        break
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(0.1)
        finally:
            if proc.poll() is None:
                kill_tree(proc.pid)
                proc.wait()
        if stop_requested():
            raise KeyboardInterrupt
    return proc.returncode


def on_accelerator() -> bool:
    """Whether work here runs on a CUDA device (and memory budgets are the allocator's, not RSS)."""
    import torch

    return torch.cuda.is_available()


def start_fork_server() -> None:
    """Start the fork server now (Linux), so that its imports of the heavy libraries overlap the work
    the caller does before its first child (screening the methods before the pilots); the first child
    then costs what every later one does. Elsewhere it does nothing."""
    _context()


def _context():
    """Forkserver on Linux: a clean single-threaded server process that has imported the heavy
    libraries once forks each child, so a pilot starts in about a second. Forking this process
    itself would be faster still but is not safe: it has run threads (tokenizers, torch) whose locks
    a forked child inherits held, and such a child hangs. Spawn elsewhere.

    The server is started from the main thread where possible, told this process's pid: the kernel
    ties a child's life to the *thread* that started it (see :mod:`autopeft.lifeline`)."""
    if sys.platform.startswith("linux"):
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(list(PRELOAD))
        if threading.current_thread() is threading.main_thread():
            from multiprocessing import forkserver

            os.environ[PARENT_ENV] = str(os.getpid())
            # a Ctrl-C while the server imports its libraries (it reaches the whole process group) is
            # this process's to handle: the server starts with SIGINT ignored (a disposition that
            # survives exec, and Python then keeps), for the few milliseconds its start takes here
            handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                forkserver.ensure_running()
            finally:
                # (None: a handler not set from Python, which cannot be put back; the default then)
                signal.signal(signal.SIGINT, signal.SIG_DFL if handler is None else handler)
                os.environ.pop(PARENT_ENV, None)
        return ctx
    return multiprocessing.get_context("spawn")


def _in_child(environ: dict[str, str], max_memory: int | None, parent: int, target: Callable, args: tuple) -> None:
    # die with the fork server, which dies with the parent; the parent may be gone already
    die_with_parent(signal.SIGKILL)
    if not pid_alive(parent):
        os._exit(STOPPED_EXIT)
    os.environ.clear()
    os.environ.update(environ)
    _stop.child, _stop.handling = True, 1
    leave_interrupts_to_parent()
    _stop.previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, _on_stop_signal)}
    _take_retries()
    # the libraries the server imported are here for good: a collection need not walk them (the
    # Trainer collects at every start, and walking them cost a pilot about half a second)
    gc.freeze()
    try:
        if max_memory is not None and on_accelerator():
            import torch

            total = torch.cuda.get_device_properties(0).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, max_memory / total))
        target(*args)
    except KeyboardInterrupt:  # asked to stop: the parent says so, once
        end_children()
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(STOPPED_EXIT)
    try:
        end_children()  # a process the target started and left running would outlive the command
    except KeyboardInterrupt:  # asked to stop as the target ended: its result is written, nothing to say
        os._exit(STOPPED_EXIT)


def pid_alive(pid) -> bool:
    """Whether a process of this id runs on this machine (a non-integer id: no)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
