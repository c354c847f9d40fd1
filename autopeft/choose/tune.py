"""``tune``: recommend, then fine-tune the winner in a child process watched as the pilots are, so that
``--max-vram`` bounds it too; and ``tune --resume``, which continues that fine-tune with the method
it had chosen."""

from __future__ import annotations

import logging
from typing import Callable

from ..errors import AutopeftError, BadInputError
from ..training.outputs import holding_output_dir
from .constraints import Constraints
from .recommend import DEFAULT_PILOT_FRACTION, MIN_CHOOSE_SECONDS, Recommendation, recommend

log = logging.getLogger("autopeft")


@holding_output_dir("tune")  # from the first pilot to the last file: a second command into it refuses at once
def tune(data: str | None, *, output_dir: str, overwrite: bool = False, resume: bool = False,
         constraints: Constraints | None = None,
         objective: str | None = None, target_gpu: str | None = None, pilot: bool = True,
         pilot_fraction: float | None = None, pilot_seconds: float | None = None,
         progress: bool = True, say: Callable[[str], None] | None = None, **options):
    """Recommend, then fine-tune the winner into ``output_dir`` (the outputs of ``train``, with the
    recommendation in run.json and a Pareto plot in the report). The fine-tune runs in a watched
    process, so that ``max_vram`` bounds it as it bounds the pilots. Returns (RunRecord, Recommendation).

    :param options: :class:`autopeft.training.TrainOptions` fields; ``learning_rate`` given here
        replaces the one the pilots found.
    :param resume: continue the interrupted fine-tune in ``output_dir`` with the method already
        chosen. (A tune interrupted before its fine-tune began is simply run again: its finished
        pilots are kept on this machine and reused.)
    """
    from pathlib import Path

    from ..training.outputs import check_output_dir

    constraints = constraints or Constraints()
    out = Path(output_dir).expanduser()
    if resume:
        return _resume_tune(out, progress)
    check_output_dir(out, resume=False, overwrite=overwrite)
    if options.get("metrics"):  # before the pilots, not after them
        from ..training.generation import check_request

        check_request(data, options["metrics"], options.get("task"))
    from ..training.tracking import check_trackers, split_trackers, tracked_tune

    trackers = check_trackers(split_trackers(options.get("report_to")), source="report_to")
    with tracked_tune(trackers, out, _tune_parameters(data, options, constraints, objective, target_gpu,
                                                      pilot_fraction, pilot_seconds, pilot)) as tracking:
        return _choose_and_train(data, out, overwrite, constraints, objective, target_gpu, pilot, pilot_fraction,
                                 pilot_seconds, progress, say, options, tracking)


def _tune_parameters(data, options, constraints, objective, target_gpu, pilot_fraction, pilot_seconds,
                     pilot) -> dict:
    """What the tune's own tracker run records: the data, the options and the constraints it was given."""
    given = {k: v for k, v in options.items() if v is not None and k != "report_to"}
    limits = {k: v for k, v in constraints.model_dump(mode="json").items() if v not in (None, [], ())}
    budget = ({"pilot_seconds": pilot_seconds} if pilot_seconds else
              {"pilot_fraction": pilot_fraction or DEFAULT_PILOT_FRACTION, "pilot_floor_seconds": 0 if pilot_fraction
               else MIN_CHOOSE_SECONDS})
    return {"data": data, **given, **limits, "objective": objective or "quality", "target_gpu": target_gpu,
            "pilot": pilot, **budget}


def _choose_and_train(data, out, overwrite, constraints, objective, target_gpu, pilot, pilot_fraction,
                      pilot_seconds, progress, say, options, tracking):
    import inspect

    from ..training.options import TrainOptions

    # every training option recommend takes is handed on, so a new one needs no second list to reach the pilots
    passed = set(inspect.signature(recommend).parameters) & set(TrainOptions.model_fields) - {"data"}
    rec = recommend(data, constraints=constraints, objective=objective, target_gpu=target_gpu, pilot=pilot,
                    pilot_fraction=pilot_fraction, pilot_seconds=pilot_seconds, say=say,
                    on_pilot=tracking.pilot if tracking else None,
                    **{k: v for k, v in options.items() if k in passed and v is not None})
    # the fit's micro-batch, accumulation and checkpointing; a learning rate the user gave wins over the pilots'
    chosen = {"method": rec.chosen, "settings": rec.settings, "batch_size": rec.batch_size,
              "gradient_accumulation_steps": rec.gradient_accumulation_steps,
              "gradient_checkpointing": rec.gradient_checkpointing or bool(options.get("gradient_checkpointing")),
              "learning_rate": options.get("learning_rate") or rec.learning_rate}
    train_options = {**options, **{k: v for k, v in chosen.items() if v is not None}}
    if constraints.time_budget:
        train_options["max_seconds"] = max(1.0, constraints.time_budget - rec.seconds)
    (say or log.info)(f"fine-tuning with {rec.chosen} into {out}")
    record = _fine_tune(rec, out, data=data, overwrite=overwrite, progress=progress, options=train_options,
                        max_memory=constraints.max_vram, env=tracking.child_env() if tracking else None)
    if tracking:
        tracking.finish(rec, record)
    hint = _runner_up_hint(rec, data) if record.warnings else None
    if hint:
        (say or log.warning)(hint)
    return record, rec


def _runner_up_hint(rec: Recommendation, data: str) -> str | None:
    """After a fine-tune that learned little: the command that trains the best other method instead."""
    other = next((c for c in rec.candidates
                  if c.feasible and c.method != rec.chosen and c.predicted_score is not None), None)
    if other is None:
        return None
    import shlex

    rate = other.measured.learning_rate if other.measured else None
    command = (f"autopeft train {shlex.quote(str(data))} --method {other.method}"
               + (f" --learning-rate {rate:g}" if rate else ""))
    return (f"{rec.chosen}'s fine-tune learned little (warning above); the runner-up was {other.method}: "
            f"`{command} -o DIR` trains it")


def _resume_tune(out, progress: bool):
    from ..training.outputs import OPTIONS_FILE, RECOMMENDATION_FILE, RECORD_FILE

    if not (out / OPTIONS_FILE).is_file():
        raise BadInputError("nothing to resume: the fine-tune had not started. Run the same tune command again "
                            "(without --resume): the pilots it finished are reused", source=str(out))
    if (out / RECORD_FILE).is_file():
        raise BadInputError("this run is finished; nothing to resume", source=str(out))
    if not (out / RECOMMENDATION_FILE).is_file():
        raise BadInputError(f"not a tune run (no {RECOMMENDATION_FILE}); continue it with "
                            f"`autopeft train -o {out} --resume`", source=str(out))
    rec = Recommendation.model_validate_json((out / RECOMMENDATION_FILE).read_text(encoding="utf-8"))
    max_memory = Constraints.model_validate(rec.constraints).max_vram
    return _fine_tune(rec, out, data=None, overwrite=False, progress=progress, options={}, max_memory=max_memory,
                      resume=True), rec


def _fine_tune(rec: Recommendation, out, *, data, overwrite: bool, progress: bool, options: dict,
               max_memory: int | None, resume: bool = False, env: dict[str, str] | None = None):
    """Train (or resume) the chosen method in a watched process, held to ``max_memory`` like the pilots."""
    import json
    import shlex
    import tempfile
    from pathlib import Path

    from ..training.outputs import RECORD_FILE, RunRecord
    from ..processes import FINE_TUNE_GRACE_SECONDS, run_watched, stop_note

    # on Ctrl-C or SIGTERM the child finishes its step and checkpoints (see run.STOP_NOTE), as train does
    note = (f"stopping the fine-tune after this step with a checkpoint (`autopeft tune --resume -o "
            f"{shlex.quote(str(out))}` continues it; {{again}} to stop at once)")
    with tempfile.TemporaryDirectory(prefix="autopeft-tune-") as tmp, stop_note(note):
        error_path = Path(tmp) / "error.txt"
        peak, failure = run_watched(_train_child, (data, str(out), overwrite, progress, rec.model_dump(mode="json"),
                                                   options, str(error_path), resume),
                                    max_memory=max_memory if not rec.device.planned else None, env=env,
                                    grace=FINE_TUNE_GRACE_SECONDS)
        if error_path.is_file():
            kind, _, message = error_path.read_text().partition("\n")
            raise (BadInputError(message) if kind == "bad-input" else AutopeftError(message))
    if failure is not None:
        raise AutopeftError(f"the fine-tune with {rec.chosen} failed ({failure[0]}): {failure[1]}")
    return RunRecord.model_validate(json.loads((out / RECORD_FILE).read_text()))


def _train_child(data, output_dir, overwrite, progress, recommendation, options, error_path, resume=False) -> None:
    from pathlib import Path

    from ..errors import first_line
    from ..logs import log_to_stderr, quiet_libraries
    from ..training.run import train

    quiet_libraries()
    log_to_stderr()
    try:
        # the tune process holds the output directory for the whole command, this one included
        train(data, output_dir=output_dir, overwrite=overwrite, resume=resume, progress=progress,
              recommendation=recommendation, lock_output=False, **options)
    except BadInputError as exc:
        Path(error_path).write_text(f"bad-input\n{exc}")
    except Exception as exc:  # reported by the parent as one line
        Path(error_path).write_text(f"error\n{type(exc).__name__}: {first_line(exc)}")
