"""benchmarks/gpu_check.py: its command line, and its CPU rehearsal end to end (the GPU run needs a GPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout)


@pytest.mark.slow
def test_help_and_a_bad_section():
    shown = run("--help")
    assert shown.returncode == 0
    assert "--sections" in shown.stdout and "--tiny" in shown.stdout
    bad = run("--sections", "memory,nonsense")
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "'nonsense'" in lines[0]


@pytest.mark.slow
def test_cpu_rehearsal_writes_every_section(tmp_path):
    done = run("--device", "cpu", "--tiny", "--out", str(tmp_path), timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    markdown = (tmp_path / "gpu_check.md").read_text()
    sections = report["sections"]
    assert set(sections) == {"memory", "pilots", "qlora", "speed"}
    for name in ("memory", "pilots", "speed"):
        assert sections[name]["status"] == "ok", (name, sections[name].get("error"))

    measured = [r for r in sections["memory"]["rows"] if "error" in r]
    assert len({r["method"] for r in measured}) >= 10
    for row in measured:
        assert row["predicted_bytes"] > 0 and isinstance(row["measured_bytes"], int)
    assert any(r["gradient_checkpointing"] for r in measured)

    pilots = sections["pilots"]
    assert pilots["chosen"] and pilots["pilots"] and pilots["adapter_load"]["ok"]
    assert pilots["precision"] == "fp32" and pilots["cap_bytes"] > 0

    assert sections["qlora"]["status"] == "skipped" and "CUDA" in sections["qlora"]["reason"]

    layouts = {r["layout"]: r for r in sections["speed"]["rows"]}
    assert set(layouts) == {"packed", "grouped"}
    for row in layouts.values():
        assert row["ratio"] > 0
        assert row["plain"]["tokens"] > 0 and row["autopeft"]["tokens"] > 0

    for title in ("## 1. Memory", "## 2. Pilots", "## 3. QLoRA", "## 4. Speed", "CPU rehearsal"):
        assert title in markdown
