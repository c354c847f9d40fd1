"""Locks between processes, and between machines sharing a file system: the profile store's writers
take turns (:func:`locked`), and one run at a time owns an output directory (:func:`claim`).

Both are POSIX record locks (``fcntl.lockf``) on a small lock file of their own. The kernel drops
such a lock when its holder ends, however it ends (``kill -9`` included), so a lock left by a killed
process is free again the moment it dies, with no stale-lock guessing; NFS carries them to the
server (NFSv4 always, NFSv3 through its lock manager), unlike ``flock``, which some NFS clients keep
local. Two properties of POSIX locks shape this module: they belong to a process, not to a file
descriptor (so the threads of one process are kept apart by a ``threading.Lock`` as well), and
closing *any* descriptor of the file drops the process's lock on it (so a holder never opens its
lock file twice).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from .processes import pid_alive

#: errors that say "someone else holds it"
_HELD = (errno.EACCES, errno.EAGAIN)
#: errors that say "this file system cannot lock" (NFS without its lock manager, some FUSE mounts)
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)
POLL_SECONDS = 0.05

_guard = threading.Lock()
_thread_locks: dict[str, threading.Lock] = {}
_claims: dict[str, "Claim"] = {}


class Busy(Exception):
    """The lock is held by another process (or by this one): ``holder`` is what it wrote in the lock
    file (pid, host, command, started), or {} when it had not written yet."""

    def __init__(self, holder: dict[str, Any]):
        self.holder = holder
        super().__init__(describe(holder))


class Unlockable(Exception):
    """The file system refuses locks (``errno`` in :data:`_NO_LOCKS`)."""


def _thread_lock(path: Path) -> threading.Lock:
    with _guard:
        return _thread_locks.setdefault(str(path), threading.Lock())


def _lock(fd: int, shared: bool, timeout: float | None) -> None:
    """lockf ``fd``, polling until ``timeout`` seconds (None: once). Raises Busy (holder unread),
    Unlockable, or TimeoutError."""
    import fcntl

    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            fcntl.lockf(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno in _NO_LOCKS:
                raise Unlockable(os.strerror(exc.errno)) from None
            if exc.errno not in _HELD:
                raise
        if deadline is None:
            raise Busy({})
        if time.monotonic() >= deadline:
            raise TimeoutError
        time.sleep(POLL_SECONDS)


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (its last holder may have removed it)."""
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


@contextlib.contextmanager
def locked(path: Path, *, shared: bool = False, timeout: float = 60.0) -> Iterator[bool]:
    """Hold the lock file ``path`` (created if missing) for the block: exclusively, or ``shared``
    with other readers. Waits up to ``timeout`` seconds, then raises ``TimeoutError``. Yields True;
    False where the lock cannot be had at all (a read-only directory, a file system without locks):
    the caller then goes on unlocked, or refuses."""
    path = Path(path)
    with _thread_lock(path):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:
            fd = None
        try:
            held = False
            if fd is not None:
                try:
                    _lock(fd, shared, timeout)
                    held = True
                except Unlockable:
                    pass
            yield held
        finally:
            if fd is not None:
                os.close(fd)  # drops the lock


def info(command: str, **extra: Any) -> dict[str, Any]:
    """What a holder writes in its lock file: who it is, for the message of the one it stops."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": command, "started": time.time(), **extra}


def describe(holder: dict[str, Any]) -> str:
    """``autopeft train (pid 1234, started 12:01:05)``; the host too when it is another machine's."""
    if not holder:
        return "another autopeft process"
    parts = [f"pid {holder.get('pid', '?')}"]
    if holder.get("host") and holder["host"] != socket.gethostname():
        parts[0] += f" on {holder['host']}"
    started = holder.get("started")
    if isinstance(started, (int, float)):
        local = time.localtime(started)
        same_day = time.strftime("%Y-%m-%d", local) == time.strftime("%Y-%m-%d")
        parts.append("started " + time.strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M:%S", local))
    command = holder.get("command")
    return f"{'autopeft ' + command if command else 'autopeft'} ({', '.join(parts)})"


def _read_holder(path: Path, wait: float = 1.0) -> dict[str, Any]:
    """The holder's note, waiting briefly for one that has locked but not written yet. (Only ever
    called by a process that does not hold the lock: opening the file would drop it otherwise.)"""
    deadline = time.monotonic() + wait
    while True:
        try:
            holder = json.loads(Path(path).read_text(encoding="utf-8"))
            if isinstance(holder, dict):
                return holder
        except (OSError, ValueError):
            pass
        if time.monotonic() >= deadline:
            return {}
        time.sleep(POLL_SECONDS)


class Claim:
    """An exclusive lock held until :meth:`release` (or until the process ends, however it ends)."""

    def __init__(self, path: Path, fd: int, holder: dict[str, Any], locked_: bool):
        self.path, self.fd, self.holder, self.locked = path, fd, holder, locked_

    def release(self) -> None:
        with _guard:
            if _claims.get(str(self.path)) is not self:
                return
            del _claims[str(self.path)]
        try:
            if _same_file(self.fd, self.path):
                self.path.unlink()  # while still locked: the next holder makes a fresh one
        except OSError:
            pass
        os.close(self.fd)

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def claim(path: Path, holder: dict[str, Any]) -> Claim:
    """Take the lock file ``path`` for this process without waiting, writing ``holder`` (see
    :func:`info`) in it. Raises :class:`Busy` with the holder's note when another process, or this
    one, holds it. A file system without locks falls back on the note: a holder on this machine that
    is no longer running, or none, is replaced. Other ``OSError`` (no permission) propagate."""
    path = Path(path)
    with _guard:
        if str(path) in _claims:
            raise Busy(_claims[str(path)].holder)
    for _ in range(50):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            _lock(fd, shared=False, timeout=None)
            is_locked = True
        except Busy:
            os.close(fd)  # we hold no lock on it: closing drops nothing of ours
            note = _read_holder(path)
            if note and note.get("host") == socket.gethostname() and not pid_alive(note.get("pid")):
                time.sleep(POLL_SECONDS)  # its holder has just ended: the kernel is letting go
                continue
            raise Busy(note) from None
        except Unlockable:
            note = _read_holder(path, wait=0)
            if note and (note.get("host") != socket.gethostname() or pid_alive(note.get("pid"))):
                os.close(fd)
                raise Busy(note) from None
            is_locked = False
        except BaseException:
            os.close(fd)
            raise
        if not _same_file(fd, path):  # released and removed between our open and our lock
            os.close(fd)
            continue
        text = json.dumps(holder).encode("utf-8")
        os.ftruncate(fd, 0)
        os.pwrite(fd, text, 0)
        taken = Claim(path, fd, holder, is_locked)
        with _guard:
            _claims[str(path)] = taken
        return taken
    raise Busy(_read_holder(path))
