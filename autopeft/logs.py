"""What autopeft prints besides its results: its own log lines on stderr, and library chatter kept
quiet. The CLI sets this up once; pilot and training processes set it up again, since a process
started by a fork server or spawned does not inherit it."""

from __future__ import annotations

import os
import sys


def quiet_libraries() -> None:
    """Library deprecation chatter is for autopeft's developers, not its users."""
    import logging
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category)
    for name in ("transformers", "peft", "accelerate", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars; autopeft shows its own progress


def log_to_stderr() -> None:
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("autopeft: %(message)s"))
    logger = logging.getLogger("autopeft")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
