"""Refuse a network that cannot be trained on this machine before any of its weights are allocated.

An architecture parameter such as ``hidden_size=100000000`` would otherwise ask torch for terabytes: a
traceback from the allocator, or a machine swapping until the kernel kills the process. Every policy is
therefore built once on torch's ``meta`` device (shapes only, no memory, no random numbers drawn) and its
parameters counted; the real build follows only if training it fits in the memory available now
(docs/design.md, "Validation").
"""

from __future__ import annotations

import os
from typing import Callable

import torch
from torch import nn

from metta_agent.errors import UsageError

# Training holds each parameter as float32 ~5 times: the weights, their gradients, Adam's two moments and the
# copy of the initial weights that the L2-init loss and weight metrics compare against.
TRAINING_COPIES = 5
BYTES_PER_VALUE = 4


def meta_parameter_count(build: Callable[[], nn.Module]) -> int:
    """How many values (parameters and buffers) the module ``build()`` returns would hold; allocates nothing."""
    with torch.device("meta"):
        module = build()
    return sum(p.numel() for p in module.parameters()) + sum(b.numel() for b in module.buffers())


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation now (Linux ``MemAvailable``), or None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_parameter_budget(values: int, what: str, hint: str, available: int | None = None) -> None:
    """A one-line UsageError when training ``values`` parameters needs more memory than is available.

    ``what`` names the network (and the part that tipped it over), ``hint`` says which setting to lower."""
    available = available_memory() if available is None else available
    needed = values * BYTES_PER_VALUE * TRAINING_COPIES
    if available is not None and needed > available:
        raise UsageError(
            f"{what} would have {values:.3g} parameters: training it needs about {_size(needed)} "
            f"({TRAINING_COPIES} float32 copies), more than the {_size(available)} of memory available; {hint}"
        )


def _size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if size < 1024 or unit == "PiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    raise AssertionError("unreachable")
