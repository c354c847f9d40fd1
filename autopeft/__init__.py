"""autopeft: choose the parameter-efficient fine-tuning method that suits your data, model and hardware.

The SDK surface. Importing it is cheap: torch, transformers and peft load only when a function that
needs them runs.

    import autopeft
    autopeft.list_methods()                      # installed methods, typed
    autopeft.estimate("smollm2-135m", "lora", batch_size=8, seq_len=256, device="cpu")
    run = autopeft.train("data.jsonl", method="dora", output_dir="runs/x")   # a RunRecord
    rec = autopeft.recommend("data.jsonl", max_vram="12GB")                # a Recommendation
    run, rec = autopeft.tune("data.jsonl", output_dir="runs/y", max_vram="12GB")
    autopeft.export_merged("runs/x", "runs/x-merged")
"""

from __future__ import annotations

from .errors import (AutopeftError, BadInputError, MethodUnavailableError, PluginError,
                     UnknownMethodError, UnknownMetricError)
from .hookspecs import hookimpl
from .methods.base import (TASKS, Capabilities, Method, MethodInfo, MethodSettings, PeftMethod, SearchSpace,
                           divisor_of_layer_sizes, on_meta_device, peft_task_type)
from .methods.metrics import Metric, MetricInfo
from .methods.settings import LowRank, PromptSettings, Targeted
from .version import __version__

__all__ = [
    # running it
    "estimate", "export_lora", "export_merged", "get_method", "list_methods", "list_metrics", "plugin_failures",
    "recommend",
    "replay", "train", "tune", "Estimate",
    # errors
    "AutopeftError", "BadInputError", "MethodUnavailableError", "PluginError", "UnknownMethodError",
    "UnknownMetricError",
    # the plugin kit: what a method plugin imports (see autopeft.testing to check one)
    "TASKS", "Capabilities", "LowRank", "Method", "MethodInfo", "MethodSettings", "PeftMethod", "PromptSettings",
    "SearchSpace", "Targeted", "divisor_of_layer_sizes", "hookimpl", "on_meta_device", "peft_task_type",
    # ... and what a task-metric plugin imports
    "Metric", "MetricInfo",
]

_CONSTRAINTS = ("max_vram", "max_adapter_size", "max_rank", "max_trainable_params", "time_budget", "methods",
                "exclude", "require")


def list_methods(task: str | None = None, probe: bool = True) -> list[MethodInfo]:
    """Every installed method (built-in or from a plugin package), optionally only those for ``task``.

    With ``probe``, each carries its capabilities as found on a tiny model (stored results, or probed
    now for a method never probed with these versions: see :mod:`autopeft.methods.probes`)."""
    from .methods.registry import get_methods

    chosen = [m for m in get_methods().values() if task is None or task in m.tasks]
    if not probe:
        return [m.info() for m in chosen]
    from .methods.probes import capabilities_of

    return [m.info().model_copy(update={"probed": capabilities_of(m)}) for m in chosen]


def list_metrics() -> list[MetricInfo]:
    """Every installed task metric (``--metric NAME``): the built-ins and those of plugins."""
    from .methods.metrics import list_metrics as _list

    return _list()


def get_method(name: str) -> Method:
    """The installed method called ``name`` (aliases such as ``lora+`` work)."""
    from .methods.registry import get_method as _get

    return _get(name)


def plugin_failures():
    """Plugins that were skipped, each with the reason."""
    from .methods.registry import plugin_failures as _failures

    return _failures()


def estimate(model=None, method=None, **kwargs):
    """Exact parameter counts and adapter size, and predicted peak training memory. See
    :func:`autopeft.costmodel.estimate` for the arguments; returns an :class:`Estimate`."""
    from .costmodel import estimate as _estimate

    return _estimate(model, method, **kwargs)


def train(data=None, *, output_dir: str | None = None, config=None, **options):
    """Fine-tune on ``data`` with ``method`` (default LoRA) and write the outputs to ``output_dir``.
    See :func:`autopeft.training.run.train` and :class:`autopeft.training.options.TrainOptions`;
    returns a :class:`autopeft.training.outputs.RunRecord`.

    ``config``: a config file (YAML or JSON; a run's ``run.json`` repeats that run) or a mapping, as
    ``autopeft train --config`` takes; ``data``, ``output_dir`` and ``options`` given here override it."""
    from .training.run import train as _train

    data, output_dir, options = _configured("train", config, data, output_dir, options)
    return _train(data, output_dir=output_dir, progress=options.pop("progress", False), **options)


def recommend(data=None, *, config=None, **options):
    """Rank the installed methods for ``data``: constraints as a person types them (``max_vram="12GB"``,
    ``max_adapter_size``, ``max_rank``, ``max_trainable_params``, ``time_budget="2h"``, ``methods``,
    ``exclude``, ``require``), plus the options of :func:`autopeft.choose.recommend.recommend`. Returns a
    :class:`autopeft.choose.recommend.Recommendation`; raises ``NoFeasibleMethodError`` when nothing fits.
    ``config``: as ``autopeft recommend --config`` takes (a file or a mapping); arguments override it."""
    from .choose.constraints import Constraints
    from .choose.recommend import recommend as _recommend

    data, _, options = _configured("recommend", config, data, None, options)
    limits = Constraints.parse(**{k: options.pop(k) for k in _CONSTRAINTS if k in options})
    return _recommend(data, constraints=limits, **options)


def tune(data=None, *, output_dir: str | None = None, config=None, **options):
    """Recommend (see :func:`recommend`), then fine-tune the winner into ``output_dir``. Other options
    are those of :class:`autopeft.training.options.TrainOptions`. Returns (RunRecord, Recommendation).
    ``config``: as ``autopeft tune --config`` takes (a file or a mapping); arguments override it."""
    from .choose.constraints import Constraints
    from .choose.tune import tune as _tune

    data, output_dir, options = _configured("tune", config, data, output_dir, options)
    limits = Constraints.parse(**{k: options.pop(k) for k in _CONSTRAINTS if k in options})
    return _tune(data, output_dir=output_dir, constraints=limits, progress=options.pop("progress", False), **options)


def _configured(command: str, config, data, output_dir, options: dict):
    """``data``, ``output_dir`` and the other options of ``command``, a config's under the arguments."""
    if config is not None:
        from .configfile import sdk_options

        merged = sdk_options(command, config, {"data": data, "output_dir": output_dir, **options})
        data, output_dir = merged.pop("data", None), merged.pop("output_dir", None)
        options = merged
    if output_dir is None and command != "recommend":
        raise BadInputError("give output_dir (as an argument or in the config)", source=command)
    if data is None and not options.get("resume"):
        raise BadInputError("give a training data file", source=command)
    return data, output_dir, options


def replay(results_dir, budget_fraction: float = 0.1, max_vram=None, **kwargs):
    """Judge the recommender on published results (see :mod:`autopeft.choose.replay`); a ReplayResult."""
    from .choose.replay import replay as _replay
    from .sizes import parse_size

    return _replay(results_dir, budget_fraction, parse_size(max_vram, "max_vram") if max_vram else None, **kwargs)


def export_merged(run_dir, output_dir, **kwargs):
    """Merge a finished run's adapter into its base and save a full model (see :mod:`autopeft.training.export`)."""
    from .training.export import merge

    return merge(run_dir, output_dir, **kwargs)


def export_lora(run_dir, output_dir, **kwargs):
    """Convert a finished run's non-LoRA adapter into a LoRA adapter (see :mod:`autopeft.training.export`)."""
    from .training.export import to_lora

    return to_lora(run_dir, output_dir, **kwargs)


def __getattr__(name):
    if name == "Estimate":
        from .costmodel import Estimate

        return Estimate
    raise AttributeError(f"module 'autopeft' has no attribute {name!r}")
