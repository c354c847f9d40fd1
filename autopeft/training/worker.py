"""One of the processes ``accelerate launch`` starts for a run on several processes
(``python -m autopeft.training.worker OUTPUT_DIR``): the run whose options are in OUTPUT_DIR, as a
single process would do it, with only the main process writing the outputs (see :mod:`.launch`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import AutopeftError
from .launch import LAUNCH_FILE, is_main_process
from .options import TrainOptions
from .outputs import OPTIONS_FILE
from .run import Run


def run_worker(out: Path) -> int:
    """One launched process: the run whose options are in ``out``."""
    import logging

    if not is_main_process():  # the main process says what there is to say, once
        logging.getLogger("autopeft").setLevel(logging.ERROR)
    extra = json.loads((out / LAUNCH_FILE).read_text(encoding="utf-8"))
    opts = TrainOptions(**json.loads((out / OPTIONS_FILE).read_text(encoding="utf-8")))
    run = Run(opts, out, resume=extra["resume"], progress=is_main_process(), recommendation=extra["recommendation"])
    run.finish(run.fit())
    # not on failure: a barrier then would wait for a process that is gone; the launcher ends them all
    _leave_the_group()
    return 0


def _leave_the_group() -> None:
    """Wait for the others, then close the process group ourselves.

    A process that finishes first (every one but the main, which still writes the outputs) and leaves
    gloo's group to the interpreter's exit gets aborted by its threads ("terminate called without an
    active exception"), and the launcher then kills the main one mid-write."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def main() -> int:
    from ..logs import log_to_stderr, quiet_libraries
    from ..processes import leave_interrupts_to_parent

    leave_interrupts_to_parent()  # Ctrl-C reaches every worker; the launching process stops them all
    quiet_libraries()
    log_to_stderr()
    try:
        return run_worker(Path(sys.argv[1]))
    except AutopeftError as exc:
        if is_main_process():
            print(f"autopeft: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
