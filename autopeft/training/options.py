"""The options of a fine-tune: everything that decides a run, stored in its output dir so that
``--resume`` repeats it, and what follows from them before any model loads (the step count)."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class TrainOptions(BaseModel):
    """Everything that decides a training run. Stored in the output dir so ``--resume`` repeats it."""

    model_config = ConfigDict(extra="forbid")

    data: str
    output_dir: str
    method: str = "lora"
    settings: dict[str, Any] = Field(default_factory=dict)
    model: str | None = Field(default=None, description="embedded name, local dir or Hub id; default by task")
    validation: str | None = None
    test: str | None = Field(default=None, description="a labelled file scored once after training; never used to "
                                                       "stop early or to choose a checkpoint")
    task: Literal["causal-lm", "seq-cls"] | None = None
    epochs: float = Field(default=3.0, gt=0)
    max_steps: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=8, ge=1)
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    learning_rate: float | None = Field(default=None, gt=0, description="default: the method's own")
    max_length: int = Field(default=512, ge=8)
    gradient_checkpointing: bool = False
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    quantize: Literal["4bit", "8bit"] | None = Field(default=None, description="load the base in 4 or 8 bits "
                                                     "(QLoRA-style; CUDA and bitsandbytes; methods that support it)")
    eval_steps: int | None = Field(default=None, ge=1, description="default: about 5 evaluations per run")
    save_steps: int | None = Field(default=None, ge=1, description="default: at every evaluation")
    early_stopping_patience: int = Field(default=3, ge=0, description="evaluations without improvement; 0: off")
    train_on_inputs: bool = False
    pack: bool = False
    group_by_length: bool = True
    max_examples: int | None = Field(default=None, ge=1)
    validation_fraction: float = Field(default=0.1, gt=0, lt=1)
    warmup_ratio: float = Field(default=0.05, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    seed: int = 0
    data_seed: int | None = Field(default=None, description="seed of the --max-examples sample and of the "
                                  "validation split; default: seed. Fixing it while varying seed measures "
                                  "what training's randomness alone does to a score")
    samples: int = Field(default=3, ge=0, description="sample generations in the report (causal LM)")
    metrics: list[str] = Field(default_factory=list, description="task metrics (causal LM): score greedy "
                               "generations on the validation and test sets against their references")
    metrics_before: bool = Field(default=False, description="also score the model before training, on the same "
                                 "examples (with metrics)")
    generate_max_new_tokens: int = Field(default=96, ge=1, description="tokens generated per answer (with metrics)")
    generate_max_examples: int | None = Field(default=200, ge=1, description="validation examples generated (with "
                                              "metrics; the first N); None: all. The test set is generated whole")
    forgetting: bool = True
    keep_checkpoints: bool = False
    trust_remote_code: bool = False
    allow_pickle: bool = False
    max_seconds: float | None = Field(default=None, gt=0, description="end training after this long (from the "
                                      "start of the run), then evaluate and write the outputs as usual")
    profile_store: bool = Field(default=True, description="add the finished run to the local profile store")
    pilot_steps: int | None = Field(default=None, ge=1, description="a pilot: stop after this many optimizer steps "
                                    "of the full run's schedule, without evaluations, checkpoints or report")
    num_processes: int = Field(default=1, ge=1, description="train data-parallel on this many processes "
                               "(one per GPU), launched through Accelerate; batch_size is per process")
    accelerate_config: str | None = Field(default=None, description="an Accelerate config file (FSDP, DeepSpeed, "
                                          "several machines) to launch with")
    report_to: list[str] = Field(default_factory=list, description="experiment trackers the run logs to, as "
                                 "transformers' Trainer names them (tensorboard, mlflow, wandb, trackio, ...); "
                                 "a comma-separated string is accepted. Default: none")

    @field_validator("precision", mode="before")
    @classmethod
    def _short_precision(cls, value):
        """torch's names (bfloat16, float16, float32) mean the short ones."""
        from ..dtypes import short_dtype

        return short_dtype(value) or value if isinstance(value, str) else value

    @field_validator("report_to", mode="before")
    @classmethod
    def _tracker_list(cls, value):
        """``"tensorboard,mlflow"`` or a list; ``none`` (or nothing) means no tracker."""
        from .tracking import split_trackers

        return split_trackers(value)

    @field_validator("metrics", mode="before")
    @classmethod
    def _metric_list(cls, value):
        """``"exact_match,final_number"`` and lists of such names alike, lower-cased, each once."""
        from ..methods.metrics import metric_names

        return metric_names(value)

    @property
    def sample_seed(self) -> int:
        """The seed of the --max-examples sample and of the validation split."""
        return self.seed if self.data_seed is None else self.data_seed

    def prepare(self, tokenizer, *, test: bool = True):
        """The data as a run with these options trains on it (sample, split, tokens); with ``test``
        the ``--test`` file too. A pilot and the fine-tune it stands for see the same examples."""
        from ..data import prepare_data

        return prepare_data(self.data, tokenizer, task=self.task, validation_path=self.validation,
                            validation_fraction=self.validation_fraction, max_length=self.max_length,
                            train_on_inputs=self.train_on_inputs, pack=self.pack, max_examples=self.max_examples,
                            seed=self.sample_seed, test_path=self.test if test else None)


def total_steps(opts: TrainOptions, num_train: int) -> int:
    """Optimizer steps of a run with these options over ``num_train`` examples."""
    per_step = opts.batch_size * opts.gradient_accumulation_steps
    steps_per_epoch = max(1, math.ceil(num_train / per_step))
    return opts.max_steps or max(1, math.ceil(opts.epochs * steps_per_epoch))
