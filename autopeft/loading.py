"""Loading models and tokenizers for training: embedded defaults, local dirs and Hub ids.

Weights load only from safetensors (or the embedded GGUF) unless the caller opts in to pickle files,
and remote code runs only when asked. The embedded SmolLM2 is a GGUF file that takes ~20 s to
dequantise; the first load converts it once into a safetensors copy under ``AUTOPEFT_HOME``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .errors import BadInputError, first_line, remote_code_refused
from .models import EMBEDDED, EmbeddedModel, autopeft_home, embedded_dir


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
            f"cannot load the tokenizer of {model!r}: {first_line(exc)}", source="--model") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def load_model(model: str, task: str, *, label2id: dict[str, int] | None = None, dtype=None,
               trust_remote_code: bool = False, allow_pickle: bool = False, pad_token_id: int | None = None,
               quantize: str | None = None):
    """The pretrained model with the head for ``task`` ("causal-lm" or "seq-cls").

    :param label2id: class names to ids (seq-cls); the classification head is sized from it.
    :param dtype: a torch dtype, or None for fp32.
    :param allow_pickle: also load ``.bin``/``.pt`` weights, which can run code when unpickled.
    :param quantize: ``4bit`` or ``8bit``: the linear layers through bitsandbytes, on this process's
        GPU, computing in ``dtype`` (see :mod:`autopeft.quantization`).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

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
    auto = AutoModelForCausalLM
    if task == "seq-cls":
        auto = AutoModelForSequenceClassification
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
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    from .quantization import bnb_config, modules_to_keep

    config = config or AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    auto = AutoModelForSequenceClassification if task == "seq-cls" else AutoModelForCausalLM
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
