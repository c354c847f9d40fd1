"""The built wheel carries everything autopeft reads at run time, and an install from it (not editable)
behaves like the checkout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # every test here trains or starts processes

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(ROOT)], check=True, capture_output=True, cwd=out)
    (found,) = out.glob("autopeft-*.whl")
    return found


def test_the_wheel_holds_the_profiles_the_accelerators_the_plugins_and_the_resources(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for record_file in (ROOT / "profiles").glob("*.jsonl"):
        assert f"autopeft_profiles/{record_file.name}" in names
    assert "autopeft_profiles/hardware.json" in names
    for resource in (ROOT / "autopeft" / "resources").iterdir():
        assert f"autopeft/resources/{resource.name}" in names
    for plugin in (ROOT / "plugins").glob("*.py"):
        assert f"autopeft_plugins/{plugin.name}" in names
    for module in (ROOT / "autopeft").rglob("*.py"):
        assert f"autopeft/{module.relative_to(ROOT / 'autopeft').as_posix()}" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[autopeft]" in text and "lora = autopeft_plugins.lora" in text


def test_an_installed_wheel_learns_from_every_shipped_benchmark_and_knows_the_accelerators(wheel, tmp_path,
                                                                                         trainable_llama):
    from autopeft.profiles import load_records

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(site)}
    run = tmp_path / "elsewhere"  # not the checkout: `python -m` puts the working dir first on sys.path
    run.mkdir()
    where = subprocess.run([sys.executable, "-c", "import autopeft; print(autopeft.__file__)"], env=env, cwd=run,
                           capture_output=True, text=True, check=True)
    assert where.stdout.strip().startswith(str(site))
    proc = subprocess.run([sys.executable, "-m", "autopeft", "recommend", "--no-pilot", "--target-gpu", "A100-40GB",
                           "--json", "-m", str(trainable_llama), str(EXAMPLES / "instructions.jsonl")],
                          env=env, cwd=run, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    shipped = {r.benchmark for r in load_records(store=False)}
    assert set(json.loads(proc.stdout)["trained_on"]) == shipped and len(shipped) >= 8
