"""The hooks a plugin implements. Kept small: adding an argument is safe, renaming one breaks plugins."""

from __future__ import annotations

from pluggy import HookimplMarker, HookspecMarker

hookspec = HookspecMarker("autopeft")
hookimpl = HookimplMarker("autopeft")


@hookspec
def register_methods(register):
    """Register parameter-efficient fine-tuning methods.

    :param register: a callable taking one :class:`autopeft.Method` instance. Call it once per
        method the plugin provides. autopeft checks the type and the name; a method whose name is
        already taken is reported and skipped.
    :return: nothing; results are ignored.

    Example::

        @autopeft.hookimpl
        def register_methods(register):
            register(BitFit())
    """


@hookspec
def register_metrics(register):
    """Register task metrics: scores of what a causal-LM run generates against the references
    (``autopeft train --metric NAME``).

    :param register: a callable taking one :class:`autopeft.Metric` instance. Call it once per
        metric the plugin provides. autopeft checks the type, the name and the contract; a metric
        whose name is already taken is reported and skipped.
    :return: nothing; results are ignored.

    Example::

        @autopeft.hookimpl
        def register_metrics(register):
            register(StartsWithYes())
    """
