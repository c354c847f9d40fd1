"""The example BitFit package installs like any third-party plugin and competes like a built-in."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import autopeft_with_site

pytestmark = pytest.mark.slow  # every test here trains or starts processes

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "autopeft-bitfit"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(EXAMPLE)], check=True, timeout=300)
    return target


def test_installed_plugin_is_listed_with_its_source(plugin_site):
    proc = autopeft_with_site(plugin_site, "methods", "--json")
    assert proc.returncode == 0, proc.stderr
    bitfit = next(m for m in json.loads(proc.stdout) if m["name"] == "bitfit")
    assert bitfit["source"] == "autopeft-bitfit"
    assert bitfit["family"] == "bias"


def test_installed_plugin_is_usable_by_estimate(plugin_site, tiny_bert_dir):
    proc = autopeft_with_site(plugin_site, "estimate", "--model", str(tiny_bert_dir), "--task", "seq-cls", "--method",
                     "bitfit", "--seq-len", "64", "--device", "cpu", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    # tiny BERT: biases of 2 layers x (q,k,v,o: 4*64 + intermediate 128 + output 64 + 2 LayerNorms 2*64)
    # + embedding LayerNorm 64 + pooler 64, plus the classifier head 64*2+2
    assert doc["trainable_params"] == 2 * (4 * 64 + 128 + 64 + 2 * 64) + 64 + 64 + (64 * 2 + 2)


def test_load_plugins_allow_list_keeps_others_out(plugin_site):
    proc = autopeft_with_site(plugin_site, "methods", "--json", AUTOPEFT_LOAD_PLUGINS="lora,bitfit")
    assert sorted(m["name"] for m in json.loads(proc.stdout)) == ["bitfit", "lora"]
