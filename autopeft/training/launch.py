"""Training on several processes: ``--num-processes N`` and ``--accelerate-config FILE``.

autopeft does not run processes of its own making: it hands the run to ``accelerate launch``
(torchrun underneath, or DeepSpeed's launcher when the config asks for it), which starts the
workers; each worker is ``python -m autopeft.training.worker OUTPUT_DIR`` and runs the same training as a
single process, with transformers' Trainer doing data-parallel training the way Accelerate set it
up (DDP, FSDP or DeepSpeed ZeRO; gloo on CPUs, NCCL on GPUs). Only the main process writes the
outputs and shows progress.

Every worker also notes which examples it trained on and, at the end, a fingerprint of its
trainable weights; the main process gathers them into run.json (``distributed``), so a run shows
that the processes split the data and that their replicas stayed identical.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
from pathlib import Path
from typing import Any

from ..errors import AutopeftError, BadInputError
from ..sharding import Sharding, from_accelerate_config, sharding
from .outputs import DistributedRun, RankReport

#: written by the launching process beside autopeft-run.json: what the workers need besides the options
LAUNCH_FILE = ".launch.json"
#: set in the workers' environment, so a worker never launches again
LAUNCHED_ENV = "AUTOPEFT_LAUNCHED"


def launched() -> bool:
    """Whether this process is a worker started by :func:`launch`."""
    return os.environ.get(LAUNCHED_ENV) == "1"


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def read_accelerate_config(path: str | Path) -> Sharding:
    """The processes and strategy an Accelerate config file (YAML or JSON) sets up."""
    import yaml

    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(f"cannot read the Accelerate config ({type(exc).__name__})", source=source) from None
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        raise BadInputError(f"not a YAML or JSON Accelerate config: {getattr(exc, 'problem', exc)}", source=source,
                            line=line + 1 if line is not None else None) from None
    if not isinstance(config, dict) or "distributed_type" not in config:
        raise BadInputError("not an Accelerate config: no distributed_type (make one with `accelerate config`)",
                            source=source)
    return from_accelerate_config(config)


def plan_of(num_processes: int, accelerate_config: str | None) -> Sharding:
    """The sharding a run's options describe (the config file's, with ``num_processes`` overriding it)."""
    if accelerate_config:
        plan = read_accelerate_config(accelerate_config)
        if num_processes > 1 and num_processes != plan.num_processes:
            plan = sharding(plan.strategy, num_processes)
        return plan
    return sharding(None, num_processes)


def launch(opts, out: Path, *, resume: bool, recommendation: dict | None):
    """Run the training described by ``opts`` on several processes; return the main one's record."""
    from .outputs import OPTIONS_FILE, RECORD_FILE, RunRecord, write_json

    plan = plan_of(opts.num_processes, opts.accelerate_config)
    out.mkdir(parents=True, exist_ok=True)
    if not resume:
        write_json(out / OPTIONS_FILE, opts.model_dump(mode="json"))
    write_json(out / LAUNCH_FILE, {"resume": resume, "recommendation": recommendation})
    env = {**os.environ, LAUNCHED_ENV: "1"}
    if plan.num_processes > 1 and "OMP_NUM_THREADS" not in os.environ:
        # torchrun would set 1 thread per process; share the cores out instead
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // plan.num_processes))
    from ..processes import run_command, stop_note

    try:
        with stop_note("stopping the training processes (`--resume` continues from the last checkpoint)"):
            status = run_command(_command(opts, out, plan), env=env)
    finally:
        (out / LAUNCH_FILE).unlink(missing_ok=True)
    if status != 0:
        raise AutopeftError(f"the {plan.num_processes} training processes failed (exit status {status}); "
                            f"their messages are above")
    return RunRecord.model_validate_json((out / RECORD_FILE).read_text(encoding="utf-8"))


def _command(opts, out: Path, plan: Sharding) -> list[str]:
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if opts.accelerate_config:
        cmd += ["--config_file", str(opts.accelerate_config)]
        if opts.num_processes > 1:
            cmd += ["--num_processes", str(opts.num_processes)]
    else:
        cmd += ["--multi_gpu", "--num_processes", str(plan.num_processes), "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port())]
    return cmd + ["-m", "autopeft.training.worker", str(out)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- in the workers ------------------------------------------------------------------------------

class DataTrace:
    """Hashes of the training examples one process computes on, taken at the model's input."""

    def __init__(self):
        self.hashes: list[str] = []

    def attach(self, net) -> None:
        net.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs):
        ids = kwargs.get("input_ids")
        if not module.training or ids is None:
            return
        mask = kwargs.get("attention_mask")
        for i, row in enumerate(ids):
            tokens = row[mask[i].bool()] if mask is not None else row
            self.hashes.append(hashlib.blake2b(tokens.cpu().numpy().tobytes(), digest_size=8).hexdigest())


def weights_fingerprint(net) -> str:
    digest = hashlib.sha256()
    for name, param in sorted(net.named_parameters()):
        if param.requires_grad:
            digest.update(name.encode())
            digest.update(param.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def gather(trace: DataTrace, net, peak_memory_bytes: int, plan: Sharding) -> DistributedRun | None:
    """Collect every process's report on every process (a collective: all must call it)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    sharded_weights = plan.shards[2]
    mine = {"rank": dist.get_rank(), "hashes": trace.hashes, "peak": peak_memory_bytes,
            "weights": None if sharded_weights else weights_fingerprint(net)}
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    seen: dict[str, int] = {}
    for report in everyone:
        for h in set(report["hashes"]):
            seen[h] = seen.get(h, 0) + 1
    ranks = [RankReport(rank=r["rank"], examples=len(r["hashes"]),
                        data_fingerprint=hashlib.sha256("".join(sorted(set(r["hashes"]))).encode()).hexdigest()[:16],
                        weights_fingerprint=r["weights"], peak_memory_bytes=r["peak"]) for r in everyone]
    fingerprints = {r.weights_fingerprint for r in ranks}
    return DistributedRun(
        num_processes=len(ranks), strategy=plan.strategy, backend=dist.get_backend(), ranks=ranks,
        shared_examples=sum(1 for n in seen.values() if n > 1),
        replicas_identical=None if sharded_weights else len(fingerprints) == 1)
