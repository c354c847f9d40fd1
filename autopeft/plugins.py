"""Deprecated alias of :mod:`autopeft.methods.registry` (``register_plugin`` for notebooks and tests),
kept for code written before 0.2."""

from .methods.registry import *  # noqa: F401,F403
from .methods.registry import get_method, get_methods, load_plugins, plugin_failures, register_plugin, unregister_plugin  # noqa: F401
