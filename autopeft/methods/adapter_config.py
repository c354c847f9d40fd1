"""Reading any PEFT ``adapter_config.json`` and finding the installed method it belongs to."""

from __future__ import annotations

import json
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
    kwargs = {k: v for k, v in data.items() if k in known and k not in ("peft_type", "auto_mapping", "peft_version")}
    if task is not None:
        from .base import peft_task_type

        kwargs["task_type"] = peft_task_type(task)
    kwargs["inference_mode"] = False
    try:
        return config_cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise BadInputError(f"invalid {config_cls.__name__}: {str(exc).splitlines()[0]}", source=source) from None


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
