"""What machine this is: the device that will train (CUDA, Apple MPS or CPU) and its memory, and the
known accelerators of ``profiles/hardware.json`` for planning on a machine the user does not have.

The real step time and peak memory on the user's model and data are measured by the first pilot
(:mod:`autopeft.pilot`), which runs the same code as the full fine-tune.
"""

from __future__ import annotations

import json
import os

from pydantic import BaseModel, Field

from .errors import BadInputError, unknown_names
from .profiles import shipped_folder


class DeviceProfile(BaseModel):
    """The device a fine-tune would run on, and how much memory it has."""

    kind: str = Field(description="cuda, mps or cpu")
    name: str
    total_memory_bytes: int = Field(description="the accelerator's memory, or RAM on CPU")
    free_memory_bytes: int | None = None
    cpu_count: int | None = None
    ram_bytes: int
    bf16: bool = False
    planned: bool = Field(default=False, description="a known accelerator planned for, not this machine's")


class Accelerator(BaseModel):
    name: str
    aliases: list[str] = Field(default_factory=list)
    memory_gib: float
    bf16: bool = True


def profile_device() -> DeviceProfile:
    """This machine's training device: torch for accelerators, psutil for RAM."""
    import psutil
    import torch

    ram = psutil.virtual_memory()
    common = {"cpu_count": os.cpu_count(), "ram_bytes": int(ram.total)}
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info(0)
        return DeviceProfile(kind="cuda", name=torch.cuda.get_device_name(0), total_memory_bytes=int(total),
                             free_memory_bytes=int(free), bf16=torch.cuda.is_bf16_supported(), **common)
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        # Apple silicon shares RAM between CPU and GPU: the budget is what the OS has free
        return DeviceProfile(kind="mps", name="Apple MPS", total_memory_bytes=int(ram.total),
                             free_memory_bytes=int(ram.available), **common)
    import platform

    return DeviceProfile(kind="cpu", name=platform.processor() or platform.machine(),
                         total_memory_bytes=int(ram.total), free_memory_bytes=int(ram.available), **common)


def known_accelerators() -> list[Accelerator]:
    path = shipped_folder().joinpath("hardware.json")
    if not path.is_file():
        return []
    return [Accelerator(**a) for a in json.loads(path.read_text(encoding="utf-8"))["accelerators"]]


def target_device(name: str) -> DeviceProfile:
    """A known accelerator, by name or alias (case and punctuation do not matter)."""
    def key(text: str) -> str:
        return "".join(ch for ch in text.lower() if ch.isalnum())

    wanted = key(name)
    for acc in known_accelerators():
        if wanted in {key(acc.name), *map(key, acc.aliases)}:
            memory = int(acc.memory_gib * 2**30)
            return DeviceProfile(kind="cuda", name=acc.name, total_memory_bytes=memory, free_memory_bytes=memory,
                                 ram_bytes=0, bf16=acc.bf16, planned=True)
    known = [a.name for a in known_accelerators()]
    raise unknown_names("accelerator", [name], known, source="--target-gpu")  # all listed: they are few
