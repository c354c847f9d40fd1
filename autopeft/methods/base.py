"""What a method plugin is: its description, settings, search space, build, optimizer and costs.

A plugin subclasses :class:`Method` (or :class:`PeftMethod` when the method is a PEFT config) and
fills in the class attributes; :func:`contract_problems` says what is missing, and the registry
refuses such a method by name. Heavy libraries are imported inside the methods that need them, so
listing methods stays fast. :mod:`autopeft.testing` checks a method against real tiny models.
"""

from __future__ import annotations

import contextlib
import math

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import BadInputError, unknown_names
from ..tasks import CLASSIFICATION_TASKS, PEFT_TASK_TYPES, TASKS, Task  # noqa: F401  (plugins import them from here)

if TYPE_CHECKING:  # pragma: no cover
    import torch


class Capabilities(BaseModel):
    """What a trained adapter of this method can do besides being loaded."""

    model_config = ConfigDict(frozen=True)

    merge: bool = Field(description="can be merged into the base weights (no inference overhead)")
    quantized: bool = Field(description="trains on a 4-/8-bit quantised base (QLoRA-style)")
    multi_adapter: bool = Field(description="several adapters can be loaded on one base and switched")
    lora_convertible: bool = Field(description="PEFT can convert it to a LoRA adapter (for LoRA-only servers)")


class SearchSpace(BaseModel):
    """Hyperparameters worth trying in a pilot: learning rates, and values of the method's settings."""

    model_config = ConfigDict(frozen=True)

    learning_rate: tuple[float, ...]
    settings: dict[str, tuple[Any, ...]] = Field(default_factory=dict)
    #: learning rates for one task where they differ, e.g. ``{"seq-cls": (...)}``: a freshly initialised
    #: classification head over a small encoder, trained for a few hundred steps, wants larger ones
    #: (token classification takes the ``seq-cls`` rates unless it has its own: the same kind of head)
    task_learning_rate: dict[str, tuple[float, ...]] = Field(default_factory=dict)

    def learning_rates(self, task: str) -> tuple[float, ...]:
        """The learning rates to try for ``task``."""
        if task == "token-cls" and task not in self.task_learning_rate:
            task = "seq-cls"
        return self.task_learning_rate.get(task, self.learning_rate)

    def default_learning_rate(self, task: str) -> float:
        """The middle of the task's range; its top for classification, where a freshly initialised
        head on a small encoder wants a larger step."""
        rates = sorted(self.learning_rates(task))
        return rates[-1] if task in CLASSIFICATION_TASKS else rates[len(rates) // 2]

    def learning_rate_grid(self, task: str, n: int, prefer: float | None = None) -> list[float]:
        """``n`` learning rates of the task's range: the default first, then the nearest to it. With
        ``prefer`` (where stored runs like this job did best), that rate first, then the default and its
        neighbours, leaving out those within a factor of 1.5 of it."""
        default = self.default_learning_rate(task)
        rates = sorted(self.learning_rates(task), key=lambda lr: abs(math.log(lr / default)))
        if prefer is not None:
            rates = [prefer, *(lr for lr in rates if abs(math.log(lr / prefer)) > math.log(1.5))]
        return rates[:max(1, n)]


class MethodSettings(BaseModel):
    """Base of every method's settings: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


ProbeSource = Literal["probe", "peft-source", "declared", "error"]


class Finding(BaseModel):
    """One capability: True, False or None (unknown), and how that was found."""

    value: bool | None
    source: ProbeSource = Field(description="probe: tried on a tiny model; peft-source: read from the method's PEFT "
                                       "tuner package; declared: the plugin's word (nothing to probe); error")
    note: str | None = None


class ProbedCapabilities(BaseModel):
    """What ``autopeft methods --json`` lists under ``probed``."""

    merge: Finding
    quantized: Finding
    multi_adapter: Finding
    lora_convertible: Finding
    layer_types: list[str] | None = Field(description="layer types the method wraps (None: not a layer-wrapping method)")
    key: str = Field(description="method, plugin, PEFT and torch versions the probe ran with")


class MethodInfo(BaseModel):
    """A method as ``autopeft methods --json`` lists it."""

    name: str
    family: str
    description: str
    tasks: list[str]
    layer_types: list[str]
    capabilities: Capabilities
    search_space: SearchSpace
    settings: dict[str, Any]
    source: str
    available: bool
    unavailable_reason: str | None = None
    probed: ProbedCapabilities | None = Field(default=None, description="capabilities found by trying them on a "
                                              "tiny model (autopeft.methods.probes); None when not probed")


class Method:
    """A fine-tuning method. Subclass it, set the class attributes, implement :meth:`build`.

    What a subclass must provide (the registry refuses a method that lacks any, naming it)::

        name: str                    # what users type: lowercase letters, digits, '_', '-', '.'
        family: str                  # "low-rank", "prompt", "full", ...: groups alike methods
        description: str             # one line for `autopeft methods`
        tasks: tuple[str, ...]       # of TASKS; default: all of them
        capabilities: Capabilities   # merge, quantised base, multi-adapter, LoRA conversion
        search_space: SearchSpace    # learning rates (and settings) worth piloting
        def build(self, model, settings, task) -> torch.nn.Module

    Everything else has a safe default: ``aliases``, ``layer_types``, ``Settings`` (no settings),
    ``probe_settings`` (settings for the 64-wide tiny models of probes and checks, where the defaults
    do not fit),
    :meth:`optimizer` (the trainer's AdamW), the cost hooks and the run-adjustment hooks.

    A method that initialises from the training data (EVA, CorDA, LoRA-GA) also sets::

        data_batches: int = N        # training batches build() must see
        def build(self, model, settings, task, batches=None) -> torch.nn.Module
        def init_memory_bytes(self, model, settings, *, batch_size, seq_len, activations, device) -> int

    The trainer then calls ``build(model, settings, task, batches=[...])`` with N batches of the
    training split, each a dict of tensors as the training collator makes them (``input_ids``,
    ``attention_mask``, ``labels``), on the model's device. On a real model, ``build`` without them
    raises :class:`autopeft.BadInputError`; on the meta device (the cost model, which has no data)
    it is called without batches and builds the variant's shapes, the values left to the data.
    Methods with ``data_batches = 0`` are called without the keyword, as always.
    """

    name: ClassVar[str]
    family: ClassVar[str]
    description: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    tasks: ClassVar[tuple[str, ...]] = TASKS
    layer_types: ClassVar[tuple[str, ...]] = ("linear",)
    capabilities: ClassVar[Capabilities]
    search_space: ClassVar[SearchSpace]
    Settings: ClassVar[type[MethodSettings]] = MethodSettings
    #: settings that fit the 64-wide tiny models capability probes and conformance checks build
    #: (:mod:`autopeft.methods.probes`), where the defaults do not: e.g. ``{"r": 8}``
    probe_settings: ClassVar[dict[str, Any]] = {}
    #: training batches :meth:`build` must see to initialise (0: none, and ``build`` gets no ``batches``)
    data_batches: ClassVar[int] = 0

    #: the distribution that registered the method; set by the plugin manager
    source: str = "unknown"

    def unavailable_reason(self) -> str | None:
        """Why this method cannot run on this machine, or None when it can."""
        return None

    def settings(self, values: dict[str, Any] | MethodSettings | None = None) -> MethodSettings:
        """Validate ``values`` into this method's settings; raise BadInputError saying what is wrong."""
        if isinstance(values, self.Settings):
            return values
        try:
            return self.Settings(**dict(values or {}))
        except ValidationError as exc:
            err = exc.errors()[0]
            key = ".".join(str(p) for p in err["loc"]) or "settings"
            if err["type"] == "extra_forbidden":
                unknown = [str(e["loc"][0]) for e in exc.errors() if e["type"] == "extra_forbidden"]
                raise unknown_names(f"{self.name} setting", unknown, list(self.Settings.model_fields),
                                    source="--set") from None
            raise BadInputError(f"method {self.name}: setting {key!r}: {err['msg']}", source="--set") from None

    def build(self, model: torch.nn.Module, settings: MethodSettings, task: str) -> torch.nn.Module:
        """Return ``model`` made trainable by this method (only the method's parameters require grad)."""
        raise NotImplementedError

    def optimizer(self, model: torch.nn.Module, settings: MethodSettings, *, learning_rate: float,
                  weight_decay: float = 0.0) -> torch.optim.Optimizer | None:
        """The method's own optimizer, or None for the trainer's default AdamW."""
        return None

    def settings_for_model(self, model: torch.nn.Module, settings: MethodSettings) -> MethodSettings:
        """The settings adjusted to ``model``, for methods whose defaults must fit its layer sizes
        (C3A's block size, VB-LoRA's vector length). Called before :meth:`build`, and what it returns
        is what the run records. Default: unchanged. Settings the user set stay as set."""
        return settings

    def settings_for_run(self, settings: MethodSettings, total_steps: int) -> MethodSettings:
        """The settings adjusted to a run of ``total_steps`` optimizer steps, for methods whose schedule
        depends on the run's length (AdaLoRA). Default: unchanged. Settings the user set stay as set."""
        return settings

    def training_callbacks(self, model: torch.nn.Module, settings: MethodSettings) -> list:
        """``transformers.TrainerCallback`` objects the method needs while training (for example
        AdaLoRA's rank reallocation after each optimizer step). Default: none."""
        return []

    def init_memory_bytes(self, model: torch.nn.Module, settings: MethodSettings, *, batch_size: int,
                          seq_len: int, activations: int, device: str) -> int:
        """Peak bytes the one-off initialisation holds beyond the built model's weights and the runtime
        (LoRA-GA: the gradients of every target weight; CorDA: an in×in covariance per target layer;
        EVA: each layer's SVD state). ``model`` is the meta build, ``activations`` what a training
        forward pass at ``batch_size`` × ``seq_len`` holds when backward starts (saved tensors, logits
        and loss: for inits that run backward), ``device`` the one estimated for. Default: 0, no such step."""
        return 0

    def optimizer_state_bytes(self, model: torch.nn.Module, settings: MethodSettings) -> int:
        """Bytes of optimizer state while training ``model``. Default: AdamW, two moments per trainable value."""
        return 2 * sum(p.numel() * p.element_size() for p in unique_trainable(model))

    def adapter_state_dict(self, model) -> dict:
        """The tensors the saved adapter holds. Default: every trainable parameter."""
        return {name: p for name, p in model.named_parameters() if p.requires_grad}

    def info(self) -> MethodInfo:
        reason = self.unavailable_reason()
        return MethodInfo(
            name=self.name, family=self.family, description=self.description, tasks=list(self.tasks),
            layer_types=list(self.layer_types), capabilities=self.capabilities, search_space=self.search_space,
            settings=self.Settings().model_dump(mode="json"), source=self.source,
            available=reason is None, unavailable_reason=reason,
        )


class PeftMethod(Method):
    """A method that is a PEFT config: :meth:`peft_config` maps settings to it and PEFT builds it.
    Besides :class:`Method`'s attributes it sets ``peft_type`` and implements :meth:`peft_config`
    instead of :meth:`build`."""

    #: the PEFT type this method produces, e.g. "LORA"
    peft_type: ClassVar[str]

    def peft_config(self, settings: MethodSettings, task: str):
        """Return the ``peft.PeftConfig`` for these settings and task."""
        raise NotImplementedError

    def recognises(self, config: dict[str, Any]) -> bool:
        """Whether an ``adapter_config.json`` (as a dict) is an instance of this method."""
        return config.get("peft_type") == self.peft_type

    def build(self, model, settings, task):
        return self.build_from_peft_config(model, self.peft_config(settings, task))

    def adapter_state_dict(self, model):
        from peft import get_peft_model_state_dict

        name = model.active_adapter
        if model.peft_config[name].is_prompt_learning and _on_meta(model):
            # PEFT saves the prompt encoder's output, which it copies to CPU; on meta, compute its shape
            tokens = model.prompt_tokens[name].unsqueeze(0).to("meta")
            embeddings = model.prompt_encoder[name](tokens)[0]
            return {"prompt_embeddings": embeddings[: model.peft_config[name].num_virtual_tokens]}
        return get_peft_model_state_dict(model)

    def build_from_peft_config(self, model, peft_config):
        """Wrap ``model`` with an already-made PEFT config (used for ``--peft-config FILE``)."""
        from peft import get_peft_model

        peft_config = without_head_targets(model, peft_config)
        if not _on_meta(model):
            return get_peft_model(model, peft_config)
        with _no_weight_decompositions():
            # some adapters make their tensors on the CPU beside a meta base: put them all on meta
            return get_peft_model(model, shapes_only(peft_config)).to("meta")


def build_method(method: Method, model, settings: MethodSettings, task: str, batches: list | None = None):
    """``method.build`` called as the contract says: with ``batches`` only for a method that asks for
    data (``data_batches`` > 0), so that methods without the keyword keep working. A PEFT method's
    module names that match no module of ``model`` are refused first (PEFT drops them silently)."""
    if isinstance(method, PeftMethod):
        from .targets import check_module_settings

        check_module_settings(model, settings, method=method.name)
    if method.data_batches > 0:
        return method.build(model, settings, task, batches=batches)
    return method.build(model, settings, task)


#: the module names of the classification heads PEFT trains in full for SEQ_CLS and TOKEN_CLS
CLASSIFIER_HEADS = ("classifier", "score")


def without_head_targets(model, peft_config):
    """``peft_config`` with ``target_modules="all-linear"`` spelt out as every linear layer but the
    classification head, for token classification. PEFT leaves the head out of "all-linear" for SEQ_CLS
    only; for TOKEN_CLS it wraps the head and then refuses to train it in full (modules_to_save)."""
    import dataclasses

    import torch

    targets = getattr(peft_config, "target_modules", None)
    if str(getattr(peft_config, "task_type", "")).split(".")[-1] != "TOKEN_CLS" or not (
            isinstance(targets, str) and targets.lower() == "all-linear"):
        return peft_config
    names = [name for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) and name.split(".")[-1] not in CLASSIFIER_HEADS]
    return dataclasses.replace(peft_config, target_modules=names)


def on_meta_device(model) -> bool:
    """Whether ``model`` is built on PyTorch's meta device (the cost model's build): no values, only shapes."""
    return any(p.is_meta for p in model.parameters())


def contract_problems(method) -> list[str]:
    """What ``method`` lacks of the contract in :class:`Method`'s docstring: one phrase per missing or
    wrong piece; empty when it is complete."""
    problems = []
    if not isinstance(method, Method):
        return [f"is a {type(method).__name__}, not an autopeft.Method instance"]
    expected = {"name": str, "family": str, "description": str, "capabilities": Capabilities,
                "search_space": SearchSpace}
    for attribute, kind in expected.items():
        value = getattr(method, attribute, None)
        if not isinstance(value, kind) or (kind is str and not value):
            problems.append(f"no {attribute} (a {kind.__name__})" if value is None else
                            f"{attribute} is a {type(value).__name__}, not a {kind.__name__}")
    tasks = getattr(method, "tasks", None)
    if not isinstance(tasks, (tuple, list)) or not tasks or any(t not in TASKS for t in tasks):
        problems.append(f"tasks must be a non-empty tuple of {', '.join(TASKS)}, got {tasks!r}")
    settings = getattr(method, "Settings", None)
    if not (isinstance(settings, type) and issubclass(settings, MethodSettings)):
        problems.append("Settings is not a MethodSettings subclass")
    if isinstance(method, PeftMethod):
        if type(method).peft_config is PeftMethod.peft_config and type(method).build is PeftMethod.build:
            problems.append("no peft_config() (or build())")
        if not isinstance(getattr(method, "peft_type", None), str):
            problems.append("no peft_type (a str)")
    elif type(method).build is Method.build:
        problems.append("no build()")
    batches = getattr(method, "data_batches", 0)
    if not isinstance(batches, int) or isinstance(batches, bool) or batches < 0:
        problems.append(f"data_batches must be a non-negative int, got {batches!r}")
    return problems


#: LoRA initialisations computed from the pretrained weights (decompositions, quantisation, data)
DATA_DEPENDENT_LORA_INITS = ("pissa", "olora", "corda", "eva", "loftq", "lora_ga")
#: of those, the ones that also rewrite the base weights and that PEFT converts back to a plain LoRA of
#: the untouched base when saving (``path_initial_model_for_weight_conversion``)
BASE_REWRITING_LORA_INITS = ("pissa", "olora", "corda", "lora_ga")


def shapes_only(peft_config):
    """The config with a weight-dependent LoRA initialisation replaced by the default random one: the
    same shapes and costs, and buildable on the meta device, where no weights exist."""
    import dataclasses

    init = getattr(peft_config, "init_lora_weights", None)
    if isinstance(init, str) and init.startswith(DATA_DEPENDENT_LORA_INITS):
        # the init's own sub-config goes too (PEFT warns about one left without its init)
        subconfigs = {"loftq_config": {}, "eva_config": None, "corda_config": None, "lora_ga_config": None}
        return dataclasses.replace(peft_config, init_lora_weights=True,
                                   **{k: v for k, v in subconfigs.items() if getattr(peft_config, k, None)})
    return peft_config


@contextlib.contextmanager
def _no_weight_decompositions():
    """Skip LoRA-variant inits that decompose the base weights (MiCA: SVD), which meta tensors cannot do.
    They only fill values; the variant keeps its shapes and which tensors train."""
    from peft.tuners.lora.layer import LoraLayer

    original = LoraLayer.mica_init
    LoraLayer.mica_init = lambda self, adapter_name: None
    try:
        yield
    finally:
        LoraLayer.mica_init = original


def _on_meta(model) -> bool:
    return any(p.is_meta for p in model.parameters())


def divisor_of_layer_sizes(model, wanted: int) -> int:
    """The largest size up to ``wanted`` that divides the in and out sizes of every linear layer in the
    model's blocks, for methods whose blocks or vectors must tile the weights (C3A, VB-LoRA): MiniLM's
    384 takes 192 where Llama-3's 3072/8192/1024 keep 256."""
    import math

    import torch

    common = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and not name.endswith(("lm_head", "classifier", "score")):
            common = math.gcd(common, module.in_features, module.out_features)
    if common == 0:
        return wanted
    return max(d for d in range(1, min(wanted, common) + 1) if common % d == 0)


def peft_task_type(task: str) -> str:
    return PEFT_TASK_TYPES[task]


def unique_trainable(model) -> list:
    """Trainable parameters, each shared tensor once."""
    seen, out = set(), []
    for p in model.parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out
