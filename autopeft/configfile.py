"""Config files for ``train``, ``tune``, ``recommend`` and ``bench`` (``--config FILE``), and the same
mapping for the SDK (``autopeft.train(config=...)``).

A config is a YAML or JSON mapping whose keys are the command's options, written with dashes or
underscores (``learning-rate`` or ``learning_rate``), and, for ``train``, ``tune`` and ``bench``,
any field of :class:`autopeft.training.options.TrainOptions` (``weight_decay``, ``warmup_ratio``,
... : what the SDK takes). Options given on the command line, or as keyword arguments, override
it. Paths in it are relative to the working directory, as on the command line.

A finished run's ``run.json`` (or a run's directory) is a config too: its ``options`` block, which
reproduces the run with ``train``. Its ``output_dir`` is left out (the run's place, not a setting:
give ``--output``). For ``tune``, ``recommend`` and ``bench``, what the run chose (method, settings,
learning rate) and the options those commands do not take are left out, and said so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import BadInputError, close_names, one_of

#: a run's keys that belong to the run, not to a command that would repeat it
RUN_ONLY = ("output_dir", "pilot_steps")
#: what a run chose: options of ``train``, but for ``tune``, ``recommend`` and ``bench`` their result
CHOSEN = ("method", "settings", "learning_rate")
#: the options file a run writes first (autopeft.training.outputs.OPTIONS_FILE) and its record
RUN_FILES = ("run.json", "autopeft-run.json")


@dataclass
class Config:
    """A config's values by key (dashes made underscores), with where each key was written."""

    source: str
    values: dict[str, Any]
    lines: dict[str, int] = field(default_factory=dict)
    from_run: bool = False

    def error(self, key: str, problem: str) -> BadInputError:
        """One line naming the file, the line and the key."""
        return BadInputError(f"{key}: {problem}", source=self.source, line=self.lines.get(key))


def key_name(key: Any) -> str:
    return str(key).strip().replace("-", "_").lower()


def closest(key: str, known) -> str:
    """``; did you mean X?`` for the nearest known keys, or nothing."""
    close = close_names(key, sorted(known), n=2)
    return f"; did you mean {one_of(close)}?" if close else ""


def load(config: str | Path | Mapping | Config | None) -> Config | None:
    """A config from a file (YAML or JSON; a run's ``run.json``, or its directory) or a mapping."""
    if config is None or isinstance(config, Config):
        return config
    if isinstance(config, Mapping):
        return _from_mapping(dict(config), "config", {})
    return read_config(config)


def read_config(path: str | Path) -> Config:
    """Read a config file; every problem is one BadInputError naming the file (and line)."""
    import yaml

    source = str(path)
    p = Path(path).expanduser()
    if p.is_dir():
        p = next((p / name for name in RUN_FILES if (p / name).is_file()), p / RUN_FILES[0])
        source = str(p)
    if not p.is_file():
        raise BadInputError("no such config file", source=source)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(f"cannot read the config: {type(exc).__name__}", source=source) from None
    if p.suffix.lower() == ".json":
        try:
            values = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BadInputError(f"not valid JSON: {exc.msg}", source=source, line=exc.lineno) from None
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)  # for the lines of the keys only
        except yaml.YAMLError:
            node = None
    else:
        node, values = _yaml(text, source)
    if values is None:
        values, node = {}, None
    if not isinstance(values, dict):
        raise BadInputError(f"a config is a mapping of option names to values, not a {type(values).__name__}",
                            source=source, line=1)
    lines = _lines(node)
    from_run = p.name in RUN_FILES
    if isinstance(values.get("options"), dict) and "metrics" in values and "method" in values:  # a RunRecord
        values, lines, from_run = values["options"], _lines(_child(node, "options")), True
    return _from_mapping(values, source, lines, from_run=from_run)


def _yaml(text: str, source: str):
    """(the composed node, for the lines of the keys; the values)"""
    import yaml

    try:
        return yaml.compose(text, Loader=yaml.SafeLoader), yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise BadInputError(f"not valid YAML: {problem}", source=source,
                            line=mark.line + 1 if mark is not None else None) from None


def _from_mapping(values: dict, source: str, lines: dict, *, from_run: bool = False) -> Config:
    out: dict[str, Any] = {}
    where: dict[str, int] = {}
    for key, value in values.items():
        name = key_name(key)
        if name in out:
            raise BadInputError(f"{name}: given twice ({key!r} and an earlier spelling)", source=source,
                                line=lines.get(str(key)))
        if from_run and name in RUN_ONLY:
            continue
        if value is None:  # an option left unset
            continue
        out[name] = value
        if str(key) in lines:
            where[name] = lines[str(key)]
    return Config(source=source, values=out, lines=where, from_run=from_run)


def _lines(node) -> dict[str, int]:
    """The line (1-based) of each top-level key of a composed YAML mapping."""
    import yaml

    if not isinstance(node, yaml.MappingNode):
        return {}
    return {str(k.value): k.start_mark.line + 1 for k, _ in node.value if isinstance(k, yaml.ScalarNode)}


def _child(node, key: str):
    import yaml

    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key:
                return v
    return None


def check_train_option(config: Config, key: str, value: Any) -> None:
    """Refuse a value the :class:`TrainOptions` field ``key`` would refuse, naming the file and key."""
    from pydantic import ValidationError

    from .training.options import TrainOptions

    try:
        TrainOptions.model_validate({"data": "-", "output_dir": "-", key: value})
    except ValidationError as exc:
        err = next((e for e in exc.errors() if e["loc"] and e["loc"][0] == key), exc.errors()[0])
        raise config.error(key, f"{err['msg']}, got {value!r}") from None


def settings_list(value: Any) -> list[str]:
    """``--set`` values from a config: a mapping (as run.json holds them) or a list of KEY=VALUE."""
    if isinstance(value, Mapping):
        return [f"{k}={json.dumps(v)}" for k, v in value.items()]
    return [str(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


def pilot_budget(text: Any) -> dict[str, float]:
    """``--pilot-budget``: a fraction of the estimated fine-tune (``0.15``) or a duration (``5m``)."""
    from .choose.constraints import parse_duration

    try:
        fraction = float(text)
    except (TypeError, ValueError):
        return {"pilot_seconds": parse_duration(text)}
    if not 0 < fraction < 1:
        raise BadInputError(f"--pilot-budget as a fraction must be between 0 and 1, got {text}")
    return {"pilot_fraction": fraction}


# -- the SDK ---------------------------------------------------------------------------------------

#: command-line spellings of SDK keywords
_ALIASES = {"lr": "learning_rate", "gradient_accumulation": "gradient_accumulation_steps",
            "early_stopping": "early_stopping_patience", "output": "output_dir", "set": "settings",
            "metric": "metrics"}
#: what only the command line uses (its output format), accepted in a config and left out by the SDK
_CLI_ONLY = ("json",)
_CHOICE = ("max_vram", "max_adapter_size", "max_rank", "max_trainable_params", "time_budget", "methods", "exclude",
           "require", "objective", "target_gpu", "pilot_budget", "no_pilot", "pilot", "pilot_fraction", "pilot_seconds")


#: flags whose SDK keyword says the opposite
_NEGATED = {"no_profile_store": "profile_store", "no_pilot": "pilot"}


def sdk_name(key: str) -> str:
    """The SDK keyword a config key (a command-line option's name) stands for."""
    key = key_name(key)
    return _NEGATED.get(key) or {"only": "methods"}.get(key) or _ALIASES.get(key, key)


def sdk_keys(command: str) -> set[str]:
    """The keyword arguments ``autopeft.<command>`` takes from a config."""
    import inspect

    from .training.options import TrainOptions

    fields = set(TrainOptions.model_fields) - {"pilot_steps"}
    if command == "train":
        return fields | {"resume", "overwrite"}
    if command == "tune":
        return (fields - {"method", "settings"}) | set(_CHOICE) | {"resume", "overwrite"}
    if command == "recommend":
        from .choose.recommend import recommend

        taken = set(inspect.signature(recommend).parameters) - {"constraints", "say", "on_pilot"}
        return taken | set(_CHOICE)
    raise ValueError(f"no SDK config for {command!r}")


def sdk_options(command: str, config, overrides: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``autopeft.<command>`` from ``config`` (a file, a run's ``run.json``
    or a mapping, as ``--config`` takes) with ``overrides`` (keyword arguments) over it."""
    cfg = load(config)
    known = sdk_keys(command)
    values: dict[str, Any] = {}
    ignored = []
    for key, value in (cfg.values.items() if cfg else ()):
        if key in _CLI_ONLY:
            continue
        name = sdk_name(key)
        if key in _NEGATED:
            value = not _flag(cfg, key, value)
        if cfg.from_run and name not in known:
            ignored.append(key)
            continue
        if cfg.from_run and command != "train" and name in CHOSEN:
            ignored.append(key)
            continue
        if name not in known:
            raise cfg.error(key, f"not an option of {command}{closest(name, known | set(_ALIASES))}")
        if name == "settings":
            value = _settings(cfg, key, value)
        elif name == "pilot_budget":
            try:
                value = pilot_budget(value)
            except BadInputError as exc:
                raise cfg.error(key, exc.problem) from None
        elif name in _CHOICE:
            check_choice(cfg, key, name, value)
        else:
            from .training.options import TrainOptions

            if name in TrainOptions.model_fields:
                check_train_option(cfg, name, value)
        if name == "pilot_budget":
            values.update(value)
        else:
            values[name] = value
    if ignored:
        import logging

        logging.getLogger("autopeft").info("%s: %s not options of %s; left out", cfg.source, ", ".join(ignored),
                                           command)
    return {**values, **{k: v for k, v in overrides.items() if v is not None}}


def _flag(cfg: Config, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise cfg.error(key, f"true or false, got {value!r}")
    return value


def _settings(cfg: Config, key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return {str(k): v for k, v in value.items()}
    out = {}
    for item in settings_list(value):
        if "=" not in item:
            raise cfg.error(key, f"settings are KEY=VALUE (or a mapping), got {item!r}")
        name, raw = item.split("=", 1)
        try:
            out[name.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[name.strip()] = raw.split(",") if "," in raw else raw
    return out


def check_choice(cfg: Config, key: str, name: str, value: Any) -> None:
    """Constraints and the objective as a person types them, checked as the command line checks them."""
    from .choose.constraints import Constraints

    try:
        if name in ("max_vram", "max_adapter_size", "max_rank", "max_trainable_params", "time_budget", "methods",
                    "exclude", "require"):
            constraints = Constraints.parse(**{name: value})
            if name in ("methods", "exclude"):  # a misspelt name is the file's line, not a command-line option
                constraints.check_names()
        elif name == "objective":
            from .choose.ranking import Objective

            Objective.parse(value)
        elif name == "pilot_budget":
            pilot_budget(value)
        elif name == "pilot" and not isinstance(value, bool):
            raise BadInputError(f"true or false, got {value!r}")
    except BadInputError as exc:
        raise cfg.error(key, exc.problem) from None
