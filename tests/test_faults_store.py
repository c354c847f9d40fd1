"""Faults injected into the profile store and into output directories, as a crash, a full disk, a
copy taken mid-write, several runs at once or ``kill -9`` leave them: nothing whole is lost, nothing
damaged is passed over in silence, and no two runs write into one directory. docs/reliability.md
lists each promise with the test here that checks it."""

from __future__ import annotations

import errno
import json
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from autopeft.cli import main
from autopeft.errors import BadInputError
from autopeft.locks import Busy, claim, info, locked
from autopeft.profiles import (CurvePoint, ProfileRecord, append, check_store, load_records, lock_path, read_jsonl,
                               read_store, repair_store, store_path)
from autopeft.training.outputs import claim_output_dir, lock_file

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DATA = str(EXAMPLES / "instructions.jsonl")
TORN = b'{"schema_version": 1, "benchmark": "local/torn", "experiment": "cut-'


def _record(experiment: str, benchmark: str = "b", points: int = 3) -> ProfileRecord:
    return ProfileRecord(benchmark=benchmark, experiment=experiment, task="causal-lm", model="m", dataset="d",
                         method="lora", total_steps=max(1, points), metric="eval_loss", higher_is_better=False,
                         score=1.0, source="test",
                         curve=[CurvePoint(step=i + 1, train_loss=1.0 / (i + 1)) for i in range(points)])


@pytest.fixture
def said():
    """What autopeft logs (its warnings are its one-line messages on stderr)."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    logger = logging.getLogger("autopeft")
    handler = Keep(logging.WARNING)
    logger.addHandler(handler)
    yield lines
    logger.removeHandler(handler)


def _autopeft(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autopeft", *args], capture_output=True, text=True, timeout=timeout)


def _start(*args: str) -> subprocess.Popen:
    # a session of its own, so that a kill reaches the processes it starts too
    return subprocess.Popen([sys.executable, "-m", "autopeft", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for(ready, proc: subprocess.Popen | None = None, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc is not None:
            assert proc.poll() is None, f"it ended first: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, "never happened"
        time.sleep(0.05)


def _kill_9(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


# -- the profile store: torn lines ----------------------------------------------------------------


def test_a_torn_line_is_skipped_said_once_and_the_next_append_starts_on_a_line_of_its_own(tmp_path, said):
    store = tmp_path / "profiles.jsonl"
    append([_record("a"), _record("b")], store)
    with open(store, "ab") as f:
        f.write(TORN)  # what a crash mid-write leaves
    assert [r.experiment for r in read_store(store)] == ["a", "b"]
    append([_record("c")], store)  # the next run's record
    assert [r.experiment for r in read_store(store)] == ["a", "b", "c"]  # not eaten by the torn line
    load_records([], shipped=False)
    read_store(store)
    skipped = [line for line in said if line.startswith("skipped")]
    assert skipped == [f"skipped 1 damaged line of {store}: line 3; `autopeft profiles check --repair {store}` "
                       f"removes it"]
    assert [line for line in said if "was cut off" in line] == [
        f"the last line of {store} (line 3) was cut off by a write that never finished; the new record starts on "
        f"the next line (`autopeft profiles check --repair {store}` removes the damaged one)"]
    assert store.read_bytes().split(b"\n")[2] == TORN  # kept as it was, for the user to see


def test_the_local_store_is_read_past_its_damage_by_every_reader(said):
    append([_record("mine", benchmark="local/x")])
    with open(store_path(), "ab") as f:
        f.write(b"\x00" * 40)  # a crash after the size grew and before the data reached the disk
    records = load_records()
    assert [r.experiment for r in records if r.benchmark == "local/x"] == ["mine"]
    assert len([line for line in said if line.startswith("skipped 1 damaged line")]) == 1


def test_every_kind_of_damaged_line_is_named_and_the_whole_records_around_it_kept(tmp_path):
    store = tmp_path / "records.jsonl"
    good = _record("good").model_dump_json().encode()
    newer = json.dumps({**json.loads(good), "schema_version": 99, "a_later_field": 1}).encode()
    store.write_bytes(b"\n".join([
        good,                                       # 1
        b"\xff\xfe not text",                       # 2
        b'{"benchmark": "x"\x00\x00}',              # 3
        b"[1, 2]",                                  # 4
        b'{"benchmark": "z"}',                      # 5
        b"no json here",                            # 6
        b"   ",                                     # 7: blank, nothing
        newer,                                      # 8: a newer autopeft's, kept
        good.replace(b'"good"', b'"good2"'),        # 9
        good[:50],                                  # 10: torn at the end of the file
    ]))
    scan = check_store(store)
    assert [r.experiment for r in scan.records] == ["good", "good2"]
    assert scan.newer == [8]
    reasons = {d.line: d.reason for d in scan.damaged}
    assert sorted(reasons) == [2, 3, 4, 5, 6, 10]
    assert reasons[2].startswith("not UTF-8") and "NUL" in reasons[3] and "JSON list" in reasons[4]
    assert reasons[5].startswith("not a profile record: experiment: Field required")
    assert reasons[6].startswith("not JSON") and reasons[10].startswith("cut off")
    with pytest.raises(BadInputError, match=f"{store}:2: not UTF-8"):  # a file the user names is refused whole
        read_jsonl(store)
    scan, backup = repair_store(store)
    assert backup is not None and store.read_bytes() == b"\n".join([good, newer, good.replace(b'"good"', b'"good2"')]) + b"\n"


def test_an_append_cut_off_by_a_full_disk_leaves_the_store_as_it_was(tmp_path, monkeypatch):
    store = tmp_path / "profiles.jsonl"
    append([_record("a")], store)
    before = store.read_bytes()
    real_write = os.write

    def half_then_full(fd, data):  # the first half goes in, then the disk is full
        if len(data) > 100:
            real_write(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    with monkeypatch.context() as patch:
        patch.setattr(os, "write", half_then_full)
        with pytest.raises(OSError, match="No space"):
            append([_record("lost", points=50)], store)
    assert store.read_bytes() == before  # whole or absent: absent
    append([_record("b")], store)
    assert [r.experiment for r in read_store(store)] == ["a", "b"] and not check_store(store).damaged


def test_a_finished_run_whose_record_cannot_be_stored_says_so_and_keeps_its_outputs(said, monkeypatch):
    from autopeft.training import run as run_module

    def full_disk(records, path=None):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("autopeft.profiles.append", full_disk)
    monkeypatch.setattr("autopeft.profiles.record_from_run", lambda record: _record("x"))
    run_module._remember(object())
    assert said == ["could not add this run to the profile store: [Errno 28] No space left on device"]


# -- the profile store: several writers -----------------------------------------------------------

WRITERS, EACH = 6, 25


def _writer(store: str, name: str) -> None:
    for i in range(EACH):
        append([_record(f"{name}-{i}", points=300)], Path(store))  # lines of ~12 KB: past any atomic-write size


def _reader(store: str, stop, damaged) -> None:
    while not stop.is_set():
        scan = check_store(Path(store))
        if scan is not None and scan.damaged:
            damaged.append(scan.damaged[0].reason)


def test_concurrent_writers_append_whole_records_that_never_interleave_and_readers_never_see_half_of_one(tmp_path):
    store = tmp_path / "profiles.jsonl"
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        stop, damaged = manager.Event(), manager.list()
        reader = ctx.Process(target=_reader, args=(str(store), stop, damaged))
        reader.start()
        writers = [ctx.Process(target=_writer, args=(str(store), f"w{n}")) for n in range(WRITERS)]
        for w in writers:
            w.start()
        for w in writers:
            w.join(180)
        stop.set()
        reader.join(60)
        assert [w.exitcode for w in writers] == [0] * WRITERS
        assert list(damaged) == []
    scan = check_store(store)
    assert scan.damaged == []
    assert sorted(r.experiment for r in scan.records) == sorted(f"w{n}-{i}" for n in range(WRITERS) for i in range(EACH))


def test_a_writer_waits_while_another_holds_the_store(tmp_path):
    store = tmp_path / "profiles.jsonl"
    code = (f"import sys; from pathlib import Path; from autopeft.profiles import append, ProfileRecord; "
            f"r = ProfileRecord.model_validate_json(sys.argv[1]); print('ready', flush=True); "
            f"append([r], Path({str(store)!r}))")
    with locked(lock_path(store)):
        proc = subprocess.Popen([sys.executable, "-c", code, _record("late").model_dump_json()],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(1.0)
        assert proc.poll() is None and not store.exists()  # waiting, not writing
    assert proc.wait(60) == 0
    assert [r.experiment for r in read_store(store)] == ["late"]


# -- profiles check ---------------------------------------------------------------------------------


def _check(*args):
    return CliRunner().invoke(main, ["profiles", "check", *args], catch_exceptions=False)


def test_profiles_check_names_each_damaged_line_and_repair_keeps_every_whole_record():
    res = _check()
    assert res.exit_code == 0 and "no profile store yet" in res.output
    store = store_path()
    append([_record("a"), _record("b")])
    whole = store.read_bytes()
    with open(store, "ab") as f:
        f.write(b"not json\n" + TORN)
    damaged = store.read_bytes()

    res = _check()
    assert res.exit_code == 1
    assert res.output.splitlines()[:3] == [
        f"{store}: 2 records, 2 damaged lines",
        "  line 3: not JSON: Expecting value (column 1)",
        "  line 4: cut off: the file ends in the middle of this line (a write that never finished)"]
    doc = json.loads(_check("--json").output)
    assert doc["records"] == 2 and [d["line"] for d in doc["damaged"]] == [3, 4] and doc["repaired"] is False

    append([_record("c")])  # a run finishing before the repair: kept too
    res = _check("--repair", "--json")
    assert res.exit_code == 0
    doc = json.loads(res.output)
    assert doc["repaired"] is True and doc["records"] == 3
    backup = Path(doc["backup"])
    assert backup.parent == store.parent and backup.read_bytes().startswith(damaged)  # the damaged file, kept
    assert store.read_bytes() == whole + _record("c").model_dump_json().encode() + b"\n"  # byte for byte
    res = _check()
    assert res.exit_code == 0 and "3 records, no damaged lines" in res.output
    assert _check("--repair").exit_code == 0 and len(list(store.parent.glob("*.damaged-*"))) == 1


def test_profiles_check_reads_any_record_file_and_refuses_a_missing_one(tmp_path):
    records = tmp_path / "records.jsonl"
    append([_record("a")], records)
    records.write_bytes(records.read_bytes() + TORN)
    res = _check(str(records))
    assert res.exit_code == 1 and f"`autopeft profiles check --repair {records}` removes it" in res.output
    assert _check(str(records), "--repair").exit_code == 0 and read_store(records)[0].experiment == "a"
    res = CliRunner().invoke(main, ["profiles", "check", str(tmp_path / "nope.jsonl")])
    assert res.exit_code == 2 and "no such file" in res.output


# -- output directories: one run at a time --------------------------------------------------------

HOLD = ("import sys; from pathlib import Path; from autopeft.training.outputs import claim_output_dir\n"
        "with claim_output_dir(Path(sys.argv[1]), 'train'):\n"
        "    print('held', flush=True); sys.stdin.read()\n")


def _holder(out: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_directory_another_process_holds_is_refused_at_once_by_every_command_and_freed_by_its_death(tmp_path):
    out = tmp_path / "runs" / "x"
    holder = _holder(out)
    try:
        out.mkdir()
        (out / "autopeft-run.json").write_text("{}")  # the holder's run
        for command in (["train", DATA, "-o", str(out)], ["train", "-o", str(out), "--resume"],
                        ["train", DATA, "-o", str(out), "--overwrite"], ["tune", DATA, "-o", str(out)],
                        ["bench", DATA, "--benchmark", "b", "-o", str(out)]):
            started = time.monotonic()
            res = CliRunner().invoke(main, command)
            assert res.exit_code == 2, (command, res.output)
            assert f"{out}: in use by autopeft train (pid {holder.pid}, started " in res.output, res.output
            assert time.monotonic() - started < 10
        assert (out / "autopeft-run.json").read_text() == "{}"  # --overwrite deleted nothing
        # another spelling of the same directory is the same directory
        (tmp_path / "link").symlink_to(out)
        for spelling in (Path(os.path.relpath(out)) / ".." / "x", tmp_path / "link"):
            with pytest.raises(BadInputError, match=f"pid {holder.pid}"):
                with claim_output_dir(spelling, "train"):
                    pass
    finally:
        _kill_9(holder)
    assert lock_file(out).exists()  # left behind by kill -9 ...
    with claim_output_dir(out, "train") as held:  # ... and free all the same
        assert json.loads(lock_file(out).read_text())["pid"] == os.getpid() == held.holder["pid"]
    assert not lock_file(out).exists()  # released: removed
    assert sorted(p.name for p in out.parent.iterdir()) == ["x"]  # nothing of the lock left beside it
    assert sorted(p.name for p in out.iterdir()) == ["autopeft-run.json"]  # nor inside


def test_one_process_cannot_hold_a_directory_twice(tmp_path):
    with claim_output_dir(tmp_path / "x", "tune"):
        with pytest.raises(BadInputError, match=f"in use by autopeft tune \\(pid {os.getpid()}, "):
            with claim_output_dir(tmp_path / "x", "train"):
                pass
    with pytest.raises(ValueError):  # a run that fails lets go too
        with claim_output_dir(tmp_path / "x", "train"):
            raise ValueError
    assert not lock_file(tmp_path / "x").exists()
    with claim_output_dir(tmp_path / "x", "train"):
        pass


def test_without_file_system_locks_a_dead_holders_note_is_replaced_and_a_live_ones_refuses(tmp_path, monkeypatch):
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "lockf", no_locks)
    path = tmp_path / ".x.lock"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path.write_text(json.dumps({**info("train"), "pid": int(dead.stdout)}))
    with claim(path, info("train")) as held:
        assert not held.locked and json.loads(path.read_text())["pid"] == os.getpid()
    path.write_text(json.dumps({**info("tune"), "pid": os.getppid()}))  # alive
    with pytest.raises(Busy, match=f"autopeft tune \\(pid {os.getppid()}"):
        claim(path, info("train"))


# -- the real command line on a tiny model ----------------------------------------------------------

TRAIN = ["--max-length", "64", "--early-stopping", "0"]


def _torn_store() -> bytes:
    append([_record("before", benchmark="local/old")])
    with open(store_path(), "ab") as f:
        f.write(TORN)
    return store_path().read_bytes()


@pytest.mark.slow
def test_recommend_after_a_torn_store_line_goes_on_and_says_so_in_one_line(trainable_llama):
    before = _torn_store()
    res = _autopeft("recommend", DATA, "-m", str(trainable_llama), "--max-length", "64", "--no-pilot", "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout)["chosen"]
    said = [line for line in res.stderr.splitlines() if "damaged" in line]
    assert said == [f"autopeft: skipped 1 damaged line of {store_path()}: line 2; "
                    f"`autopeft profiles check --repair` removes it"]
    assert store_path().read_bytes() == before  # reading changes nothing


@pytest.mark.slow
def test_train_after_a_torn_store_line_keeps_its_record_and_says_so_in_one_line(trainable_llama, tmp_path):
    _torn_store()
    out = tmp_path / "run"
    res = _autopeft("train", DATA, "-m", str(trainable_llama), *TRAIN, "--max-steps", "2", "-o", str(out))
    assert res.returncode == 0, res.stderr[-2000:]
    said = [line for line in res.stderr.splitlines() if "cut off" in line or "damaged" in line]
    assert said == [f"autopeft: the last line of {store_path()} (line 2) was cut off by a write that never finished; "
                    f"the new record starts on the next line (`autopeft profiles check --repair` removes the "
                    f"damaged one)"]
    records = read_store()
    assert [r.experiment for r in records][0] == "before" and records[1].experiment.endswith("-run")
    assert records[1].total_steps == 2 and [d.line for d in check_store().damaged] == [2]
    res = _autopeft("profiles", "check", "--repair")
    assert res.returncode == 0, res.stderr
    assert [r.experiment for r in read_store()] == [r.experiment for r in records] and not check_store().damaged


@pytest.mark.slow
def test_runs_and_imports_writing_to_one_store_at_once_all_keep_their_records(trainable_llama, tmp_path,
                                                                             write_peft_result):
    results = tmp_path / "peft-results"
    results.mkdir()
    for i in range(5):
        write_peft_result(results, f"r{i}", acc=0.1 * i, mem=1000, losses=[2.0, 1.5])
    procs = [_start("train", DATA, "-m", str(trainable_llama), *TRAIN, "--max-steps", "2",
                    "-o", str(tmp_path / f"run{i}")) for i in range(3)]
    procs += [_start("profiles", "import", str(results)) for _ in range(3)]
    for proc in procs:
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-2000:]
    scan = check_store()
    assert scan.damaged == [] and len(scan.records) == 3 + 3 * 5
    assert sorted(r.experiment.rpartition("-")[2] for r in scan.records if r.source.startswith("autopeft run")) == [
        "run0", "run1", "run2"]


@pytest.mark.slow
def test_a_second_train_into_a_running_ones_directory_refuses_at_once_and_kill_9_then_resume_finishes(
        trainable_llama, tmp_path):
    out = tmp_path / "run"
    first = _start("train", DATA, "-m", str(trainable_llama), *TRAIN, "--max-steps", "300", "--save-steps", "20",
                   "--eval-steps", "20", "-o", str(out))
    try:
        _wait_for(lambda: any((out / "checkpoints").glob("checkpoint-*")), first)
        for extra in ([DATA], ["--resume"], [DATA, "--overwrite"]):
            started = time.monotonic()
            second = _autopeft("train", *extra, "-m", str(trainable_llama), *TRAIN, "--max-steps", "2",
                               "-o", str(out), timeout=120)
            assert second.returncode == 2, second.stderr[-2000:]
            assert second.stderr.startswith(f"autopeft: error: {out}: in use by autopeft train (pid {first.pid}, "
                                            f"started "), second.stderr
            assert len(second.stderr.splitlines()) == 1 and time.monotonic() - started < 60
        assert first.poll() is None  # the first run goes on, its files untouched
    finally:
        _kill_9(first)
    assert lock_file(out).exists() and not (out / "run.json").exists()
    done = _autopeft("train", "--resume", "-o", str(out), "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((out / "run.json").read_text())["steps"] == 300
    assert not lock_file(out).exists()
    assert [r.total_steps for r in read_store()] == [300]  # one run, one record


@pytest.mark.slow
def test_a_second_tune_into_a_running_ones_directory_refuses_at_once_and_the_first_finishes(trainable_llama,
                                                                                              tmp_path):
    out = tmp_path / "tuned"
    first = _start("tune", DATA, "-m", str(trainable_llama), "--max-length", "64", "--max-examples", "40", "-b", "4",
                   "--epochs", "1", "--methods", "lora,ia3", "--pilot-budget", "30s", "-o", str(out), "--json")
    try:
        _wait_for(lock_file(out).exists, first)
        second = _autopeft("tune", DATA, "-m", str(trainable_llama), "--no-pilot", "-o", str(out), timeout=120)
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"{out}: in use by autopeft tune (pid {first.pid}, started " in second.stderr
        # the first one's fine-tune runs in a child process, under the lock its parent holds
        stdout, stderr = first.communicate(timeout=600)
    except BaseException:
        _kill_9(first)
        raise
    assert first.returncode == 0, stderr[-2000:]
    assert json.loads(stdout)["output_dir"] == str(out) and (out / "run.json").is_file()
    assert not lock_file(out).exists() and len(read_store()) == 1
