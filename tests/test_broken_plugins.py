"""Broken third-party plugins, installed like real ones (a distribution with an entry point): one
that fails to import, one whose method raises in build, one whose build returns the wrong type.
Each is reported by name and the rest of autopeft goes on working."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import autopeft_with_site

pytestmark = pytest.mark.slow  # every test here starts processes

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

BROKEN = '''
raise ImportError("needs libfoo, which is not installed")
'''

FAULTY = '''
import autopeft
from autopeft import Capabilities, Method, SearchSpace


class _Faulty(Method):
    family = "test"
    description = "a method from a broken plugin"
    tasks = ("causal-lm",)
    capabilities = Capabilities(merge=False, quantized=False, multi_adapter=False, lora_convertible=False)
    search_space = SearchSpace(learning_rate=(1e-3,))


class Explodes(_Faulty):
    name = "explodes"

    def build(self, model, settings, task):
        raise RuntimeError("kaboom in build")


class Hollow(_Faulty):
    name = "hollow"

    def build(self, model, settings, task):
        return None


@autopeft.hookimpl
def register_methods(register):
    register(Explodes())
    register(Hollow())
'''


def _distribution(site: Path, name: str, module: str, source: str) -> None:
    (site / f"{module}.py").write_text(source)
    info = site / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[autopeft]\n{module} = {module}\n")


@pytest.fixture(scope="module")
def broken_site(tmp_path_factory):
    site = tmp_path_factory.mktemp("broken-site")
    _distribution(site, "broken-import", "broken_import", BROKEN)
    _distribution(site, "faulty-methods", "faulty_methods", FAULTY)
    return site


def test_a_plugin_that_fails_to_import_is_named_and_the_others_are_listed(broken_site):
    proc = autopeft_with_site(broken_site, "methods", "--json")
    assert proc.returncode == 0, proc.stderr
    names = {m["name"] for m in json.loads(proc.stdout)}
    assert {"lora", "explodes", "hollow"} <= names
    assert ("plugin broken_import (broken-import) skipped: import failed: ImportError: needs libfoo"
            in proc.stderr)


def test_no_plugins_and_an_allow_list_keep_them_all_out(broken_site):
    for flags in (["--no-plugins"], ["--plugins", "autopeft"]):
        proc = autopeft_with_site(broken_site, *flags, "methods", "--json")
        names = {m["name"] for m in json.loads(proc.stdout)}
        assert "lora" in names and not names & {"explodes", "hollow"} and proc.stderr == ""
    proc = autopeft_with_site(broken_site, "--plugins", "faulty-methods,lora", "methods", "--json")
    assert {m["name"] for m in json.loads(proc.stdout)} == {"lora", "explodes", "hollow"}


@pytest.mark.parametrize("method, problem", [
    ("explodes", "method explodes failed to build: RuntimeError: kaboom in build"),
    ("hollow", "method hollow (plugin faulty-methods) built a NoneType, not a torch module"),
])
def test_training_with_a_broken_method_fails_in_one_line_and_leaves_nothing(broken_site, trainable_llama, tmp_path,
                                                                            method, problem):
    out = tmp_path / "run"
    proc = autopeft_with_site(broken_site, "train", "--method", method, str(EXAMPLES / "instructions.jsonl"),
                              "-m", str(trainable_llama), "--max-length", "64", "--max-steps", "2", "-o", str(out))
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == f"autopeft: error: {problem}"
    assert "Traceback" not in proc.stderr and not out.exists()


def test_recommend_rules_the_broken_methods_out_by_name_and_chooses_among_the_rest(broken_site, trainable_llama):
    proc = autopeft_with_site(broken_site, "recommend", str(EXAMPLES / "instructions.jsonl"), "-m",
                              str(trainable_llama), "--max-length", "64", "--max-examples", "40", "-b", "4",
                              "--epochs", "1", "--methods", "lora,explodes,hollow", "--pilot-budget", "30s", "--json")
    assert proc.returncode == 0, proc.stderr
    rec = json.loads(proc.stdout)
    rows = {c["method"]: c for c in rec["candidates"]}
    assert rec["chosen"] == "lora"
    assert not rows["explodes"]["feasible"] and "kaboom in build" in rows["explodes"]["excluded_because"][0]
    assert not rows["hollow"]["feasible"] and "not a torch module" in rows["hollow"]["excluded_because"][0]
