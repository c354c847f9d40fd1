"""Deprecated alias of :mod:`autopeft.methods.settings`, kept for plugins written before 0.2: import the
same names from ``autopeft`` instead."""

from .methods.settings import *  # noqa: F401,F403
