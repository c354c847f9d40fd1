"""Killing autopeft with SIGKILL (no chance to clean up) in the middle of its work, as a user's
machine or a scheduler would, then starting it again: nothing finished is redone or lost."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from autopeft.training.outputs import RunRecord

pytestmark = pytest.mark.slow  # every test here trains or starts processes

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(autouse=True)
def children_tmpdir(monkeypatch):
    """A killed process leaves its temporary dirs behind: here they go to a dir removed afterwards,
    not the machine's /tmp (a short path: a fork server's socket path must stay under 108 bytes)."""
    path = tempfile.mkdtemp(prefix="autopeft-test-")
    monkeypatch.setenv("TMPDIR", path)
    yield
    shutil.rmtree(path, ignore_errors=True)


def _start(args: list[str]) -> subprocess.Popen:
    # a session of its own: the kill reaches the pilot and training processes too
    return subprocess.Popen([sys.executable, "-m", "autopeft", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"it ended before the kill: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, "the moment to kill never came"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_a_killed_tune_keeps_its_pilots_and_its_fine_tune_resumes(trainable_llama, tmp_path):
    home = Path(os.environ["AUTOPEFT_HOME"])  # this test's own (see conftest)
    cache = home / "pilots"
    out = tmp_path / "tuned"
    tune = ["tune", str(EXAMPLES / "instructions.jsonl"), "-m", str(trainable_llama), "--max-length", "64",
            "--max-examples", "40", "-b", "4", "--max-steps", "400", "--save-steps", "20", "--eval-steps", "20",
            "--early-stopping", "0", "--methods", "lora,ia3,vera", "--pilot-budget", "40s", "-o", str(out)]

    # 1. killed among its pilots: the finished ones are kept
    _kill_when(_start(tune), lambda: len(list(cache.glob("*.json"))) >= 2)
    finished = len(list(cache.glob("*.json")))
    assert not out.exists()  # the fine-tune had not begun: nothing half-written

    # 2. the same command again reuses them; killed this time during its fine-tune, after a checkpoint
    again = _start(tune)
    _kill_when(again, lambda: any((out / "checkpoints").glob("checkpoint-*")))
    reused = again.stderr.read().count("done before, reused")
    assert reused >= finished
    assert not (out / "run.json").exists()

    # 3. --resume continues that fine-tune from its checkpoint with the method chosen before
    chosen = json.loads((out / "recommendation.json").read_text())["chosen"]
    done = subprocess.run([sys.executable, "-m", "autopeft", "tune", "--resume", "-o", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    record = RunRecord.model_validate_json((out / "run.json").read_text())
    assert record.method == chosen and record.steps == 400
    assert record.recommendation["chosen"] == chosen
    assert any(p.step == 0 and p.eval_loss is not None for p in record.history)  # history from before the kill


def _train_args(model, out, *extra):
    return ["train", str(EXAMPLES / "instructions.jsonl"), "-m", str(model), "--max-length", "64",
            "--max-steps", "400", "--save-steps", "20", "--eval-steps", "20", "--early-stopping", "0",
            "-o", str(out), *extra]


def test_ctrl_c_during_training_is_one_line_and_resume_finishes_the_run(trainable_llama, tmp_path):
    out = tmp_path / "run"
    proc = _start(_train_args(trainable_llama, out))
    deadline = time.monotonic() + 180
    while not any((out / "checkpoints").glob("checkpoint-*")):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends to the foreground group
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    # it stopped after the step it was in, with a checkpoint there to resume from (that step may still
    # report its progress line, on a slow machine)
    lines = [line for line in stderr.strip().splitlines() if not line.startswith("autopeft: step ")]
    assert lines[-2:] == [
        "autopeft: interrupted: stopping after this step with a checkpoint (`--resume` continues the run; "
        "Ctrl-C again to stop at once)", "autopeft: interrupted"], stderr[-3000:]
    assert "Traceback" not in stderr and not (out / "run.json").exists()
    newest = max((out / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert (newest / "trainer_state.json").is_file()  # written whole, not cut off by the signal
    done = subprocess.run([sys.executable, "-m", "autopeft", "train", "--resume", "-o", str(out), "--json"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert RunRecord.model_validate_json((out / "run.json").read_text()).steps == 400


def test_a_run_stopped_while_writing_its_outputs_resumes_to_complete_loadable_ones(trainable_llama, tmp_path,
                                                                                    monkeypatch):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    import autopeft
    from autopeft.training import outputs

    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        def stopped(*args, **kwargs):  # after the adapter was moved into place, before the report
            raise KeyboardInterrupt

        patch.setattr(outputs, "write_report", stopped)
        with pytest.raises(KeyboardInterrupt):
            autopeft.train(str(EXAMPLES / "instructions.jsonl"), output_dir=str(out), model=str(trainable_llama),
                           max_length=64, max_steps=6, save_steps=2, eval_steps=2, samples=0, forgetting=False,
                           progress=False)
    assert (out / "adapter_model.safetensors").is_file() and not (out / "run.json").exists()
    record = autopeft.train(output_dir=str(out), resume=True, progress=False)
    assert record.steps == 6 and (out / "run.json").is_file() and (out / "report.md").is_file()
    assert not list(out.glob(".*tmp*")) and not (out / ".staging").exists()
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(trainable_llama)), str(out))
