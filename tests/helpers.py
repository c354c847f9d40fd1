"""Helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def autopeft_with_site(site: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """``python -m autopeft ARGS`` in a fresh process that also sees the packages installed in ``site``
    (plugins are found through their entry points there), with ``env`` added."""
    environ = {**os.environ, "PYTHONPATH": str(site), **env}
    return subprocess.run([sys.executable, "-m", "autopeft", *args], capture_output=True, text=True, timeout=600,
                          env=environ)
