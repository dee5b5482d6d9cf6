"""Data-parallel training with PyTorch's own engine: torchrun launches the ranks, DDP averages gradients.

Each rank is one process with its own environments (rank ``r`` plays envs ``r * num_envs ...`` of the run,
so no two ranks play the same maps), its own experience buffer and its own copy of the agent. Ranks build
the agent from the same seed, so their initial weights (and the clip bounds and L2-init anchors taken from
them) are identical; the PPO update runs through :class:`~torch.nn.parallel.DistributedDataParallel`,
which averages the gradients, so every rank takes the same optimizer step and ``clip_weights()`` (a
deterministic function of the weights) keeps them identical. Rank 0 alone writes logs and checkpoints.

The per-agent LSTM memory is a plain attribute of the recurrent core, not a buffer: DDP neither broadcasts
nor averages it (it is each rank's own agents' state and must stay so). The agent's buffers (feature
remap, normalisations, initial weights) are equal on every rank by construction and never change during
training, so DDP is told not to broadcast them before every forward.

A single process needs none of this: :func:`process_group` is a no-op outside torchrun and
:func:`wrap_for_training` returns the agent itself.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn

from metta_agent.errors import UsageError

# Set by torchrun in every rank it starts.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@dataclass(frozen=True)
class World:
    """This process's place among the ranks (a single process is rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs, shows progress and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def current_world() -> World:
    """The world of the initialised process group, or a single process if there is none."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", 1)),
    )


@contextlib.contextmanager
def process_group(device: str) -> Iterator[World]:
    """Join the ranks torchrun started (gloo on CPU, NCCL on CUDA) and leave the group afterwards.

    Drop every DDP wrapper before the block ends: they hold the group, which must be destroyed last.

    Outside torchrun, or with a world of one, there is nothing to join and this yields a single-process
    world."""
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        yield World()
        return
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    try:
        yield current_world()
        # Leave together: a rank that exits while another still tears down its DDP reducer left that rank
        # hanging in the gloo destructor (seen here). The caller drops its DDP wrapper before this point.
        dist.barrier()
        gc.collect()
    finally:
        dist.destroy_process_group()


def resolve_device(name: str, world: World) -> torch.device:
    """``cpu``, or ``cuda`` (this rank's local GPU) / ``cuda:N`` (``RunConfig.validate`` checked the name); a CUDA
    device torch cannot see is an error."""
    device = torch.device(name)
    if device.type == "cpu":
        return device
    if not torch.cuda.is_available():
        raise UsageError(f"trainer.device {name}: this torch ({torch.__version__}) sees no CUDA device")
    if device.index is None:
        device = torch.device("cuda", world.local_rank)
    return device


def default_torch_threads(world: World) -> int:
    """An equal share of this machine's cores per local rank: oversubscribed OpenMP threads spin and
    slow every rank down (2 ranks x 2 threads on 2 cores ran several times slower than 2 x 1)."""
    return max(1, (os.cpu_count() or 1) // max(world.local_world_size, 1))


def wrap_for_training(agent: nn.Module, device: torch.device, world: World) -> nn.Module:
    """The module the PPO update calls: ``agent`` itself, or a DDP wrapper that averages its gradients."""
    if not world.distributed:
        return agent
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    # The buffers are equal on every rank and never change: no broadcast before each forward. Newer torch
    # names the switch forward_sync_buffers (broadcast_buffers is deprecated there).
    parameters = inspect.signature(DistributedDataParallel.__init__).parameters
    no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in parameters else {"broadcast_buffers": False}
    return DistributedDataParallel(agent, device_ids=device_ids, **no_sync)


# ---- small collectives the trainer needs (all ranks must call them, in the same order) -------------------


def any_rank(flag: bool, world: World) -> bool:
    """True on every rank if it is true on any (so all ranks stop at the same epoch, never in a collective)."""
    if not world.distributed:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=_collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def gather_lists(items: list, world: World) -> list:
    """Every rank's ``items`` concatenated in rank order (small Python objects, e.g. episode stats)."""
    if not world.distributed:
        return items
    gathered: list[list] = [[] for _ in range(world.world_size)]
    dist.all_gather_object(gathered, items)
    return [item for part in gathered for item in part]


@torch.no_grad()
def replica_divergence(module: nn.Module, world: World) -> float:
    """Largest |w - w_rank0| over all parameters and ranks: 0.0 while data parallelism works.

    Independent of DDP's own machinery (rank 0's weights are broadcast and compared), so it catches any
    rank that took a different step."""
    if not world.distributed:
        return 0.0
    flat = torch.cat([p.detach().reshape(-1) for p in module.parameters()]).to(_collective_device())
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    divergence = (flat - reference).abs().max().reshape(1)
    dist.all_reduce(divergence, op=dist.ReduceOp.MAX)
    return float(divergence.item())


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ---- the launcher: `metta-agent train --nproc-per-node K` re-runs itself under torchrun ------------------


def torchrun_command(
    child_args: Sequence[str],
    nproc_per_node: int,
    nnodes: int = 1,
    node_rank: int = 0,
    master_addr: str | None = None,
    master_port: int | None = None,
) -> list[str]:
    """``python -m torch.distributed.run ... -m metta_agent.cli <child_args>``.

    One node without an address uses ``--standalone`` (a local rendezvous on a free port); several nodes
    use torchrun's static rendezvous flags, the same on every node except ``--node-rank``."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc_per_node}"]
    if nnodes == 1 and master_addr is None and master_port is None:
        command.append("--standalone")
    else:
        command += [f"--nnodes={nnodes}", f"--node-rank={node_rank}"]
        if master_addr is not None:
            command.append(f"--master-addr={master_addr}")
        if master_port is not None:
            command.append(f"--master-port={master_port}")
    return [*command, "-m", "metta_agent.cli", *child_args]


@dataclass
class RankFailure:
    """What torchrun's failure report says about the first rank that failed."""

    rank: str = "?"
    exit_code: str = "?"
    signal_name: str | None = None

    def describe(self) -> str:
        if self.signal_name:
            return f"rank {self.rank} was killed by {self.signal_name}"
        return f"rank {self.rank} exited with code {self.exit_code}"


def filter_launcher_stderr(lines, forward) -> RankFailure | None:
    """Pass the ranks' own stderr lines to ``forward``; hold back the Python tracebacks of ranks that died
    with their peers and torchrun's own log lines and failure report (40-70 lines when one rank is killed),
    and return the failure that report names, if any."""
    failure: RankFailure | None = None
    in_traceback = in_report = False
    for raw in lines:
        line = _RANK_PREFIX.sub("", raw, count=1)  # torch prefixes a dying rank's own traceback with "[rankN]: "
        stripped = line.strip()
        if line.startswith("Traceback (most recent call last)"):
            in_traceback = True
            continue
        if in_traceback:
            if line[:1] in (" ", "\t") or not stripped:
                continue
            in_traceback = False  # the exception's own line ends the block
            continue
        if stripped.startswith(("During handling of the above exception", "The above exception was the direct")):
            continue
        if set(stripped) == {"="} and len(stripped) > 20:
            in_report = not in_report
            failure = failure or RankFailure()
            continue
        if in_report:
            if stripped.startswith("Root Cause"):
                failure = RankFailure()  # the report lists other failures first; the root cause is what matters
                continue
            key, _, value = (part.strip() for part in stripped.partition(":"))
            if key == "rank" and failure.rank == "?":
                failure.rank = value.split()[0]
            elif key == "exitcode" and failure.exit_code == "?":
                failure.exit_code = value.split()[0]
            elif key == "traceback" and "Signal" in value and failure.signal_name is None:
                found = [word.strip("()") for word in value.split() if word.strip("()").startswith("SIG")]
                failure.signal_name = found[0] if found else None
            continue
        if _TORCHRUN_LOG.match(line):
            continue
        forward(raw)
    return failure


_RANK_PREFIX = re.compile(r"^\[rank\d+\]: ?")
_TORCHRUN_LOG = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d")  # torch.distributed.elastic's log lines


def launch(command: Sequence[str], nproc_per_node: int) -> tuple[int, RankFailure | None]:
    """Run torchrun; its exit code (130 after Ctrl-C) and, if a rank failed, what failed. Each rank gets an
    equal share of the cores as OpenMP threads (torchrun would otherwise force 1 thread per rank and say so
    in a warning). The ranks' stderr passes through ``filter_launcher_stderr``.

    Ctrl-C in a terminal reaches torchrun and every rank (one process group): the ranks agree to stop at the
    end of the epoch and rank 0 saves a checkpoint, while torchrun waits for them. This process only waits
    too, instead of killing torchrun as ``subprocess.run`` would."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(default_torch_threads(World(local_world_size=nproc_per_node))))
    interrupted: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))
    try:
        with subprocess.Popen(list(command), env=env, stderr=subprocess.PIPE, text=True, bufsize=1) as process:
            failure = filter_launcher_stderr(process.stderr, lambda line: (sys.stderr.write(line), sys.stderr.flush()))
            code = process.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted:
        return 130, None
    return code, (failure if code != 0 else None)
