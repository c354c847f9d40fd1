"""What each device holds when training runs on several processes: the per-device memory formulas.

With ``N`` processes, ``W`` bytes of parameters (frozen and trainable), ``G`` bytes of gradients,
``O`` bytes of optimizer state and ``A`` bytes of activations for one device's micro-batch:

=========  ===================================================  ======================================
strategy   per device                                           what is sharded
=========  ===================================================  ======================================
single     W + G + O + A                                        nothing (one process)
ddp        W + G + O + A + G (gradient buckets)                 nothing; DDP all-reduces gradients
                                                                through flat buckets, a second copy
zero1      W + G + O/N + A                                      optimizer state (DeepSpeed ZeRO-1)
zero2      W + G/N + O/N + A + g                                + gradients (ZeRO-2, FSDP
                                                                SHARD_GRAD_OP); ``g``: one block's
                                                                gradients before they are reduced
zero3      W/N + G/N + O/N + A + g + 2 w                        + parameters (ZeRO-3, FSDP
                                                                FULL_SHARD); ``w``: one block's
                                                                parameters, gathered for the block
                                                                being computed and prefetched for
                                                                the next
=========  ===================================================  ======================================

Activations are never sharded: each process runs its own micro-batch (``--batch-size`` is per
device), so ``A`` is the single-device figure. ``fsdp`` is another name for ``zero3``.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from .errors import BadInputError

STRATEGIES = ("single", "ddp", "zero1", "zero2", "zero3")
ALIASES = {"fsdp": "zero3", "full_shard": "zero3", "shard_grad_op": "zero2", "no_shard": "ddp"}


class Sharding(BaseModel):
    """How a multi-process run splits the training state."""

    strategy: str = "single"
    num_processes: int = Field(default=1, ge=1)

    @property
    def shards(self) -> tuple[bool, bool, bool]:
        """Whether optimizer state, gradients and parameters are split across the processes."""
        level = STRATEGIES.index(self.strategy)
        return level >= 2, level >= 3, level >= 4


def sharding(strategy: str | None, num_processes: int = 1) -> Sharding:
    """Validate a strategy name (``ddp``, ``zero1``, ``zero2``, ``zero3``/``fsdp``); None picks
    ``ddp`` for several processes and ``single`` for one."""
    if num_processes < 1:
        raise BadInputError(f"the number of processes must be at least 1, got {num_processes}")
    name = (strategy or ("ddp" if num_processes > 1 else "single")).lower()
    name = ALIASES.get(name, name)
    if name not in STRATEGIES:
        raise BadInputError(f"unknown strategy {strategy!r}: use one of ddp, zero1, zero2, zero3 (or fsdp)")
    if name == "single" and num_processes > 1:
        raise BadInputError(f"{num_processes} processes need a strategy: ddp, zero1, zero2 or zero3")
    return Sharding(strategy=name, num_processes=num_processes)


class DeviceShare(BaseModel):
    """The bytes one device holds of each part of the training state."""

    weights: int
    gradients: int
    optimizer: int
    communication: int = Field(description="DDP's gradient buckets, or the gathered and in-flight block "
                                           "of a sharded strategy")


def per_device(plan: Sharding, *, weights: int, gradients: int, optimizer: int, all_gradients: int,
               block_weights: int, block_gradients: int) -> DeviceShare:
    """One device's share of ``weights``, ``gradients`` (those alive at the moment considered) and
    ``optimizer``; ``all_gradients`` sizes DDP's buckets, ``block_*`` the largest block's bytes."""
    n = plan.num_processes
    if plan.strategy == "single":
        return DeviceShare(weights=weights, gradients=gradients, optimizer=optimizer, communication=0)
    optimizer_sharded, gradients_sharded, weights_sharded = plan.shards
    communication = all_gradients if plan.strategy == "ddp" else 0
    if gradients_sharded:
        communication += block_gradients
    if weights_sharded:
        communication += 2 * block_weights
    return DeviceShare(
        weights=_split(weights, n) if weights_sharded else weights,
        gradients=_split(gradients, n) if gradients_sharded else gradients,
        optimizer=_split(optimizer, n) if optimizer_sharded else optimizer,
        communication=communication)


def _split(nbytes: int, n: int) -> int:
    return -(-nbytes // n)  # shards are padded to equal sizes: round up


def from_accelerate_config(config: dict) -> Sharding:
    """The strategy an Accelerate config file (as a dict) sets up."""
    n = int(config.get("num_processes") or 1)
    kind = str(config.get("distributed_type") or "NO").upper()
    if kind == "DEEPSPEED":
        stage = int((config.get("deepspeed_config") or {}).get("zero_stage", 2))
        return sharding({0: "ddp", 1: "zero1", 2: "zero2", 3: "zero3"}.get(stage, "zero2"), n)
    if kind == "FSDP":
        fsdp = config.get("fsdp_config") or {}
        mode = str(fsdp.get("fsdp_sharding_strategy", "FULL_SHARD")).upper()
        # older configs give the strategy as a number: 1 FULL_SHARD, 2 SHARD_GRAD_OP, 3 NO_SHARD
        mode = {"1": "FULL_SHARD", "2": "SHARD_GRAD_OP", "3": "NO_SHARD"}.get(mode, mode)
        if fsdp.get("fsdp_version") == 2 and "fsdp_reshard_after_forward" in fsdp:
            mode = "FULL_SHARD" if fsdp["fsdp_reshard_after_forward"] else "SHARD_GRAD_OP"
        return sharding(mode.lower(), n)
    return sharding("ddp" if n > 1 else "single", n)
