"""Stopping autopeft with Ctrl-C (SIGINT to the whole process group, as a terminal sends it) or SIGTERM
(to the main process, as Slurm or Kubernetes send it; SIGKILL follows if it does not end) in every phase
of its work, through the real CLI in a session of its own: it stops within seconds with exit status
128 + the signal's number, keeps what it finished (pilots for the rerun, a fine-tune's checkpoint for
``--resume``, a bench's runs) and leaves no process of its session behind, even when killed outright."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest

from autopeft.training.outputs import RunRecord

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
#: how long the processes of a stopped command may take to be gone
GONE_WITHIN = 10.0


@pytest.fixture(autouse=True)
def children_tmpdir(monkeypatch):
    """Temporary dirs of processes killed outright go to a dir removed afterwards (a short path: a fork
    server's socket path must stay under 108 bytes)."""
    path = tempfile.mkdtemp(prefix="autopeft-test-")
    monkeypatch.setenv("TMPDIR", path)
    yield
    shutil.rmtree(path, ignore_errors=True)


class Command:
    """``python -m autopeft ARGS`` in a session of its own, its stderr read line by line as it comes."""

    def __init__(self, args: list[str]):
        self.proc = subprocess.Popen([sys.executable, "-m", "autopeft", *args], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, ready, timeout: float = 240) -> None:
        """Until ``ready()`` (or a stderr line containing it, if a string) holds, while the command runs."""
        check = (lambda: any(ready in line for line in self.lines)) if isinstance(ready, str) else ready
        deadline = time.monotonic() + timeout
        while not check():
            assert self.proc.poll() is None, f"it ended first (status {self.proc.returncode}):\n{self.stderr[-3000:]}"
            assert time.monotonic() < deadline, f"never came:\n{self.stderr[-3000:]}"
            time.sleep(0.02)

    def interrupt(self) -> None:
        """Ctrl-C in a terminal: SIGINT to every process of the foreground group."""
        os.killpg(self.proc.pid, signal.SIGINT)

    def terminate(self) -> None:
        """A scheduler's stop: SIGTERM to the command's process only."""
        os.kill(self.proc.pid, signal.SIGTERM)

    def kill(self) -> None:
        """No chance to clean up: SIGKILL to the command's process."""
        os.kill(self.proc.pid, signal.SIGKILL)

    def finish(self, timeout: float = 60) -> int:
        """Wait for the command's exit; then no process of its session may be left (each one found is
        killed so that it cannot outlive the test, and reported)."""
        try:
            status = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            pytest.fail(f"still running {timeout:.0f} s after the signal:\n{self.stderr[-3000:]}")
        self.reader.join(5)
        left = session_processes(self.proc.pid, within=GONE_WITHIN)
        for proc in left:
            proc.kill()
        assert not left, f"left running: {[' '.join(p.cmdline())[:100] for p in left]}"
        return status


def session_processes(session: int, within: float) -> list[psutil.Process]:
    """The live (not zombie) processes of ``session`` still there after up to ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        found = []
        for proc in psutil.process_iter():
            try:
                if os.getsid(proc.pid) == session and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
            except (OSError, psutil.Error):
                continue
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def _tune(model, out, *extra) -> list[str]:
    # checkpoints only when a stop asks for one: --save-steps past the last step
    return ["tune", str(EXAMPLES / "instructions.jsonl"), "-m", str(model), "--max-length", "64", "--max-examples",
            "40", "-b", "4", "--max-steps", "200", "--save-steps", "1000", "--eval-steps", "1000",
            "--early-stopping", "0", "--methods", "lora,ia3", "-o", str(out), *extra]


def _checkpoints(out: Path) -> list[int]:
    return sorted(int(p.name.rpartition("-")[2]) for p in (out / "checkpoints").glob("checkpoint-*")
                  if (p / "trainer_state.json").is_file())


def _no_traceback(command: Command) -> None:
    assert "Traceback" not in command.stderr and "Exception ignored" not in command.stderr, command.stderr[-3000:]


@pytest.mark.slow
def test_ctrl_c_among_the_pilots_and_sigterm_in_the_fine_tune_stop_tune_and_lose_nothing(trainable_llama, tmp_path):
    cache = Path(os.environ["AUTOPEFT_HOME"]) / "pilots"  # this test's own (see conftest)
    out = tmp_path / "tuned"
    args = _tune(trainable_llama, out, "--pilot-budget", "15s")

    # 1. Ctrl-C while a pilot runs, after the first finished: it stops, the finished pilot is kept
    first = Command(args)
    first.wait_for("pilots will take about")  # the calibration pilot is done; the next one is starting
    time.sleep(1.0)
    finished = len(list(cache.glob("*.json")))
    first.interrupt()
    assert first.finish() == 130
    assert first.lines[-2:] == ["autopeft: interrupted: stopping the pilots; the finished ones are kept (the same "
                                "command again reuses them)", "autopeft: interrupted"], first.stderr[-3000:]
    _no_traceback(first)
    assert finished >= 1 and len(list(cache.glob("*.json"))) >= finished
    assert not out.exists()  # the fine-tune had not begun: nothing half-written

    # 2. the same command again reuses them; SIGTERM during its fine-tune checkpoints the step it was at
    again = Command(args)
    again.wait_for("autopeft: step ")
    again.terminate()
    assert again.finish() == 143
    assert again.lines[-1] == "autopeft: terminated", again.stderr[-3000:]
    assert any(line.startswith("autopeft: terminated: stopping the fine-tune after this step with a checkpoint "
                               f"(`autopeft tune --resume -o {out}` continues it") for line in again.lines)
    _no_traceback(again)
    assert sum("done before, reused" in line for line in again.lines) >= finished
    assert _checkpoints(out) and not (out / "run.json").exists()  # the only checkpoint: the stop's

    # 3. --resume continues from it with the method chosen before
    chosen = json.loads((out / "recommendation.json").read_text())["chosen"]
    done = subprocess.run([sys.executable, "-m", "autopeft", "tune", "--resume", "-o", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    record = RunRecord.model_validate_json((out / "run.json").read_text())
    assert record.method == chosen and record.steps == 200


@pytest.mark.slow
@pytest.mark.parametrize("command", ["tune", "recommend"])
def test_sigterm_among_the_pilots_stops_the_command_and_ends_the_pilot(command, trainable_llama, tmp_path):
    """SIGTERM reaches only the main process: it must end the pilot process itself."""
    out = tmp_path / "tuned"
    args = _tune(trainable_llama, out, "--pilot-budget", "15s")
    if command == "recommend":
        args = ["recommend", str(EXAMPLES / "instructions.jsonl"), "-m", str(trainable_llama), "--max-length", "64",
                "--max-examples", "40", "-b", "4", "--max-steps", "200", "--methods", "lora,ia3",
                "--pilot-budget", "15s"]
    tune = Command(args)
    tune.wait_for("pilots will take about")  # the calibration is done; the next pilot is starting
    time.sleep(1.0)
    tune.terminate()
    assert tune.finish() == 143
    assert tune.lines[-1] == "autopeft: terminated", tune.stderr[-3000:]
    _no_traceback(tune)
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["the data is read", "the methods are screened"])
def test_ctrl_c_before_the_pilots_stops_tune_at_once(phase, trainable_llama, tmp_path):
    out = tmp_path / "tuned"
    tune = Command(_tune(trainable_llama, out))
    tune.wait_for("alpaca format" if phase == "the data is read" else "methods fit the constraints")
    tune.interrupt()
    assert tune.finish(timeout=20) == 130
    assert tune.lines[-1] == "autopeft: interrupted"
    _no_traceback(tune)
    assert not out.exists()


@pytest.mark.slow
def test_ctrl_c_in_the_fine_tune_checkpoints_and_a_second_stops_at_once(trainable_llama, tmp_path):
    out = tmp_path / "tuned"
    tune = Command(_tune(trainable_llama, out, "--no-pilot"))
    tune.wait_for("autopeft: step ")
    tune.interrupt()
    assert tune.finish() == 130
    assert tune.lines[-1] == "autopeft: interrupted", tune.stderr[-3000:]
    assert any("Ctrl-C again to stop at once" in line for line in tune.lines)
    _no_traceback(tune)
    assert _checkpoints(out) and not (out / "run.json").exists()

    shutil.rmtree(out)
    twice = Command(_tune(trainable_llama, out, "--no-pilot"))
    twice.wait_for("autopeft: step ")
    twice.interrupt()
    time.sleep(0.05)
    twice.interrupt()
    started = time.monotonic()
    assert twice.finish(timeout=30) == 130, twice.stderr[-3000:]
    assert time.monotonic() - started < 15
    assert twice.lines[-1] == "autopeft: interrupted", twice.stderr[-3000:]


@pytest.mark.slow
def test_a_tune_killed_outright_leaves_no_process(trainable_llama, tmp_path):
    """SIGKILL gives autopeft no chance to clean up: its fork server and fine-tune die with it."""
    out = tmp_path / "tuned"
    tune = Command(_tune(trainable_llama, out, "--no-pilot"))
    tune.wait_for("autopeft: step ")
    assert len(session_processes(tune.proc.pid, within=0)) >= 3  # the command, its fork server, the fine-tune
    tune.kill()
    assert tune.finish() == -signal.SIGKILL


def _train_args(model, out, *extra):
    return ["train", str(EXAMPLES / "instructions.jsonl"), "-m", str(model), "--max-length", "64",
            "--max-steps", "200", "--save-steps", "1000", "--eval-steps", "1000", "--early-stopping", "0",
            "-o", str(out), *extra]


@pytest.mark.slow
def test_sigterm_to_train_checkpoints_like_ctrl_c_and_resume_finishes_the_run(trainable_llama, tmp_path):
    out = tmp_path / "run"
    train = Command(_train_args(trainable_llama, out))
    train.wait_for("autopeft: step ")
    train.terminate()
    assert train.finish() == 143
    lines = [line for line in train.lines if not line.startswith("autopeft: step ")]
    assert lines[-2:] == [
        "autopeft: terminated: stopping after this step with a checkpoint (`--resume` continues the run; "
        "SIGTERM again to stop at once)", "autopeft: terminated"], train.stderr[-3000:]
    _no_traceback(train)
    assert _checkpoints(out) and not (out / "run.json").exists()
    done = subprocess.run([sys.executable, "-m", "autopeft", "train", "--resume", "-o", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert RunRecord.model_validate_json((out / "run.json").read_text()).steps == 200


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["interrupt", "terminate", "kill"])
def test_a_stopped_run_on_several_processes_leaves_none_of_them(stop, trainable_llama, tmp_path):
    """The launcher and its workers end too, even when the command is killed outright; the run
    resumes from its last checkpoint."""
    out = tmp_path / "run"
    train = Command(_train_args(trainable_llama, out, "--num-processes", "2", "--save-steps", "5"))
    train.wait_for(lambda: _checkpoints(out) if (out / "checkpoints").is_dir() else False)
    getattr(train, stop)()
    status = train.finish()
    assert _checkpoints(out) and not (out / "run.json").exists()
    if stop == "kill":
        assert status == -signal.SIGKILL
        return
    assert status == (130 if stop == "interrupt" else 143)
    assert train.lines[-1] == f"autopeft: {'interrupted' if stop == 'interrupt' else 'terminated'}", \
        train.stderr[-3000:]


@pytest.mark.slow
def test_a_stopped_bench_keeps_its_finished_runs(trainable_llama, tmp_path):
    out = tmp_path / "bench"
    args = ["bench", str(EXAMPLES / "instructions.jsonl"), "--benchmark", "test/stops", "-o", str(out),
            "--methods", "lora,ia3", "--learning-rates", "1", "--edge-rates", "0", "-m", str(trainable_llama),
            "--max-length", "64", "--max-steps", "20", "--eval-steps", "1000"]
    bench = Command(args)
    bench.wait_for("[1/2]")  # the first run is recorded; the second is starting
    bench.interrupt()
    assert bench.finish() == 130
    assert bench.lines[-2:] == ["autopeft: interrupted: stopping the bench; its finished runs are kept (the same "
                                "command again continues it)", "autopeft: interrupted"], bench.stderr[-3000:]
    _no_traceback(bench)
    assert len((out / "records.jsonl").read_text().splitlines()) == 1

    again = Command(args)
    again.wait_for("1 already finished, 1 to go")
    time.sleep(1.0)
    again.terminate()
    assert again.finish() == 143
    assert again.lines[-1] == "autopeft: terminated", again.stderr[-3000:]
    assert len((out / "records.jsonl").read_text().splitlines()) == 1


# -- the machinery, in this process ----------------------------------------------------------------

def _signal_soon(signum: int, after: float = 0.0) -> threading.Timer:
    timer = threading.Timer(after, os.kill, (os.getpid(), signum))
    timer.start()
    return timer


def _wait_for_signal(seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.01)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_sigterm_stops_as_ctrl_c_does_with_its_own_exit_status(signum):
    from autopeft.processes import handling_stop_signals, stop_exit_status, stop_word

    with handling_stop_signals():
        with pytest.raises(KeyboardInterrupt):
            _signal_soon(signum)
            _wait_for_signal()
        assert stop_exit_status() == 128 + signum
        assert stop_word() == ("interrupted" if signum == signal.SIGINT else "terminated")
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored after the command


def test_inside_a_deferring_region_a_stop_is_noted_and_raised_at_its_end_and_a_second_raises_at_once():
    from autopeft.processes import deferring_stop, stop_requested

    reached_the_end = False
    with pytest.raises(KeyboardInterrupt):
        with deferring_stop():
            _signal_soon(signal.SIGTERM)
            _wait_for_signal(1.0)  # not interrupted
            assert stop_requested()
            reached_the_end = True
    assert reached_the_end and not stop_requested()

    with pytest.raises(KeyboardInterrupt):
        with deferring_stop():
            os.kill(os.getpid(), signal.SIGINT)
            _wait_for_signal(1.0)
            os.kill(os.getpid(), signal.SIGINT)
            _wait_for_signal(5.0)
            pytest.fail("the second signal did not stop at once")


def test_signals_that_come_while_a_stopped_command_exits_do_not_cut_its_last_words():
    """A second Ctrl-C pressed while the command says how it stopped and ends its children (or a
    retried interrupt that fires then) must not escape as a traceback or an exit by signal."""
    from autopeft.processes import end_after_stop, handling_stop_signals, stop_requested

    with handling_stop_signals():
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            _wait_for_signal()
        end_after_stop()
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        _wait_for_signal(0.5)  # not interrupted
        assert stop_requested()
    with handling_stop_signals(), pytest.raises(KeyboardInterrupt):  # the next command stops again
        os.kill(os.getpid(), signal.SIGINT)
        _wait_for_signal()


def test_ctrl_c_outside_a_commands_handling_exits_130_with_one_line(monkeypatch, capsys):
    """Ctrl-C while the heavy libraries are still being imported, before a command takes signals."""
    from autopeft import cli

    def interrupted(**kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.main, "main", interrupted)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with pytest.raises(SystemExit) as exit_:
            cli.run()
        assert exit_.value.code == 130
        assert capsys.readouterr().err == "autopeft: interrupted\n"
        # a further signal on its way while the process exits is taken quietly
        assert signal.getsignal(signal.SIGINT) == signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


def test_python_m_exits_130_when_the_stop_passed_through_code_run_by_exec(tmp_path):
    """A Ctrl-C that lands while a dataclass or namedtuple builds its methods (exec() of a string)
    made ``python -m autopeft`` end by SIGINT after its "interrupted" line: CPython remembers such an
    interrupt even when it is caught."""
    (tmp_path / "stopped_in_exec.py").write_text(
        "import sys\nfrom autopeft import cli\n\n"
        "@cli.main.command('stop-in-exec')\ndef stop_in_exec():\n    exec('raise KeyboardInterrupt')\n\n"
        "sys.argv = ['autopeft', 'stop-in-exec']\ncli.run()\n")
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "stopped_in_exec"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 130, done.stderr[-2000:]
    assert done.stderr.splitlines()[-1] == "autopeft: interrupted"


class _SignalsItselfOnCollection:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)  # the handler runs here, inside the destructor


def test_an_interrupt_that_lands_in_a_destructor_is_not_swallowed(capfd):
    """Python prints an exception raised in __del__ as "Exception ignored" and carries on: the stop
    is raised a moment later instead, in the code that was running."""
    from autopeft.processes import handling_stop_signals

    with handling_stop_signals():
        with pytest.raises(KeyboardInterrupt):
            obj = _SignalsItselfOnCollection()
            del obj
            _wait_for_signal()
    assert "Exception ignored" not in capfd.readouterr().err


@pytest.mark.slow
def test_a_watched_child_that_does_not_stop_is_killed_with_its_children_after_the_grace_period():
    from autopeft.processes import handling_stop_signals, run_watched

    def sleepers():
        return [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", "417"]]

    with handling_stop_signals():
        _signal_soon(signal.SIGTERM, after=1.0)
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            # os.system blocks in C: the child's handler cannot run until its shell ends
            run_watched(os.system, ("sleep 417",), grace=1.0)
        assert time.monotonic() - started < 60
    assert not sleepers()
