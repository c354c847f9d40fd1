"""A complete fine-tune with any installed method, on transformers' Trainer.

The method plugin builds the trainable model and, where it needs one, its optimizer; everything else
(data, evaluation, checkpoints, early stopping, mixed precision, resuming) is the Trainer's, set up
the way a careful engineer would. ``tune`` calls the same :func:`train` after choosing the method.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from pathlib import Path

from pydantic import ValidationError

from ..errors import BadInputError, MethodUnavailableError, PluginError, first_line, unknown_names
from ..tasks import CLASSIFICATION_TASKS, SELECTION_METRICS
from .options import TrainOptions, total_steps
from .outputs import CHECKPOINTS, OPTIONS_FILE, RECOMMENDATION_FILE, RECORD_FILE, PilotResult, RunRecord

log = logging.getLogger("autopeft")


def pilot(data: str, *, output_dir: str, steps: int, **options) -> PilotResult:
    """A pilot: the first ``steps`` optimizer steps of exactly the run that :func:`train` with these
    options would do (same data, batch and learning-rate schedule), measured: the loss curve, step
    time and peak memory. No evaluation, checkpoint or report; ``output_dir`` is scratch space."""
    out = Path(output_dir).expanduser()
    opts = _options(**{**options, "data": str(data), "output_dir": str(out), "pilot_steps": steps})
    run = Run(opts, out, resume=False, progress=False, recommendation=None)
    return run.measure_pilot(run.fit())


def train(data: str | None = None, *, output_dir: str, resume: bool = False, overwrite: bool = False,
          progress: bool = True, recommendation: dict | None = None, lock_output: bool = True,
          **options) -> RunRecord:
    """Fine-tune and write the outputs (see :mod:`autopeft.outputs`); return the run's record.

    :param data: the training file (JSONL, JSON, CSV, TSV or Parquet).
    :param output_dir: where the adapter, report and run.json go; must be new, or autopeft's own
        with ``resume`` (continue from the last checkpoint, with the stored options) or ``overwrite``.
    :param lock_output: hold ``output_dir`` for this run, so that another one into it refuses at once
        (False only where the caller holds it already, as ``tune`` does for its fine-tune's process).
    :param options: any field of :class:`TrainOptions`.
    """
    from .outputs import claim_output_dir

    out = Path(output_dir).expanduser()
    with claim_output_dir(out, "train") if lock_output else contextlib.nullcontext():
        return _train(data, out, resume, overwrite, progress, recommendation, options)


def _train(data, out: Path, resume: bool, overwrite: bool, progress: bool, recommendation, options) -> RunRecord:
    from .outputs import check_output_dir

    check_output_dir(out, resume=resume, overwrite=overwrite)
    if resume:
        opts = _stored_options(out)
        if recommendation is None and (out / RECOMMENDATION_FILE).is_file():
            import json

            recommendation = json.loads((out / RECOMMENDATION_FILE).read_text(encoding="utf-8"))
    else:
        opts = _options(data=str(data) if data is not None else None, output_dir=str(out), **options)
    from .launch import launch, launched, plan_of

    if opts.pilot_steps:
        raise BadInputError("pilot_steps is for autopeft.training.run.pilot(), not train()")
    _method(opts.method, opts.settings)  # a misspelt method or setting: refused before torch even loads
    if opts.metrics:  # a misspelt --metric is reported before any data or model loads
        from ..methods.metrics import resolve_metrics

        resolve_metrics(opts.metrics)
    from .tracking import check_trackers, tracked

    trackers = check_trackers(opts.report_to, source="report_to")  # a missing package fails here, before anything
    if (opts.num_processes > 1 or opts.accelerate_config) and not launched():
        plan_of(opts.num_processes, opts.accelerate_config)  # a bad config file is reported here, once
        return launch(opts, out, resume=resume, recommendation=recommendation)
    from .launch import is_main_process

    run = Run(opts, out, resume=resume, progress=progress, recommendation=recommendation)
    with tracked(trackers if is_main_process() else [], out) as run.tracking:
        return run.finish(run.fit())


def _options(**values) -> TrainOptions:
    if values.get("data") is None:
        raise BadInputError("give a training data file")
    try:
        return TrainOptions(**values)
    except ValidationError as exc:
        unknown = [str(e["loc"][0]) for e in exc.errors() if e["type"] == "extra_forbidden"]
        if unknown:  # a keyword of the SDK's train() that is no option
            raise unknown_names("option", unknown, list(TrainOptions.model_fields)) from None
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise BadInputError(f"option {field.replace('_', '-')}: {err['msg']}") from None


def _stored_options(out: Path) -> TrainOptions:
    import json

    try:
        return TrainOptions(**json.loads((out / OPTIONS_FILE).read_text(encoding="utf-8")))
    except (ValueError, ValidationError) as exc:
        raise BadInputError(f"cannot resume: the stored options are unreadable ({type(exc).__name__})",
                            source=str(out / OPTIONS_FILE)) from None


class Run:
    """One training run, step by step; each step a method so that the order reads top to bottom."""

    def __init__(self, opts: TrainOptions, out: Path, *, resume: bool, progress: bool, recommendation):
        self.opts, self.out, self.resume, self.progress = opts, out, resume, progress
        self.recommendation = recommendation
        self.started = time.perf_counter()
        self.tracking = None  # the run's experiment trackers (autopeft.training.tracking), if any
        self.pilot_clock = None  # a pilot's callback that ends it, and times its first step

    def fit(self):
        """Load the data and the model, build the method, train; return the Trainer."""
        import torch

        from transformers import set_seed

        from .launch import DataTrace, is_main_process, launched, plan_of

        opts = self.opts
        set_seed(opts.seed)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.main = is_main_process()
        self.plan = plan_of(opts.num_processes, opts.accelerate_config)  # processes, and how they share state
        self.method, self.settings = _method(opts.method, opts.settings)
        if opts.quantize:
            from ..quantization import check_supported, require_here

            check_supported(opts.quantize, self.method)
            require_here(opts.quantize)
        self.prepare_data()
        self.check_module_names()
        self.scoring = self.task_scoring()
        created = not self.out.exists()
        self.out.mkdir(parents=True, exist_ok=True)
        try:
            if not self.resume and self.main:
                from .outputs import write_json

                write_json(self.out / OPTIONS_FILE, opts.model_dump(mode="json"))
                if self.recommendation is not None:
                    write_json(self.out / RECOMMENDATION_FILE, self.recommendation)
            self.load_and_build()
            self.data_trace = DataTrace() if launched() else None
            if self.data_trace is not None:
                self.data_trace.attach(self.net)
            trainer = self.make_trainer()
        except BaseException:
            # nothing was trained: leave no half-made run behind (a dir the user gave us stays)
            if created and self.main and not self.resume:
                shutil.rmtree(self.out, ignore_errors=True)
            raise
        train_started = time.perf_counter()
        last = self._last_checkpoint()
        if last is not None and _finished_at(last):
            # stopped after its last step (while writing the outputs): resuming through train() would
            # take one step more than asked, so load that checkpoint and write the outputs
            from transformers.trainer_callback import TrainerState

            trainer._load_from_checkpoint(last)
            trainer.state = TrainerState.load_from_json(str(Path(last) / "trainer_state.json"))
        else:
            # (not in a pilot, which is discarded; nor in one of several processes: one that stopped
            # alone would leave the others waiting in a collective, so the launching process ends
            # them all and they resume from the last checkpoint)
            with _stop_gracefully(trainer, enabled=not opts.pilot_steps and not launched()):
                trainer.train(resume_from_checkpoint=last)
        self.train_ended = time.perf_counter()
        self.train_seconds = self.train_ended - train_started
        return trainer

    # -- data and model ------------------------------------------------------------------------

    def prepare_data(self) -> None:
        from ..models import load_tokenizer
        from ..models import DEFAULT_MODEL, EMBEDDED

        opts = self.opts
        model = opts.model
        if model is None:
            # the default model follows the task, which the data decides when the user did not
            from ..data import data_task

            model = DEFAULT_MODEL[opts.task or data_task(opts.data)]
        self.model_name = model
        self.tokenizer = load_tokenizer(model, trust_remote_code=opts.trust_remote_code)
        self.data = opts.prepare(self.tokenizer, test=not opts.pilot_steps)
        self.task = self.data.info.task
        if self.task not in self.method.tasks:
            raise BadInputError(f"method {self.method.name} does not support {self.task} "
                                f"(the data is {self.data.info.format}); it supports {', '.join(self.method.tasks)}")
        if model in EMBEDDED and self.task not in EMBEDDED[model].tasks and EMBEDDED[model].task == "seq-cls":
            raise BadInputError(f"{model} is a classification encoder and the data is {self.data.info.format}",
                                source="--model")

    def check_module_names(self) -> None:
        """Module names the user set (``--set target_modules=...``) are checked against the model built
        on the meta device from its config, before its weights load (see :mod:`autopeft.methods.targets`)."""
        from ..methods.base import PeftMethod
        from ..methods.targets import MODULE_SETTINGS

        if not isinstance(self.method, PeftMethod) or not set(MODULE_SETTINGS) & self.settings.model_fields_set:
            return
        from ..costmodel import meta_model
        from ..methods.targets import check_module_settings
        from ..models import load_config

        config = load_config(self.model_name, trust_remote_code=self.opts.trust_remote_code)
        net = meta_model(config, self.task, num_labels=len(self.data.label2id or {}) or 2)
        check_module_settings(net, self.settings, method=self.method.name)

    def task_scoring(self):
        """The task metrics asked for (``--metric``), their examples and references checked; None without."""
        if self.opts.pilot_steps or not self.opts.metrics:
            return None
        from .generation import TaskScoring

        return TaskScoring.for_run(self.opts, self.data, self.tokenizer)

    def load_and_build(self) -> None:
        import torch

        from ..models import load_model

        opts = self.opts
        self.precision = _precision(opts.precision, self.device)
        # adapters train in fp32 over a half-precision base on GPUs (a 4/8-bit base computes in it);
        # full-weight methods keep fp32 master weights and let autocast do the half-precision maths
        half = self.precision != "fp32" and self.method.family != "full"
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision) if half else torch.float32
        net = load_model(self.model_name, self.task, label2id=self.data.label2id, dtype=dtype,
                         trust_remote_code=opts.trust_remote_code, allow_pickle=opts.allow_pickle,
                         pad_token_id=self.tokenizer.pad_token_id, quantize=opts.quantize)
        if not opts.quantize:  # bitsandbytes places a quantised model itself, and refuses to move it
            net = net.to(self.device)
        self.base_config = net.config
        self.loss_before = None
        if self.task == "causal-lm" and opts.forgetting and not opts.pilot_steps and self.main:
            self.loss_before = _general_loss(net, self.tokenizer)
        if self.scoring is not None and opts.metrics_before and self.main:
            self.scoring.score_before(net, progress=self.progress)  # the base, before the method is built
        self.total_steps = total_steps(opts, len(self.data.train))
        try:
            from ..methods.base import build_method

            self.settings = self.method.settings_for_run(self.method.settings_for_model(net, self.settings),
                                                         self.total_steps)
            batches = self.init_batches() if self.method.data_batches else None
            started = time.perf_counter()
            net = build_method(self.method, net, self.settings, self.task, batches)
            self.init_seconds = time.perf_counter() - started  # one-off: not part of any step's time
        except BadInputError:
            raise
        except Exception as exc:
            raise PluginError(f"method {self.method.name} failed to build: {type(exc).__name__}: "
                              f"{first_line(exc)}") from None
        if not isinstance(net, torch.nn.Module):
            raise PluginError(f"method {self.method.name} (plugin {self.method.source}) built a "
                              f"{type(net).__name__}, not a torch module")
        if self.task in CLASSIFICATION_TASKS:
            _train_head(net)
        self.initial_adapter = (None if opts.pilot_steps or not self.main else
                                _save_initial_adapter(net, self.out / CHECKPOINTS / "initial-adapter"))
        if not any(p.requires_grad for p in net.parameters()):
            raise PluginError(f"method {self.method.name} left no trainable parameter")
        if opts.gradient_checkpointing:
            net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            net.config.use_cache = False
        # again: adapters may have been made on the CPU (on a quantised base PEFT makes them beside each layer)
        self.net = net if opts.quantize else net.to(self.device)

    def init_batches(self) -> list[dict]:
        """The first ``method.data_batches`` batches of a seeded shuffle of the training split, made by
        the training collator and put on the training device: what a data-initialised method builds from."""
        import torch
        from torch.utils.data import DataLoader

        from ..data import make_collator

        generator = torch.Generator().manual_seed(self.opts.seed)
        loader = DataLoader(self.data.train, batch_size=self.opts.batch_size, shuffle=True, generator=generator,
                            collate_fn=make_collator(self.task, self.tokenizer))
        batches = []
        for batch in loader:
            if len(batches) == self.method.data_batches:
                break
            batches.append({k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
        return batches

    # -- training --------------------------------------------------------------------------------

    def make_trainer(self):
        from transformers import EarlyStoppingCallback, Trainer, TrainingArguments
        from transformers.trainer_callback import PrinterCallback, ProgressCallback as HFProgress

        from ..data import make_collator
        from .evaluation import classification_metrics
        from .progress import ProgressCallback

        opts = self.opts
        pilot = opts.pilot_steps is not None
        has_eval = not pilot and self.data.validation is not None and len(self.data.validation) > 0
        eval_steps = opts.eval_steps or max(1, self.total_steps // 5)
        save_steps = opts.save_steps or eval_steps
        early = has_eval and opts.early_stopping_patience > 0
        if early and save_steps % eval_steps:
            save_steps = eval_steps * max(1, round(save_steps / eval_steps))  # best model needs saved evals
        self.learning_rate = opts.learning_rate or self.method.search_space.default_learning_rate(self.task)
        # the checkpoint kept and the stop decided by the task's metric where it has one, else the loss
        selection = SELECTION_METRICS.get(self.task)
        best_metric, greater = (f"eval_{selection[0]}", selection[1]) if selection else ("eval_loss", False)
        args = TrainingArguments(
            output_dir=str(self.out / CHECKPOINTS),
            per_device_train_batch_size=opts.batch_size, per_device_eval_batch_size=opts.batch_size,
            gradient_accumulation_steps=opts.gradient_accumulation_steps,
            num_train_epochs=opts.epochs, max_steps=opts.max_steps or -1,
            learning_rate=self.learning_rate, weight_decay=opts.weight_decay,
            warmup_steps=opts.warmup_ratio, lr_scheduler_type="linear",
            eval_strategy="steps" if has_eval else "no", eval_steps=eval_steps, eval_on_start=has_eval,
            save_strategy="no" if pilot else "steps", save_steps=save_steps, save_total_limit=2,
            load_best_model_at_end=early, metric_for_best_model=best_metric if early else None,
            greater_is_better=greater if early else None,
            logging_strategy="steps", logging_steps=1 if pilot else max(1, self.total_steps // 50),
            report_to=self.tracking.names if self.tracking else "none", run_name=self.out.name, disable_tqdm=True, seed=opts.seed, data_seed=opts.seed,
            bf16=self.precision == "bf16", fp16=self.precision == "fp16", use_cpu=self.device == "cpu",
            train_sampling_strategy="group_by_length" if opts.group_by_length and not opts.pack else "random",
            length_column_name="length", remove_unused_columns=False, label_names=["labels"],
            include_num_input_tokens_seen="non_padding", dataloader_num_workers=0,
            gradient_checkpointing=False,  # enabled on the model already, where PEFT wraps it correctly
            # adapters use every trainable parameter in each forward pass: spare DDP the graph walk
            ddp_find_unused_parameters=False,
        )
        optimizer = _method_optimizer(self.method, self.net, self.settings, self.learning_rate, opts.weight_decay)
        callbacks = []
        if early:
            callbacks.append(_stop_when_stalled(opts.early_stopping_patience) if selection else
                             EarlyStoppingCallback(opts.early_stopping_patience))
        callbacks += self.method.training_callbacks(self.net, self.settings)
        if self.progress:
            callbacks.append(ProgressCallback(after_seconds=self.scoring.expected_seconds() if self.scoring else 0.0))
        if pilot:
            self.pilot_clock = _stop_after(opts.pilot_steps)
            callbacks.append(self.pilot_clock)
        if opts.max_seconds:
            callbacks.append(_stop_at_deadline(self.started + opts.max_seconds))
        compute_metrics, preprocess_logits = classification_metrics if self.task == "seq-cls" else None, None
        if self.task == "token-cls":
            from .evaluation import predicted_ids, token_classification_metrics

            compute_metrics = token_classification_metrics(list(self.data.label2id))
            preprocess_logits = predicted_ids  # keep one id per token, not every label's logit, across the set
        trainer = Trainer(
            model=self.net, args=args, train_dataset=self.data.train,
            eval_dataset=self.data.validation if has_eval else None, data_collator=make_collator(self.task, self.tokenizer),
            processing_class=self.tokenizer, callbacks=callbacks, optimizers=(optimizer, None),
            compute_metrics=compute_metrics, preprocess_logits_for_metrics=preprocess_logits)
        for default in (PrinterCallback, HFProgress):
            trainer.remove_callback(default)
        if self.tracking is not None:
            from .tracking import run_parameters

            self.tracking.attach(trainer, run_parameters(
                opts, method=self.method.name, settings=self.settings.model_dump(mode="json"),
                learning_rate=self.learning_rate, model=self.model_name, task=self.task, precision=self.precision,
                total_steps=self.total_steps))
        return trainer

    def _last_checkpoint(self) -> str | None:
        if not self.resume:
            return None
        directory = self.out / CHECKPOINTS
        last = _last_complete_checkpoint(directory) if directory.is_dir() else None
        if last is None:
            log.warning("no checkpoint to resume from in %s: starting from the beginning", directory)
        return last

    # -- results ---------------------------------------------------------------------------------

    def finish(self, trainer) -> RunRecord | None:
        """Evaluate, then write the outputs and return the record (None in a worker process other
        than the main one, which writes for all)."""
        from .evaluation import generate_samples, learning_warnings, peak_memory_bytes
        from .outputs import hardware, move_into, versions, write_json, write_report

        from .progress import ProgressCallback

        trainer.remove_callback(ProgressCallback)  # training is over; the final evaluation is reported below
        opts, net = self.opts, trainer.model
        eval_seconds = _eval_seconds(trainer.state.log_history)  # before the final evaluation below
        peak = peak_memory_bytes(self.device)
        metrics: dict[str, float | None] = {"train_loss": _final_train_loss(trainer.state.log_history)}
        if trainer.eval_dataset is not None:
            # with several processes, all take part (or all skip: each holds the same log)
            scores = _evaluation_of_current_weights(trainer) or trainer.evaluate()
            metrics["eval_loss_before"] = _first_eval_loss(trainer.state.log_history)
            named = _named_scores(scores, "eval", self.task)
            metrics["eval_loss"] = named.pop("loss")
            metrics.update(named)  # perplexity, or accuracy and macro_f1
        if self.data.test is not None:
            scores = trainer.evaluate(eval_dataset=self.data.test, metric_key_prefix="test")
            metrics.update({f"test_{k}": v for k, v in _named_scores(scores, "test", self.task).items()})
        distributed = None
        if self.data_trace is not None:
            from .launch import gather

            distributed = gather(self.data_trace, net, peak, self.plan)
        if not self.main:
            return None  # the main process writes the outputs
        warnings = learning_warnings(metrics, self.data.label_frequency_loss(), self.data.validation_majority())
        for warning in warnings:
            log.warning(warning)
        if self.loss_before is not None:
            after = _general_loss(net, self.tokenizer)
            metrics["general_text_loss_before"] = self.loss_before
            metrics["general_text_loss_after"] = after
            metrics["forgetting"] = after - self.loss_before
        generation, generated = None, []
        if self.scoring is not None:
            scores, generation, generated = self.scoring.score_after(net, progress=self.progress)
            metrics.update(scores)
        samples = []
        if self.task == "causal-lm" and opts.samples:
            from ..data import sample_prompts

            prompts = sample_prompts(opts.validation or opts.data, n=opts.samples, tokenizer=self.tokenizer)
            samples = [s.model_dump() for s in generate_samples(net, self.tokenizer, prompts)]

        staging = self.out / ".staging"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        _save_model(self.method, net, staging, self.initial_adapter)
        self.tokenizer.save_pretrained(str(staging))
        if generation is not None:
            from .generation import GENERATIONS_FILE, write_generations

            write_generations(staging / GENERATIONS_FILE, generated)
        adapter_bytes = sum(f.stat().st_size for f in staging.glob("*.safetensors"))
        move_into(staging, self.out)

        tokens = trainer.state.num_input_tokens_seen or 0
        record = RunRecord(
            method=self.method.name, settings=self.settings.model_dump(mode="json"), output_dir=str(self.out),
            metrics=metrics, peak_memory_bytes=peak, seconds=time.perf_counter() - self.started,
            model=self.model_name, task=self.task, learning_rate=self.learning_rate, batch_size=opts.batch_size,
            steps=trainer.state.global_step, options=opts.model_dump(mode="json"),
            data=self.data.info.model_dump(mode="json"),
            trainable_params=sum(p.numel() for p in _unique_trainable(net)),
            total_params=sum(p.numel() for p in _unique_params(net)), adapter_bytes=adapter_bytes,
            estimated_peak_memory_bytes=self._estimate(), train_seconds=self.train_seconds,
            init_seconds=self.init_seconds,
            eval_seconds=eval_seconds,
            tokens_per_second=(tokens / (self.train_seconds - eval_seconds)
                               if tokens and self.train_seconds > eval_seconds else None),
            history=_history(trainer.state.log_history), samples=samples,
            hardware=hardware(self.device), versions=versions(), recommendation=self.recommendation,
            distributed=distributed, warnings=warnings, precision=self.precision, generation=generation)
        write_report(self.out, record)
        write_json(self.out / RECORD_FILE, record.model_dump(mode="json"))  # last: marks the run finished
        if opts.profile_store:
            _remember(record)
        if not opts.keep_checkpoints:
            shutil.rmtree(self.out / CHECKPOINTS, ignore_errors=True)
        if self.tracking is not None:
            self.tracking.finish(metrics, record.steps)
        return record

    def measure_pilot(self, trainer) -> PilotResult:
        """A pilot's measurements: the loss curve, step time and peak memory; nothing else is written."""
        from .evaluation import peak_memory_bytes
        from ..profiles import CurvePoint

        state = trainer.state
        losses = [(e["step"], e["loss"]) for e in state.log_history if "loss" in e and "step" in e]
        steps = max(1, state.global_step)
        tokens = state.num_input_tokens_seen or 0
        # the first step pays one-off costs (the optimizer's state, the first graph, warm caches): a step
        # is timed from the end of the first to the end of the last, so that a longer run is priced right
        first = self.pilot_clock.first_step_end if self.pilot_clock is not None else None
        per_step = ((self.train_ended - first) / (steps - 1) if first is not None and steps > 1
                    else self.train_seconds / steps)
        return PilotResult(
            status="ok", steps=steps, curve=[CurvePoint(step=s, train_loss=v) for s, v in losses],
            peak_memory_bytes=peak_memory_bytes(self.device), train_seconds=self.train_seconds,
            seconds_per_step=per_step, total_steps=self.total_steps,
            init_seconds=self.init_seconds,
            tokens_per_second=tokens / self.train_seconds if tokens else None, learning_rate=self.learning_rate,
            trainable_params=sum(p.numel() for p in _unique_trainable(trainer.model)),
            total_params=sum(p.numel() for p in _unique_params(trainer.model)))

    def _estimate(self) -> int | None:
        """The cost model's prediction for this run, kept beside the measurement so both can be compared."""
        from ..costmodel import estimate

        try:
            est = estimate(self.model_name, self.method, settings=self.settings, task=self.task,
                           batch_size=self.opts.batch_size, seq_len=self.data.longest_row(),
                           device=self.device, dtype=self.precision if self.precision != "auto" else None,
                           gradient_checkpointing=self.opts.gradient_checkpointing,
                           num_labels=len(self.data.label2id or {}) or 2, config=self.base_config,
                           strategy=self.plan.strategy, num_processes=self.plan.num_processes,
                           quantize=self.opts.quantize)
        except Exception as exc:  # the estimate is a by-product; a failure must not lose the run
            log.warning("no memory estimate for this run: %s", exc)
            return None
        return est.peak_memory_bytes


def _remember(record) -> None:
    """Append the run to the local profile store, so the next recommendation here knows more."""
    from ..profiles import append, record_from_run

    try:
        append([record_from_run(record)])
    except Exception as exc:  # the store is a by-product; a failure must not lose the finished run
        log.warning("could not add this run to the profile store: %s", exc)


def _stop_at_deadline(deadline: float):
    """A callback that ends training when the next step would pass ``deadline`` (perf_counter
    seconds), leaving time for the final evaluation and the outputs (as long again as one step)."""
    from transformers import TrainerCallback

    class StopAtDeadline(TrainerCallback):
        last = None

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            step = now - self.last if self.last else 0.0
            self.last = now
            if now + 2 * step >= deadline:
                control.should_training_stop = True
            return control

    return StopAtDeadline()


def _stop_when_stalled(patience: int):
    """Early stopping for a task whose checkpoint is chosen by a metric of its own (token classification:
    the entity F1): training stops after ``patience`` evaluations in which neither that metric rose nor
    the validation loss fell. On the metric alone runs would stop too soon: a tagger's entity F1 sits
    at 0 while it first learns that most words are O (its loss falling fast), after a barely trained
    model has found an entity or two by chance."""
    import math

    from transformers import TrainerCallback

    class StopWhenStalled(TrainerCallback):
        best_loss, best_score, stalled = math.inf, None, 0

        def on_evaluate(self, args, state, control, metrics, **kwargs):
            loss, score = metrics.get("eval_loss"), metrics.get(args.metric_for_best_model)
            improved = loss is not None and loss < self.best_loss
            if score is not None and (self.best_score is None or (score > self.best_score if args.greater_is_better
                                                                  else score < self.best_score)):
                improved, self.best_score = True, score
            self.best_loss = min(self.best_loss, loss if loss is not None else math.inf)
            self.stalled = 0 if improved else self.stalled + 1
            if self.stalled >= patience:
                control.should_training_stop = True
            return control

    return StopWhenStalled()


def _stop_after(steps: int):
    """A callback that ends a pilot after ``steps`` while the schedule stays that of the full run,
    so that a pilot sees exactly the start of the run it stands for. It notes when the first step
    ended (``first_step_end``)."""
    from transformers import TrainerCallback

    class StopAfter(TrainerCallback):
        first_step_end: float | None = None  # time.perf_counter() when the first step ended

        def on_step_end(self, args, state, control, **kwargs):
            if self.first_step_end is None:
                self.first_step_end = time.perf_counter()
            if state.global_step >= steps:
                control.should_training_stop = True
            return control

    return StopAfter()


def _method(name: str, settings: dict):
    from ..methods.registry import get_method

    method = get_method(name, source="--method")
    reason = method.unavailable_reason()
    if reason:
        raise MethodUnavailableError(f"method {method.name} cannot run here: {reason}")
    return method, method.settings(settings)


#: what the first Ctrl-C (or SIGTERM) during training says
STOP_NOTE = ("stopping after this step with a checkpoint (`--resume` continues the run; {again} to stop "
             "at once)")


@contextlib.contextmanager
def _stop_gracefully(trainer, *, enabled: bool):
    """The first Ctrl-C or SIGTERM ends training after the current step, with a checkpoint to --resume
    from (KeyboardInterrupt is raised when training has stopped); a second stops at once. (An
    interrupt that lands inside library code, e.g. a destructor, can be swallowed there, so the stop
    is asked of the Trainer rather than raised into it.)"""
    from transformers import TrainerCallback

    from ..processes import deferring_stop, stop_requested

    if not enabled:
        yield
        return

    class StopAfterThisStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if stop_requested():
                control.should_save = True
                control.should_training_stop = True

    callback = StopAfterThisStep()
    trainer.add_callback(callback)
    try:
        with deferring_stop(STOP_NOTE):
            yield
    finally:
        trainer.remove_callback(callback)


def _finished_at(checkpoint: str) -> bool:
    """Whether the run had taken all its steps when ``checkpoint`` was written."""
    import json

    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))
    return bool(state.get("max_steps")) and state.get("global_step", 0) >= state["max_steps"]


def _last_complete_checkpoint(directory: Path) -> str | None:
    """The newest checkpoint the Trainer finished writing. It writes a checkpoint in place and its
    trainer_state.json last, so a process killed mid-save leaves a newer directory without a readable
    one: that directory is removed (the Trainer writes it again when it gets there)."""
    import json

    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    def step(path: Path) -> int:
        tail = path.name.removeprefix(f"{PREFIX_CHECKPOINT_DIR}-")
        return int(tail) if tail.isdigit() else -1

    for path in sorted((p for p in directory.iterdir() if p.is_dir() and step(p) >= 0), key=step, reverse=True):
        try:
            json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            log.warning("%s was being written when the run stopped: it is dropped", path.name)
            shutil.rmtree(path, ignore_errors=True)
            continue
        return str(path)
    return None


def _precision(choice: str, device: str) -> str:
    if choice != "auto":
        if choice != "fp32" and device == "cpu":
            raise BadInputError(f"--precision {choice} needs a GPU; on the CPU autopeft trains in fp32")
        return choice
    if device == "cuda":
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"  # half precision on CPUs is slower than fp32 on most of them


def _method_optimizer(method, net, settings, learning_rate: float, weight_decay: float):
    try:
        return method.optimizer(net, settings, learning_rate=learning_rate, weight_decay=weight_decay)
    except Exception as exc:
        raise PluginError(f"method {method.name} failed to make its optimizer: {type(exc).__name__}: {exc}") from None


def _train_head(net) -> None:
    """A classification head starts random, so it trains with every method (PEFT methods do this
    themselves through modules_to_save; plugins that only pick parameters may not)."""
    for name, param in net.named_parameters():
        parts = name.split(".")
        if ("classifier" in parts or "score" in parts) and "original_module" not in parts:
            param.requires_grad_(True)


def _general_loss(net, tokenizer) -> float:
    from .evaluation import general_text_loss

    return general_text_loss(net, tokenizer)


def _save_model(method, net, directory: Path, initial_adapter: Path | None) -> None:
    """PEFT adapters as PEFT saves them; methods that change the base weights save the whole model.

    Adapters whose initialisation also rewrote the base weights (PiSSA, OLoRA, CorDA, LoRA-GA) are saved as the
    plain LoRA that takes the original base to the trained model, so they load on the untouched base."""
    kwargs = {"path_initial_model_for_weight_conversion": str(initial_adapter)} if initial_adapter else {}
    try:
        net.save_pretrained(str(directory), **kwargs)  # safetensors, for PEFT adapters and full models alike
    except Exception as exc:
        raise PluginError(f"saving the {method.name} model failed: {type(exc).__name__}: {exc}") from None


def _save_initial_adapter(net, directory: Path) -> Path | None:
    """Keep the adapter as initialised (before any step) when its init changed the base weights."""
    from peft import PeftModel

    from ..methods.base import BASE_REWRITING_LORA_INITS

    if not isinstance(net, PeftModel):
        return None
    config = net.peft_config[net.active_adapter]
    init = getattr(config, "init_lora_weights", None)
    if not (isinstance(init, str) and init.startswith(BASE_REWRITING_LORA_INITS)):
        return None
    if not (directory / "adapter_config.json").is_file():  # on --resume it is there from the first start
        config.init_lora_weights = True  # stored so that loading it does not decompose the weights again
        try:
            net.save_pretrained(str(directory))
        finally:
            config.init_lora_weights = init
    return directory


def _unique_params(net):
    seen = {}
    for p in net.parameters():
        seen.setdefault(id(p), p)
    return list(seen.values())


def _unique_trainable(net):
    return [p for p in _unique_params(net) if p.requires_grad]


def _final_train_loss(log_history: list[dict]) -> float | None:
    for entry in reversed(log_history):
        if "train_loss" in entry:
            return entry["train_loss"]
    return None


def _eval_seconds(log_history: list[dict]) -> float:
    """Time spent evaluating during training: not part of training throughput."""
    return sum(e.get("eval_runtime", 0.0) for e in log_history)


def _evaluation_of_current_weights(trainer) -> dict | None:
    """The evaluation the training loop already ran on the weights the model holds now, if it ran one:
    that of the last step (transformers evaluates there at the end of training) or, where the best
    checkpoint was loaded at the end, that of the best step. Evaluating again would repeat a whole
    pass over the validation set for the same numbers."""
    state = trainer.state
    step = state.global_step
    if trainer.args.load_best_model_at_end and state.best_model_checkpoint:
        step = int(Path(state.best_model_checkpoint).name.rpartition("-")[2])
    return next((e for e in reversed(state.log_history) if "eval_loss" in e and e.get("step") == step), None)


def _named_scores(scores: dict, prefix: str, task: str) -> dict[str, float | None]:
    """What an evaluation (its metrics under ``prefix``, as the Trainer names them) reports: the loss,
    and perplexity (causal LM), accuracy and macro-F1 (classification), or entity-level F1, precision
    and recall and the token accuracy (token classification)."""
    from .evaluation import TOKEN_CLASSIFICATION_METRICS, perplexity

    loss = scores.get(f"{prefix}_loss")
    if task == "causal-lm":
        return {"loss": loss, "perplexity": perplexity(loss)}
    if task == "token-cls":
        return {"loss": loss, **{name: scores.get(f"{prefix}_{name}") for name in TOKEN_CLASSIFICATION_METRICS}}
    return {"loss": loss, "accuracy": scores.get(f"{prefix}_accuracy"), "macro_f1": scores.get(f"{prefix}_macro_f1")}


def _first_eval_loss(log_history: list[dict]) -> float | None:
    """The validation loss of the untrained model (evaluated at step 0)."""
    return next((e["eval_loss"] for e in log_history if "eval_loss" in e and e.get("step") == 0), None)


def _history(log_history: list[dict]):
    from .outputs import HistoryPoint

    points: dict[int, dict] = {}
    for entry in log_history:
        step = entry.get("step")
        if step is None or "train_loss" in entry:
            continue
        point = points.setdefault(step, {"step": step})
        for key in ("epoch", "loss", "eval_loss", "eval_accuracy", "eval_f1", "learning_rate"):
            if key in entry:
                point[key] = entry[key]
    return [HistoryPoint(**p) for p in sorted(points.values(), key=lambda p: p["step"])]
