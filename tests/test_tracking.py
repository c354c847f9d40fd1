"""Experiment tracking (``--report-to``): runs read back with the trackers' own readers (TensorBoard's
EventAccumulator, MLflow's client on a local file store), the pilots of ``tune`` as runs under it,
and one line with exit status 2 for a tracker that is unknown, not installed, or cannot open its store."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from autopeft.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SENTIMENT = str(EXAMPLES / "sentiment.jsonl")
# the embedded MiniLM on a small slice of the sentiment examples
SMALL = ["--model", "minilm-l6", "--max-examples", "64", "--max-length", "48", "--batch-size", "8",
         "--no-profile-store"]


def needs(package: str):
    """Skip where a tracker's package is missing (the test extra installs them: pip install -e '.[test]')."""
    return pytest.mark.skipif(importlib.util.find_spec(package) is None,
                              reason=f"{package} is not installed here (pip install -e '.[test]')")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """A local MLflow file store (mlflow-skinny has no SQL store); returns its client."""
    pytest.importorskip("mlflow", reason="mlflow is not installed here (pip install -e '.[test]')")
    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return MlflowClient(uri)


def _hparams(folder: Path) -> dict:
    """The hyperparameters TensorBoard's HParams dashboard shows for the run in ``folder``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(str(folder))
    events.Reload()
    for content in events.PluginTagToContent("hparams").values():
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        if data.HasField("session_start_info"):
            values = data.session_start_info.hparams
            return {k: v.string_value if v.HasField("string_value") else
                    v.bool_value if v.HasField("bool_value") else v.number_value for k, v in values.items()}
    return {}


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.mark.slow
@needs("tensorboard")
def test_train_reports_to_tensorboard_in_the_output_dir(tmp_path):
    out = tmp_path / "run"
    result = run("train", SENTIMENT, *SMALL, "--max-steps", "6", "--learning-rate", "1e-3", "-o", out,
                 "--report-to", "tensorboard")
    assert result.exit_code == 0, result.output
    scalars = _scalars(out / "logs")
    assert [step for step, _ in scalars["train/loss"]] == [1, 2, 3, 4, 5, 6]  # the loss of every step
    assert scalars["eval/loss"] and scalars["final/accuracy"]
    hparams = _hparams(out / "logs")
    assert hparams["method"] == "lora" and hparams["learning_rate"] == pytest.approx(1e-3)
    assert hparams["model"] == "minilm-l6" and hparams["task"] == "seq-cls"
    import json

    record = json.loads((out / "run.json").read_text())
    assert hparams["settings.r"] == record["settings"]["r"] and hparams["total_steps"] == record["steps"] == 6


@pytest.mark.slow
def test_tune_reports_to_mlflow_a_run_with_a_nested_run_per_pilot_and_one_for_the_fine_tune(tmp_path, mlflow_store):
    out = tmp_path / "tuned"
    result = run("tune", SENTIMENT, *SMALL, "--max-steps", "6", "--methods", "lora,ia3", "--pilot-budget", "40s",
                 "-o", out, "--report-to", "mlflow,tensorboard")
    assert result.exit_code == 0, result.output
    pilots = re.findall(r"pilot (\S+ lr=\S+): (\d+) steps", result.stderr)
    assert len(pilots) >= 2

    runs = mlflow_store.search_runs(experiment_ids=["0"])
    parent = next(r for r in runs if r.info.run_name == "tuned")
    assert "mlflow.parentRunId" not in parent.data.tags and parent.info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    pilot_runs = {r.info.run_name: r for r in children if r.data.tags.get("autopeft.kind") == "pilot"}
    assert sorted(pilot_runs) == sorted(f"pilot {name}, {steps} steps" for name, steps in pilots)
    for name, steps in pilots:
        pilot = pilot_runs[f"pilot {name}, {steps} steps"]
        assert pilot.data.params["method"] == name.split()[0]
        assert float(pilot.data.params["learning_rate"]) == float(name.split("lr=")[1])
        assert "pilot_loss" in pilot.data.metrics
        history = mlflow_store.get_metric_history(pilot.info.run_id, "loss")
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(1, int(steps) + 1))

    import json

    record = json.loads((out / "run.json").read_text())
    fine_tune = next(r for r in children if r.data.tags.get("autopeft.kind") == "fine-tune")
    assert fine_tune.info.run_name == f"fine-tune {record['method']}" and fine_tune.info.status == "FINISHED"
    assert fine_tune.data.params["method"] == record["method"]
    assert len(mlflow_store.get_metric_history(fine_tune.info.run_id, "loss")) == 6
    assert fine_tune.data.metrics["final/accuracy"] == pytest.approx(record["metrics"]["accuracy"])
    assert parent.data.params["chosen_method"] == record["method"]
    assert parent.data.tags["mlflow.note.content"] == record["recommendation"]["explanation"]

    # TensorBoard: the fine-tune in OUT/logs, each pilot beside it
    folders = sorted(p.name for p in (out / "logs" / "pilots").iterdir())
    assert len(folders) == len(pilots)
    first = _scalars(out / "logs" / "pilots" / folders[0])
    assert first["train/loss"] and first["pilot/pilot_loss"]
    assert _hparams(out / "logs" / "pilots" / folders[0])["method"] in ("lora", "ia3")


def test_pilots_that_failed_or_were_reused_are_logged_under_the_tune_too(tmp_path, mlflow_store):
    from autopeft.choose.pilots import PilotConfig
    from autopeft.profiles import CurvePoint
    from autopeft.training.outputs import PilotResult
    from autopeft.training.tracking import tracked_tune

    with tracked_tune(["mlflow"], tmp_path / "t", {"data": "d.jsonl"}) as tracking:
        config = PilotConfig(name="lora lr=0.001", method="lora", learning_rate=1e-3, batch_size=4)
        tracking.pilot(config, 3, PilotResult(status="ok", steps=3, reused=True, curve=[
            CurvePoint(step=s, train_loss=v) for s, v in ((1, 2.0), (2, 1.5), (3, 1.25))]))
        tracking.pilot(config.model_copy(update={"name": "oft lr=0.01", "method": "oft"}), 3,
                       PilotResult(status="oom", error="stopped at 3 GB"))
    runs = {r.info.run_name: r for r in mlflow_store.search_runs(experiment_ids=["0"])}
    parent = runs.pop("t")
    assert parent.info.status == "FINISHED" and parent.data.params["data"] == "d.jsonl"
    assert {r.data.tags["mlflow.parentRunId"] for r in runs.values()} == {parent.info.run_id}
    ok, oom = runs["pilot lora lr=0.001, 3 steps"], runs["pilot oft lr=0.01, 3 steps"]
    assert ok.data.params["reused"] == "True" and ok.info.status == "FINISHED"
    assert [m.value for m in sorted(mlflow_store.get_metric_history(ok.info.run_id, "loss"), key=lambda m: m.step)] \
        == [2.0, 1.5, 1.25]
    assert oom.info.status == "FAILED" and oom.data.tags["autopeft.error"] == "stopped at 3 GB"


def _one_line(result, *parts):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for part in parts:
        assert part in lines[0], lines[0]


def test_an_unknown_tracker_is_refused_with_the_closest_names(tmp_path):
    _one_line(run("train", SENTIMENT, "--report-to", "tensorbord", "-o", tmp_path / "x"),
              "--report-to: unknown tracker 'tensorbord'; did you mean 'tensorboard'?")
    _one_line(run("tune", SENTIMENT, "--report-to", "mlflow,wandbb", "-o", tmp_path / "x"),
              "unknown tracker 'wandbb'; did you mean 'wandb'")
    assert not (tmp_path / "x").exists()


def test_a_tracker_whose_package_is_missing_names_the_extra_to_install(tmp_path, monkeypatch):
    from transformers.integrations import integration_utils

    monkeypatch.setattr(integration_utils, "get_available_reporting_integrations", lambda: ["tensorboard"])
    _one_line(run("train", SENTIMENT, "--report-to", "tensorboard,wandb", "-o", tmp_path / "x"),
              '--report-to: wandb is not installed here: pip install "autopeft[wandb]"')


@needs("mlflow")
def test_an_mlflow_store_that_cannot_open_is_refused_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # MLflow 3 refuses a file store without it
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient((tmp_path / "mlruns").as_uri())
        pytest.skip("this MLflow opens a file store without MLFLOW_ALLOW_FILE_STORE")
    except Exception:
        pass
    import autopeft

    with pytest.raises(autopeft.BadInputError, match="MLflow cannot open its tracking store"):
        autopeft.train(SENTIMENT, output_dir=str(tmp_path / "x"), report_to="mlflow")
    _one_line(run("train", SENTIMENT, "--report-to", "mlflow", "-o", tmp_path / "x"), "MLflow cannot open")
    assert not (tmp_path / "x").exists()


def test_inside_an_mlflow_run_of_the_caller_the_tune_nests_under_it(tmp_path, mlflow_store):
    import mlflow

    from autopeft.training.tracking import PARENT_ENV, tracked_tune

    with mlflow.start_run(run_name="my sweep") as outer:
        with tracked_tune(["mlflow"], tmp_path / "t", {}) as tracking:
            assert tracking.child_env() == {PARENT_ENV: tracking.parent_id}
        assert mlflow.active_run().info.run_id == outer.info.run_id  # the caller's run is still theirs
    tune = next(r for r in mlflow_store.search_runs(experiment_ids=["0"]) if r.info.run_name == "t")
    assert tune.data.tags["mlflow.parentRunId"] == outer.info.run_id
