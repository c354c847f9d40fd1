"""Reading any PEFT ``adapter_config.json`` and finding the installed method it belongs to."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..errors import BadInputError, UnknownMethodError


def read_adapter_config(path: str | Path) -> dict[str, Any]:
    """The JSON of an adapter config file (or of a dir holding adapter_config.json), checked for shape."""
    path = Path(path)
    if path.is_dir():
        path = path / "adapter_config.json"
    if not path.is_file():
        raise BadInputError("no such file", source=str(path))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise BadInputError(f"not UTF-8 text (byte {exc.start})", source=str(path)) from None
    except json.JSONDecodeError as exc:
        raise BadInputError(f"invalid JSON: {exc.msg} (column {exc.colno})", source=str(path), line=exc.lineno) from None
    if not isinstance(data, dict):
        raise BadInputError("an adapter config must be a JSON object", source=str(path), line=1)
    if not isinstance(data.get("peft_type"), str):
        raise BadInputError("missing \"peft_type\": not a PEFT adapter config", source=str(path))
    data["_source"] = str(path)
    return data


def to_peft_config(data: dict[str, Any], task: str | None = None):
    """Build the ``peft.PeftConfig`` of this dict, dropping keys this PEFT version does not know."""
    import dataclasses

    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    source = data.get("_source")
    peft_type = data["peft_type"]
    config_cls = PEFT_TYPE_TO_CONFIG_MAPPING.get(peft_type)
    if config_cls is None:
        raise BadInputError(f"peft_type {peft_type!r} is not known to the installed PEFT", source=source)
    known = {f.name for f in dataclasses.fields(config_cls)}
    _check_keys(data, known, config_cls.__name__, source)
    kwargs = {k: v for k, v in data.items() if k in known and k not in ("peft_type", "auto_mapping", "peft_version")}
    if task is not None:
        from .base import peft_task_type

        kwargs["task_type"] = peft_task_type(task)
    kwargs["inference_mode"] = False
    try:
        return config_cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise BadInputError(f"invalid {config_cls.__name__}: {str(exc).splitlines()[0]}", source=source) from None


#: an unknown key this much like a known one is a misspelling of it, refused; others are warned about
TYPO_SIMILARITY = 0.8


def _check_keys(data: dict[str, Any], known: set[str], config_name: str, source: str | None) -> None:
    """Keys the installed PEFT does not know: a misspelt one (``lora_alhpa``) is refused naming the key
    it resembles; any other is left out with a warning (a newer PEFT may have written it)."""
    import difflib

    unknown = [k for k in data if k not in known and k not in ("peft_type", "auto_mapping", "peft_version", "_source")]
    typos = {k: difflib.get_close_matches(k, sorted(known), n=1, cutoff=TYPO_SIMILARITY) for k in unknown}
    misspelt = [k for k in unknown if typos[k]]
    if misspelt:
        listed = ", ".join(f"{k!r} (did you mean {typos[k][0]!r}?)" for k in misspelt)
        raise BadInputError(f"unknown {config_name} {'key' if len(misspelt) == 1 else 'keys'} {listed}", source=source)
    if unknown:
        import peft

        logging.getLogger("autopeft").warning(
            "warning: %s: %s, unknown to the installed PEFT %s (%s), %s left out; a newer PEFT may have written "
            "%s", source or "adapter config", ", ".join(map(repr, unknown)), peft.__version__, config_name,
            "is" if len(unknown) == 1 else "are", "it" if len(unknown) == 1 else "them")


def method_for(data: dict[str, Any]):
    """The installed method that recognises this adapter config; for a PEFT type no plugin claims,
    a generic stand-in that builds the config as PEFT defines it (costs are exact, capabilities unknown)."""
    from .base import PeftMethod
    from .registry import get_methods

    matches = [m for m in get_methods().values() if isinstance(m, PeftMethod) and m.recognises(data)]
    if matches:
        return matches[0]
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    if data["peft_type"] not in PEFT_TYPE_TO_CONFIG_MAPPING:
        raise UnknownMethodError(
            f"peft_type {data['peft_type']!r} is neither an installed method nor known to the installed PEFT",
            source=data.get("_source"))
    return generic_method(data["peft_type"])


def generic_method(peft_type: str):
    """A method for any PEFT type, used only with a ready-made adapter config."""
    from .base import Capabilities, PeftMethod, SearchSpace

    class GenericPeft(PeftMethod):
        name = f"peft:{peft_type.lower()}"
        family = "peft"
        description = f"PEFT's {peft_type} from an adapter config (no autopeft plugin describes it)"
        capabilities = Capabilities(merge=False, quantized=False, multi_adapter=True, lora_convertible=False)
        search_space = SearchSpace(learning_rate=(1e-4, 1e-3))

    GenericPeft.peft_type = peft_type
    method = GenericPeft()
    method.source = "peft"
    return method
