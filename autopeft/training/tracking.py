"""Experiment trackers: a run logs to TensorBoard, MLflow, Weights & Biases, Trackio, or any other
integration transformers' Trainer reports to (``--report-to``), with autopeft's own parameters
(method, its settings, model, learning rate, ...) beside the Trainer's.

Where runs go: TensorBoard writes under the run's output dir (``OUT/logs``, or
``TENSORBOARD_LOGGING_DIR``); MLflow to
``MLFLOW_TRACKING_URI`` (MLflow's own default otherwise); the others as their packages are set up.
Each run is named after its output dir. ``tune`` adds a parent run: the pilots each become a run
under it (MLflow: nested runs; TensorBoard: ``OUT/logs/pilots/<pilot>``) with method, learning rate
and pilot loss, and the fine-tune logs as a run under it too, so a tracker shows why a method won.

Nothing here imports a tracker's package unless a run asks for it.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from ..errors import BadInputError, first_line

log = logging.getLogger("autopeft")

#: the trackers autopeft ships an optional extra for: ``pip install "autopeft[NAME]"``
EXTRAS = ("tensorboard", "mlflow", "wandb", "trackio")
#: the package each other integration of transformers needs
PACKAGES = {"azure_ml": "azureml-core", "comet_ml": "comet-ml", "neptune": "neptune", "codecarbon": "codecarbon",
            "clearml": "clearml", "dagshub": "dagshub", "flyte": "flytekit", "dvclive": "dvclive",
            "swanlab": "swanlab", "kubeflow": "kubeflow-katib"}
#: TensorBoard's event files, under the output dir
LOG_DIR = "logs"
#: how ``tune`` tells its fine-tune process which MLflow run to nest under
PARENT_ENV = "AUTOPEFT_MLFLOW_PARENT_RUN_ID"


def split_trackers(value: Any) -> Any:
    """A list of tracker names from ``"tensorboard,mlflow"`` or a list (lower case, no repeats);
    ``none`` or nothing is the empty list. Anything else is returned for pydantic to refuse."""
    if value is None:
        return []
    if isinstance(value, str):
        parts = value.split(",")
    elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        parts = [p for v in value for p in v.split(",")]
    else:
        return value
    names = list(dict.fromkeys(p.strip().lower() for p in parts if p.strip()))
    return [] if names == ["none"] else names


def check_trackers(names: list[str], source: str = "--report-to") -> list[str]:
    """The trackers ``names`` asks for, each known to transformers and installed (``all``: every one
    installed). Raises BadInputError naming the closest known names, or the extra to install."""
    if not names:
        return []
    from ..errors import close_names, one_of

    from transformers.integrations.integration_utils import (INTEGRATION_TO_CALLBACK,
                                                             get_available_reporting_integrations)

    available = get_available_reporting_integrations()
    if names == ["all"]:
        names = available
    for name in names:  # a misspelt name first: it may be what is meant by one that is not installed
        if name not in INTEGRATION_TO_CALLBACK:
            close = close_names(name, [*INTEGRATION_TO_CALLBACK, "all", "none"])
            hint = f"; did you mean {one_of(close)}?" if close else ""
            raise BadInputError(f"unknown tracker {name!r}{hint} (known: {', '.join(INTEGRATION_TO_CALLBACK)}, all, "
                                f"none)", source=source)
    for name in names:
        if name not in available:
            what = f'"autopeft[{name}]"' if name in EXTRAS else PACKAGES.get(name, name)
            raise BadInputError(f"{name} is not installed here: pip install {what}", source=source)
    if "mlflow" in names:
        _check_mlflow_store(source)
    return list(names)


def _check_mlflow_store(source: str) -> None:
    """Open MLflow's tracking store now (no network call), so that a store that cannot work fails
    before any training, in one line."""
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = mlflow.get_tracking_uri()
    try:
        MlflowClient(uri)
    except Exception as exc:
        raise BadInputError(f"MLflow cannot open its tracking store {uri}: {first_line(exc, 160)} (set "
                            f"MLFLOW_TRACKING_URI to a tracking server, or pip install mlflow for its local "
                            f"sqlite store)", source=source) from None


def scalar(value: Any) -> int | float | str | bool:
    """A parameter as trackers store one: numbers, text and flags as they are, the rest as JSON."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def run_parameters(opts, *, method: str, settings: dict, learning_rate: float, model: str, task: str,
                   precision: str, total_steps: int) -> dict[str, Any]:
    """What decides a run, flat, for a tracker's parameter table (the method's settings as
    ``settings.NAME``)."""
    params = {"method": method, "model": model, "task": task, "data": opts.data, "learning_rate": learning_rate,
              "batch_size": opts.batch_size, "gradient_accumulation_steps": opts.gradient_accumulation_steps,
              "epochs": opts.epochs, "max_steps": opts.max_steps, "total_steps": total_steps,
              "max_length": opts.max_length, "max_examples": opts.max_examples, "precision": precision,
              "gradient_checkpointing": opts.gradient_checkpointing, "quantize": opts.quantize, "seed": opts.seed,
              "output_dir": opts.output_dir}
    params.update({f"settings.{k}": v for k, v in settings.items()})
    return {k: scalar(v) for k, v in params.items() if v is not None}


class RunTracking:
    """The trackers of one training run: what the Trainer is told, and what autopeft logs itself
    (its parameters at the start; the run's final metrics at the end). With MLflow, the run is
    started here rather than by the Trainer, so that evaluations after training land in it too,
    nested under ``tune``'s run (from :data:`PARENT_ENV`) or under a run the caller has open."""

    def __init__(self, names: list[str], out: Path):
        self.names, self.out = list(names), out
        self.parent = os.environ.get(PARENT_ENV) or None
        self.mlflow_run_id: str | None = None

    @property
    def run_name(self) -> str:
        return self.out.name

    @property
    def log_dir(self) -> Path:
        """Where TensorBoard writes: ``OUT/logs``, or ``TENSORBOARD_LOGGING_DIR`` (as the Trainer reads it)."""
        return Path(os.environ.get("TENSORBOARD_LOGGING_DIR") or self.out / LOG_DIR).expanduser()

    def start(self, method: str) -> None:
        """Open the MLflow run (called once the data and the model have loaded: a run refused for bad
        input leaves no run in the tracker)."""
        if "mlflow" not in self.names or self.mlflow_run_id:
            return
        import mlflow

        tags = {"autopeft.output_dir": str(self.out), "autopeft.kind": "fine-tune" if self.parent else "train"}
        if self.parent:
            run = mlflow.start_run(run_name=f"fine-tune {method}", parent_run_id=self.parent, tags=tags)
        else:
            run = mlflow.start_run(run_name=self.run_name, nested=mlflow.active_run() is not None, tags=tags)
        self.mlflow_run_id = run.info.run_id

    def trainer_arguments(self) -> dict[str, Any]:
        """What TrainingArguments gets."""
        return {"report_to": self.names or "none", "run_name": self.run_name}

    def attach(self, trainer, params: dict[str, Any]) -> None:
        """Open the MLflow run, point TensorBoard at ``OUT/logs``, and log ``params`` when training begins."""
        from transformers.integrations.integration_utils import TensorBoardCallback

        self.start(str(params.get("method")))
        board = None
        for callback in trainer.callback_handler.callbacks:
            if isinstance(callback, TensorBoardCallback):
                callback.logging_dir = str(self.log_dir)
                board = callback
        trainer.add_callback(_parameters_callback(self, params, board))

    def finish(self, metrics: dict[str, float | None], step: int) -> None:
        """The run's final metrics (validation, test, forgetting), as ``final/NAME``."""
        values = {f"final/{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        if not values:
            return
        try:
            if self.mlflow_run_id:
                import mlflow

                mlflow.log_metrics(values, step=step, run_id=self.mlflow_run_id)
            if "tensorboard" in self.names:
                from torch.utils.tensorboard import SummaryWriter

                with contextlib.closing(SummaryWriter(log_dir=str(self.log_dir))) as writer:
                    for key, value in values.items():
                        writer.add_scalar(key, value, step)
        except Exception as exc:  # the run is written; a tracker's failure must not lose it
            log.warning("could not log the final metrics to the trackers: %s", first_line(exc))

    def end(self, status: str) -> None:
        if not self.mlflow_run_id:
            return
        import mlflow

        mlflow.flush_async_logging()  # the Trainer logs metrics asynchronously
        active = mlflow.active_run()
        if active is not None and active.info.run_id == self.mlflow_run_id:
            mlflow.end_run(status=status)
        else:
            from mlflow.tracking import MlflowClient

            MlflowClient().set_terminated(self.mlflow_run_id, status=status)


@contextlib.contextmanager
def tracked(names: list[str], out: Path):
    """A :class:`RunTracking` for the run's lifetime (None with no tracker), its tracker runs ended as
    FINISHED, FAILED or KILLED as the run ends."""
    if not names:
        yield None
        return
    with _ended(RunTracking(names, out)) as tracking:
        yield tracking


@contextlib.contextmanager
def _ended(tracking):
    """Yield ``tracking``, then end its tracker runs as FINISHED, FAILED or KILLED (a stop)."""
    status = "FAILED"
    try:
        yield tracking
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracking.end(status)


def _parameters_callback(tracking: RunTracking, params: dict[str, Any], board):
    from transformers import TrainerCallback

    class LogParameters(TrainerCallback):
        """Logs autopeft's parameters once the integrations have set up (they run first)."""

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if not state.is_world_process_zero:
                return
            if tracking.mlflow_run_id:
                _log_mlflow_params(tracking.mlflow_run_id, params, args, model)
            if board is not None and board.tb_writer is not None:
                write_hparams(board.tb_writer, params)
            for name in ("wandb", "trackio"):  # both keep a run config as the Trainer's own callback fills it
                if name in tracking.names:
                    module = importlib.import_module(name)
                    if name != "wandb" or module.run is not None:
                        module.config.update(params, allow_val_change=True)

    return LogParameters()


def _log_mlflow_params(run_id: str, params: dict[str, Any], args, model) -> None:
    """MLflow keeps a parameter's first value: where the Trainer logs the same name (from the training
    arguments or the model config) with another value, autopeft's is logged as ``autopeft.NAME``."""
    from mlflow.tracking import MlflowClient

    theirs = args.to_dict()
    if model is not None and getattr(model, "config", None) is not None:
        theirs = {**model.config.to_dict(), **theirs}
    mine = {(f"autopeft.{k}" if k in theirs and str(theirs[k]) != str(v) else k): str(v)[:250]
            for k, v in params.items()}
    from mlflow.entities import Param

    MlflowClient().log_batch(run_id, params=[Param(k, v) for k, v in mine.items()], synchronous=True)


def write_hparams(writer, params: dict[str, Any], metrics: tuple[str, ...] = ("train/loss", "eval/loss")) -> None:
    """``params`` in TensorBoard's HParams dashboard, in the event file ``writer`` writes (linked to the
    ``metrics`` scalars of the same run)."""
    from torch.utils.tensorboard.summary import hparams

    for summary in hparams({k: scalar(v) for k, v in params.items()}, {m: 0.0 for m in metrics}):
        writer.file_writer.add_summary(summary)
    writer.flush()


class TuneTracking:
    """``tune``'s runs: a parent run for the whole tune, a run under it for each pilot (logged here, from
    the pilot's measurements, so that pilots reused from the cache and pilots that failed show too),
    and the fine-tune's run nested under it in its own process (:meth:`child_env`)."""

    def __init__(self, names: list[str], out: Path, params: dict[str, Any]):
        self.names, self.out, self.params = list(names), out, params
        self.parent_id: str | None = None
        self.experiment_id: str | None = None
        self.pilots: list[tuple[str, dict[str, Any], list[tuple[int, float]], dict[str, float]]] = []
        self.lock = threading.Lock()

    def start(self) -> None:
        if "mlflow" not in self.names:
            return
        import mlflow

        run = mlflow.start_run(run_name=self.out.name, nested=mlflow.active_run() is not None,
                               tags={"autopeft.kind": "tune", "autopeft.output_dir": str(self.out)})
        self.parent_id, self.experiment_id = run.info.run_id, run.info.experiment_id
        mlflow.log_params({k: str(scalar(v))[:250] for k, v in self.params.items() if v is not None})

    def child_env(self) -> dict[str, str]:
        """The environment that nests a fine-tune process's run under this tune's."""
        return {PARENT_ENV: self.parent_id} if self.parent_id else {}

    def pilot(self, config, steps: int, result) -> None:
        """Log one pilot (a :class:`autopeft.choose.pilots.PilotConfig`, its length and its
        :class:`autopeft.training.outputs.PilotResult`) as a run under the tune."""
        from ..profiles import end_loss

        name = f"pilot {config.name}, {steps} steps"
        params = {"method": config.method, "learning_rate": config.learning_rate, "steps": steps,
                  "batch_size": config.batch_size, "gradient_accumulation_steps": config.gradient_accumulation_steps,
                  "gradient_checkpointing": config.gradient_checkpointing, "status": result.status,
                  "reused": result.reused, **{f"settings.{k}": v for k, v in config.settings.items()}}
        curve = [(p.step, p.train_loss) for p in result.curve if p.train_loss is not None]
        final = {"pilot_loss": end_loss(result.curve) if result.curve else None,
                 "peak_memory_bytes": result.peak_memory_bytes, "seconds_per_step": result.seconds_per_step,
                 "seconds": result.seconds}
        final = {k: float(v) for k, v in final.items() if v is not None}
        with self.lock:
            self.pilots.append((name, params, curve, final))
        if self.parent_id:
            try:
                self._mlflow_pilot(name, params, curve, final, result)
            except Exception as exc:  # a tracker's hiccup must not lose the tune
                log.warning("could not log %s to MLflow: %s", name, first_line(exc))

    def _mlflow_pilot(self, name, params, curve, final, result) -> None:
        import time

        from mlflow.entities import Metric, Param, RunTag
        from mlflow.tracking import MlflowClient
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        client = MlflowClient()
        tags = {MLFLOW_PARENT_RUN_ID: self.parent_id, "autopeft.kind": "pilot"}
        if result.error:
            tags["autopeft.error"] = result.error[:5000]
        run = client.create_run(self.experiment_id, run_name=name, tags=tags)
        now = int(time.time() * 1000)
        metrics = [Metric("loss", float(v), now, step) for step, v in curve]
        last = curve[-1][0] if curve else params["steps"]
        metrics += [Metric(k, v, now, last) for k, v in final.items()]
        client.log_batch(run.info.run_id, metrics=metrics,
                         params=[Param(k, str(scalar(v))[:250]) for k, v in params.items()],
                         tags=[RunTag("autopeft.status", result.status)])
        client.set_terminated(run.info.run_id, status="FINISHED" if result.status == "ok" else "FAILED")

    def finish(self, rec, record=None) -> None:
        """What was chosen and why (MLflow: the parent run's parameters and description; TensorBoard: a
        text summary), and the pilots' curves for TensorBoard (written once the output dir is the run's)."""
        chosen = {"chosen_method": rec.chosen, "chosen_learning_rate": rec.learning_rate, "ranking": rec.mode}
        if self.parent_id:
            import mlflow
            from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

            try:
                mlflow.log_params({k: str(v) for k, v in chosen.items() if v is not None})
                mlflow.set_tag(MLFLOW_RUN_NOTE, rec.explanation)
                final = {"pilot_seconds_spent": rec.pilot_seconds}
                if record is not None:
                    final.update({f"final/{k}": float(v) for k, v in record.metrics.items()
                                  if isinstance(v, (int, float))})
                mlflow.log_metrics(final, step=record.steps if record is not None else 0)
            except Exception as exc:
                log.warning("could not log the choice to MLflow: %s", first_line(exc))
        if "tensorboard" in self.names and self.out.is_dir():
            self._tensorboard(chosen, rec.explanation)

    def _tensorboard(self, chosen: dict[str, Any], explanation: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        root = self.out / LOG_DIR
        for name, params, curve, final in self.pilots:
            folder = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in name.removeprefix("pilot "))
            with contextlib.closing(SummaryWriter(log_dir=str(root / "pilots" / folder))) as writer:
                write_hparams(writer, params, metrics=("train/loss", "pilot/pilot_loss"))
                for step, value in curve:
                    writer.add_scalar("train/loss", value, step)
                for key, value in final.items():
                    writer.add_scalar(f"pilot/{key}", value, curve[-1][0] if curve else 0)
        with contextlib.closing(SummaryWriter(log_dir=str(root / "tune"))) as writer:
            write_hparams(writer, {**self.params, **chosen}, metrics=())
            writer.add_text("tune/explanation", explanation)

    def end(self, status: str) -> None:
        if not self.parent_id:
            return
        import mlflow

        active = mlflow.active_run()
        if active is not None and active.info.run_id == self.parent_id:
            mlflow.end_run(status=status)


@contextlib.contextmanager
def tracked_tune(names: list[str], out: Path, params: dict[str, Any]):
    """A :class:`TuneTracking` for the tune's lifetime (None with no tracker)."""
    if not names:
        yield None
        return
    tracking = TuneTracking(names, out, params)
    tracking.start()
    with _ended(tracking):
        yield tracking
