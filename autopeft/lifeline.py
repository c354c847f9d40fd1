"""What the fork server of :mod:`autopeft.processes` imports first: it ties the server's life to
the process that started it and leaves Ctrl-C to that process.

A child forked by the server holds the server's "alive" pipe open, so the server (and that child)
would outlive an autopeft process killed outright. Here the server asks the kernel to kill it when
its parent ends (``PR_SET_PDEATHSIG``), and each child asks the same of the server, so nothing
outlives the command. The parent's pid comes in :data:`autopeft.processes.PARENT_ENV`: a server whose
parent already ended before it could ask exits. SIGINT is ignored here before the server saves its
signal handlers, so the children it forks start ignoring the terminal's Ctrl-C too: the parent
stops them (see :func:`autopeft.processes.run_watched`).

Importing this module anywhere but in a fork server does nothing.
"""

from __future__ import annotations

import os
import signal

from .processes import PARENT_ENV, die_with_parent


def _hold_on() -> None:
    parent = os.environ.pop(PARENT_ENV, None)
    if parent is None or not parent.isdigit() or int(parent) == os.getpid():
        return
    die_with_parent(signal.SIGKILL)
    if os.getppid() != int(parent):  # the parent ended before the kernel was asked
        os._exit(0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


_hold_on()
