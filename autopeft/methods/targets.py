"""Module names a user gives a method (``target_modules``), checked against the model as PEFT matches them.

PEFT reads a list as names, each matching a module whose full name is it or ends in ``.name``; a
string as a regular expression that must match a module's whole name; and ``all-linear`` as every
linear layer but the output head. A name in a list that matches nothing is dropped by PEFT without a
word, and a string that matches nothing fails inside PEFT: both are refused here first, with the
model's own layer names, so that a typo costs a second rather than a model load.
"""

from __future__ import annotations

import re

from ..errors import BadInputError, close_names, one_of

#: settings that name modules, matched as PEFT matches ``target_modules``
MODULE_SETTINGS = ("target_modules", "feedforward_modules")
#: PEFT's shorthands that name no module
SHORTHANDS = ("all-linear",)


def layer_names(model) -> list[str]:
    """The distinct last parts of the names of modules that hold weights of their own, in model order
    (``q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, lm_head``...): what a list of
    target modules names."""
    seen: dict[str, None] = {}
    for name, module in model.named_modules():
        if name and next(module.parameters(recurse=False), None) is not None:
            last = name.rsplit(".", 1)[-1]
            if not last.isdigit():
                seen.setdefault(last)
    return list(seen)


def unmatched(value, names: list[str]) -> list[str]:
    """The parts of a target-modules value that match none of the module ``names`` (full dotted
    names): each such name of a list, or the whole string. Raises BadInputError for a string that is
    not a regular expression."""
    if value is None:
        return []
    if isinstance(value, str):
        if value in SHORTHANDS:
            return []
        try:
            pattern = re.compile(value)
        except re.error as exc:
            raise BadInputError(f"{value!r} is not a regular expression ({exc})") from None
        return [] if any(pattern.fullmatch(name) for name in names) else [value]
    found = set()  # every name and every dotted tail of one ("self_attn.q_proj", "q_proj")
    for name in names:
        parts = name.split(".")
        found.update(".".join(parts[i:]) for i in range(len(parts)))
    return [str(item) for item in value if str(item) not in found]


def check_module_settings(model, settings, *, method: str, source: str | None = "--set") -> None:
    """Refuse module-naming settings the user set (see :data:`MODULE_SETTINGS`) that match no module
    of ``model``, in one line: the names, the closest layer names, and the model's layer names."""
    given = getattr(settings, "model_fields_set", None)
    values = {key: getattr(settings, key, None) for key in MODULE_SETTINGS if given is None or key in given}
    _check(model, values, f"method {method}", source)


def check_adapter_config(model, config: dict) -> None:
    """As :func:`check_module_settings`, for the module names of a PEFT ``adapter_config.json`` (a dict)."""
    _check(model, {key: config.get(key) for key in MODULE_SETTINGS}, f"peft_type {config.get('peft_type')}",
           config.get("_source"))


def _check(model, values: dict, what: str, source: str | None) -> None:
    names = [name for name, _ in model.named_modules() if name]
    for key, value in values.items():
        try:
            missing = unmatched(value, names)
        except BadInputError as exc:
            raise BadInputError(f"{key}: {exc.problem} ({what})", source=source) from None
        if not missing:
            continue
        layers = layer_names(model)
        if isinstance(value, str):
            example = max(names, key=lambda name: name.count("."))
            problem = (f"{key} {value!r} matches no module of the model (a string is a regular "
                       f"expression matched against whole module names such as {example!r})")
        else:
            problem = (f"{key}: no module of the model is named "
                       f"{', '.join(_with_hint(name, layers) for name in missing)}")
        raise BadInputError(f"{problem}; the model's layers: {', '.join(layers)} ({what})", source=source)


def _with_hint(name: str, layers: list[str]) -> str:
    close = close_names(name, layers)
    return f"{name!r}" + (f" (did you mean {one_of(close)}?)" if close else "")
