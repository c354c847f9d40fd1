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
from ..errors import BadInputError, UnknownMethodError, check_names, unknown_names
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
    return {_plugin_key(part) for part in raw.split(",") if part.strip()}


def _plugin_key(name: str) -> str:
    """Entry-point and distribution names compare as pip compares package names: case, '-', '_' and
    '.' aside (``autopeft_bitfit`` is ``autopeft-bitfit``)."""
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


def installed_plugins() -> tuple[list[str], list[str]]:
    """(entry-point names, distribution names) of the ``autopeft`` group: what the allow-list may name."""
    points, dists = set(), set()
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        points.add(ep.name)
        if ep.dist is not None:
            dists.add(ep.dist.name)
    return sorted(points), sorted(dists)


def check_plugin_names(names, *, source: str = "AUTOPEFT_LOAD_PLUGINS") -> None:
    """Refuse (BadInputError, naming the closest) an allow-list name that no installed plugin has.

    :param source: where the names came from: ``--plugins`` or the environment variable."""
    points, dists = installed_plugins()
    known = {_plugin_key(n): n for n in [*dists, *points]}
    unknown = [n.strip() for n in names if n.strip() and _plugin_key(n) not in known]
    if unknown:
        listing = (f"installed plugin packages: {', '.join(dists) or 'none'}, and each method's name "
                   f"(`autopeft methods`) names its own entry point")
        raise unknown_names("plugin", unknown, list(known.values()), source=source, listing=listing)


def load_plugins() -> None:
    """Import every plugin of the entry-point group once. Safe to call repeatedly. An allow-list
    (``AUTOPEFT_LOAD_PLUGINS``) that names a plugin not installed is refused, naming the closest."""
    global _loaded
    if _loaded:
        return
    allowed = _allowed()
    if allowed:
        check_plugin_names(os.environ["AUTOPEFT_LOAD_PLUGINS"].split(","))
    _loaded = True
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else "unknown"
        if allowed is not None and _plugin_key(ep.name) not in allowed and _plugin_key(dist) not in allowed:
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


def get_method(name: str, *, source: str | None = None) -> Method:
    """The method called ``name`` (or one of its aliases); UnknownMethodError names the closest.

    :param source: the option the name came from (``--method``), for the error message."""
    methods = get_methods()
    key = name.strip().lower()
    if key in methods:
        return methods[key]
    for method in methods.values():
        if key in method.aliases:
            return method
    raise unknown_names("method", [name], method_names(), source=source, listing=METHODS_LISTING,
                        error=UnknownMethodError)


#: where a user sees every installed method
METHODS_LISTING = "`autopeft methods` lists them"


def default_learning_rate(method: str, task: str) -> float | None:
    """An installed method's default learning rate for ``task``; None for one not installed (a stored
    run of a plugin this machine lacks)."""
    found = get_methods().get(method)
    return found.search_space.default_learning_rate(task) if found else None


def method_names() -> list[str]:
    """Every name a method answers to: names, then aliases."""
    methods = get_methods()
    return [*methods, *(alias for m in methods.values() for alias in m.aliases if alias not in methods)]


def check_method_names(names, *, source: str | None = None) -> None:
    """Refuse (UnknownMethodError, naming the closest) any of ``names`` that is no installed method."""
    check_names("method", [n.strip().lower() for n in names], method_names(), source=source,
                listing=METHODS_LISTING, error=UnknownMethodError)


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
