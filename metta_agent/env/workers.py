"""Worker processes that step envs over one shared-memory batch, and the protocol they speak.

``WorkerPool`` splits a batch of envs into K contiguous ranges, each stepped by its own process as an
``EnvGroup``. The batch arrays live in a shared memory mapping, so workers write observations directly into
the arrays the caller reads. The C++ step holds the GIL, so threads would not help.

Protocol: one duplex pipe per worker. The parent sends one byte, ``R`` (reset), ``S`` (step) or ``C``
(close); the worker answers each ``R``/``S`` with the pickled list of agent-episodes that finished (empty
bytes when none), or ``E`` + a pickled traceback. Workers die with their parent (``PR_SET_PDEATHSIG`` on
Linux, and end-of-file on their pipe) and are joined by :meth:`WorkerPool.close`.
"""

from __future__ import annotations

import ctypes
import mmap
import multiprocessing as mp
import os
import pickle
import signal
import sys
import tempfile
import traceback
import uuid
from typing import Any, Sequence

import numpy as np
from mettagrid.mettagrid_c import (
    dtype_actions,
    dtype_observations,
    dtype_rewards,
    dtype_terminals,
    dtype_truncations,
)

from metta_agent.env.env_group import NO_STATS, EnvGroup
from metta_agent.env.mixture import GameMix

# -- shared memory layout ----------------------------------------------------------------------------

_ALIGN = 64


def _layout(n: int, obs_shape: tuple[int, int]) -> tuple[dict[str, tuple[int, tuple[int, ...], np.dtype]], int]:
    specs = [
        ("obs", (n, *obs_shape), np.dtype(dtype_observations)),
        ("rewards", (n,), np.dtype(dtype_rewards)),
        ("terminals", (n,), np.dtype(dtype_terminals)),
        ("truncations", (n,), np.dtype(dtype_truncations)),
        ("actions", (n,), np.dtype(dtype_actions)),
    ]
    layout, offset = {}, 0
    for name, shape, dtype in specs:
        layout[name] = (offset, shape, dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        offset += (nbytes + _ALIGN - 1) // _ALIGN * _ALIGN
    return layout, max(offset, _ALIGN)


def _views(buf: mmap.mmap, layout: dict[str, tuple[int, tuple[int, ...], np.dtype]]) -> dict[str, np.ndarray]:
    return {
        name: np.frombuffer(buf, dtype=dtype, count=int(np.prod(shape)), offset=offset).reshape(shape)
        for name, (offset, shape, dtype) in layout.items()
    }


def _shm_dir() -> str:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this process when its parent dies (no-op elsewhere)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _worker_main(
    conn: Any,
    inherited: list[Any],
    parent_pid: int,
    shm_path: str,
    shm_size: int,
    layout: dict[str, tuple[int, tuple[int, ...], np.dtype]],
    mix: GameMix,
    env_lo: int,
    env_hi: int,
    first_env_index: int,
    seed: int,
    stagger: bool,
) -> None:
    for c in inherited:  # parent-side pipe ends copied by fork: close them so EOF reaches us
        c.close()
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    try:
        fd = os.open(shm_path, os.O_RDWR)
        try:
            buf = mmap.mmap(fd, shm_size)
        finally:
            os.close(fd)
        arr = _views(buf, layout)
        A = mix.info.agents_per_env
        rows = slice((env_lo - first_env_index) * A, (env_hi - first_env_index) * A)
        group = EnvGroup(
            mix,
            range(env_lo, env_hi),
            seed,
            stagger,
            arr["obs"][rows],
            arr["rewards"][rows],
            arr["terminals"][rows],
            arr["truncations"][rows],
            arr["actions"][rows],
        )
        conn.send_bytes(b"ok")
    except BaseException:
        conn.send_bytes(b"E" + pickle.dumps(traceback.format_exc()))
        return
    while True:
        try:
            cmd = conn.recv_bytes()
        except (EOFError, OSError):
            break
        if cmd == b"C":
            break
        try:
            if cmd == b"S":
                stats = group.step()
            elif cmd == b"R":
                group.reset()
                stats = NO_STATS
            else:
                raise ValueError(f"unknown command {cmd!r}")
            reply = pickle.dumps(stats, protocol=pickle.HIGHEST_PROTOCOL) if stats else b""
        except Exception:
            reply = b"E" + pickle.dumps(traceback.format_exc())
        try:
            conn.send_bytes(reply)
        except (BrokenPipeError, OSError):
            break
    group.close()
    conn.close()


class WorkerPool:
    """``num_workers`` processes stepping ``num_envs`` envs (global indices from ``first_env_index``) over a
    shared batch of ``num_envs * agents_per_env`` rows: ``obs``, ``rewards``, ``terminals``, ``truncations``
    and ``actions`` are the arrays. Worker ``w`` steps envs ``bounds[w]:bounds[w + 1]`` (local indices).

    A worker that dies closes the pool (``closed`` turns true) and raises ``RuntimeError`` naming it.
    """

    def __init__(
        self,
        mix: GameMix,
        num_envs: int,
        num_workers: int,
        obs_shape: tuple[int, int],
        first_env_index: int,
        seed: int,
        stagger: bool,
        start_method: str | None = None,
    ):
        self.closed = False
        self._procs: list[Any] = []
        self._conns: list[Any] = []
        if start_method is None:
            start_method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        ctx = mp.get_context(start_method)
        agents = num_envs * mix.info.agents_per_env
        layout, size = _layout(agents, obs_shape)
        path = os.path.join(_shm_dir(), f"metta_vecenv_{os.getpid()}_{uuid.uuid4().hex}")
        self._buf: mmap.mmap | None = None
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            try:
                os.ftruncate(fd, size)
                self._buf = mmap.mmap(fd, size)
            finally:
                os.close(fd)
            arr = _views(self._buf, layout)
            self.obs, self.rewards = arr["obs"], arr["rewards"]
            self.terminals, self.truncations, self.actions = arr["terminals"], arr["truncations"], arr["actions"]
            self.bounds: list[int] = np.linspace(0, num_envs, num_workers + 1).round().astype(int).tolist()
            fork = start_method == "fork"
            for w in range(num_workers):
                parent_conn, child_conn = ctx.Pipe(duplex=True)
                self._conns.append(parent_conn)
                proc = ctx.Process(
                    target=_worker_main,
                    args=(
                        child_conn,
                        list(self._conns) if fork else [],
                        os.getpid(),
                        path,
                        size,
                        layout,
                        mix,
                        first_env_index + self.bounds[w],
                        first_env_index + self.bounds[w + 1],
                        first_env_index,
                        seed,
                        stagger,
                    ),
                    name=f"metta-vecenv-{w}",
                    daemon=True,
                )
                proc.start()
                child_conn.close()
                self._procs.append(proc)
            errors = []
            for w, conn in enumerate(self._conns):
                if not conn.poll(120):
                    errors.append(f"worker {w} did not start within 120 s")
                    continue
                msg = self._recv(w)
                if msg != b"ok":
                    errors.append(f"worker {w}: {pickle.loads(msg[1:]) if msg[:1] == b'E' else msg!r}")
            if errors:
                raise RuntimeError("VecEnv workers failed to start:\n" + "\n".join(errors))
        except BaseException:
            self.close()
            raise
        finally:
            try:
                os.unlink(path)  # every worker has mapped it (or failed); the mapping outlives the name
            except FileNotFoundError:
                pass

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc in self._procs]

    @property
    def num_workers(self) -> int:
        return len(self.bounds) - 1

    def send(self, cmd: bytes, workers: Sequence[int]) -> None:
        """Send a command (``R`` or ``S``) to each of ``workers``; :meth:`collect` waits for their answers."""
        for w in workers:
            try:
                self._conns[w].send_bytes(cmd)
            except (BrokenPipeError, OSError) as exc:
                self.close()
                raise RuntimeError(f"VecEnv worker {w} died") from exc

    def collect(self, workers: Sequence[int]) -> list[dict[str, float]]:
        """Wait for each worker's answer; returns their finished agent-episodes, raises their errors."""
        errors, stats = [], []
        for w in workers:
            msg = self._recv(w)
            if not msg:
                continue
            if msg[:1] == b"E":
                errors.append(f"worker {w}:\n{pickle.loads(msg[1:])}")
            else:
                stats.extend(pickle.loads(msg))
        if errors:
            raise RuntimeError("VecEnv worker error:\n" + "\n".join(errors))
        return stats

    def _recv(self, w: int) -> bytes:
        try:
            return self._conns[w].recv_bytes()
        except (EOFError, OSError) as exc:
            code = self._procs[w].exitcode if w < len(self._procs) else None
            self.close()
            raise RuntimeError(f"VecEnv worker {w} died (exit code {code})") from exc

    def close(self) -> None:
        """Stop and join the workers. Safe to call more than once."""
        self.closed = True
        for conn in self._conns:
            try:
                conn.send_bytes(b"C")
            except (BrokenPipeError, OSError):
                pass
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=2)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for conn in self._conns:
            conn.close()
        self._procs, self._conns = [], []
        # The mapping is released when the last array view of it goes away (callers may still hold them).
        self._buf = None
