"""The plugin manager: loads the ``autopeft`` entry-point group (built-ins included) and collects methods.

A plugin that fails to import, raises while registering, or registers something that is not a
complete :class:`~autopeft.methods.base.Method` (see :func:`~autopeft.methods.base.contract_problems`)
is recorded in :func:`plugin_failures` and skipped, by name; the rest work.
``AUTOPEFT_LOAD_PLUGINS`` (comma-separated entry-point or distribution names) limits what loads;
set it to an empty string to load none.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from importlib import metadata

import pluggy

from .. import hookspecs
from ..errors import UnknownMethodError
from .base import Method, contract_problems

ENTRY_POINT_GROUP = "autopeft"

pm = pluggy.PluginManager("autopeft")
pm.add_hookspecs(hookspecs)


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that was skipped, and why."""

    plugin: str
    source: str
    error: str


_loaded = False
_failures: list[PluginFailure] = []  # import and registration problems
_collect_failures: list[PluginFailure] = []  # problems while collecting methods, redone on each collect
_sources: dict[str, str] = {}
_methods: dict[str, Method] | None = None


_SAFE_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")


def _allowed() -> set[str] | None:
    raw = os.environ.get("AUTOPEFT_LOAD_PLUGINS")
    if raw is None:
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


def load_plugins() -> None:
    """Import every plugin of the entry-point group once. Safe to call repeatedly."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    allowed = _allowed()
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else "unknown"
        if allowed is not None and ep.name not in allowed and dist not in allowed:
            continue
        if pm.get_plugin(ep.name) is not None or ep.name in _sources:
            continue  # the same distribution seen twice on sys.path
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken plugin must not take the others down
            _failures.append(PluginFailure(ep.name, dist, f"import failed: {type(exc).__name__}: {exc}"))
            continue
        register_plugin(plugin, name=ep.name, source=dist)


def register_plugin(plugin, name: str, source: str = "local") -> bool:
    """Register a plugin object or module by hand (tests, notebooks). Returns False if it was rejected."""
    global _methods
    try:
        pm.register(plugin, name=name)
        pm.check_pending()
    except Exception as exc:
        if pm.is_registered(plugin):
            pm.unregister(plugin)
        _failures.append(PluginFailure(name, source, f"rejected: {exc}"))
        return False
    _sources[name] = source
    _methods = None
    return True


def plugin_source(name: str) -> str:
    """The distribution that provided the plugin registered as ``name`` ("local" for one registered by hand)."""
    return _sources.get(name, "local")


def unregister_plugin(name: str) -> None:
    global _methods
    plugin = pm.get_plugin(name)
    if plugin is not None:
        pm.unregister(plugin)
    _sources.pop(name, None)
    _methods = None


def _collect() -> dict[str, Method]:
    methods: dict[str, Method] = {}
    _collect_failures.clear()
    for impl in pm.hook.register_methods.get_hookimpls():  # registration order: the first name wins
        plugin_name = impl.plugin_name
        source = _sources.get(plugin_name, "local")
        offered: list = []
        try:
            impl.function(register=offered.append)
        except Exception as exc:
            _collect_failures.append(PluginFailure(plugin_name, source, f"register_methods raised {type(exc).__name__}: {exc}"))
            continue
        for method in offered:
            if not isinstance(method, Method):
                _collect_failures.append(PluginFailure(
                    plugin_name, source, f"registered {type(method).__name__}, not an autopeft.Method instance"))
                continue
            name = getattr(method, "name", None)
            problems = contract_problems(method)
            if problems:
                called = f"method {name!r}" if isinstance(name, str) and name else "a method"
                _collect_failures.append(PluginFailure(
                    plugin_name, source, f"{called} ({type(method).__name__}) is incomplete: {'; '.join(problems)}"))
                continue
            if not _SAFE_NAME.fullmatch(name):
                # a method's name becomes part of file and directory names (runs/<data>-<method>, bench runs)
                _collect_failures.append(PluginFailure(
                    plugin_name, source, f"method name {name!r} is not lowercase letters, digits, '_', '-' and '.'"))
                continue
            if name in methods:
                _collect_failures.append(PluginFailure(
                    plugin_name, source, f"method {name!r} is already registered by {methods[name].source}"))
                continue
            method.source = source
            methods[name] = method
    return dict(sorted(methods.items()))


def get_methods() -> dict[str, Method]:
    """All registered methods by name (sorted)."""
    global _methods
    load_plugins()
    if _methods is None:
        _methods = _collect()
    return _methods


def get_method(name: str) -> Method:
    """The method called ``name`` (or one of its aliases); UnknownMethodError lists what exists."""
    methods = get_methods()
    key = name.strip().lower()
    if key in methods:
        return methods[key]
    for method in methods.values():
        if key in method.aliases:
            return method
    import difflib

    close = difflib.get_close_matches(key, list(methods), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `autopeft methods` lists them"
    raise UnknownMethodError(f"unknown method {name!r}{hint}")


def plugin_failures() -> list[PluginFailure]:
    """Plugins that were skipped since start-up, with the reason."""
    get_methods()
    return [*_failures, *_collect_failures]


def reset() -> None:
    """Forget loaded plugins (tests use this to reload under another AUTOPEFT_LOAD_PLUGINS)."""
    global _loaded, _methods
    for name in list(_sources):
        unregister_plugin(name)
    _failures.clear()
    _collect_failures.clear()
    _loaded = False
    _methods = None
