"""Many mettagrid environments stepped as one batch of agents.

Row layout
----------
Every per-agent array has ``N = num_envs * agents_per_env`` rows; agent ``a`` of env ``e`` is row
``e * agents_per_env + a``. The C++ engine of env ``e`` is bound (mettagrid ``Buffers``) to the row slice
``[e * A, (e + 1) * A)`` of the batch arrays: it writes observations, rewards and flags straight into them
and reads its actions from the batch action array. Nothing is copied per step.

Auto-reset
----------
When an env's episode ends on a step, that step's rewards, terminals and truncations are returned as the
engine wrote them, but the env is replaced at once by a new simulation, so the returned observation rows are
already the *first* observation of the next episode. A set flag therefore means "this observation starts a
new episode" (docs/design.md, "Policy contract"). An episode ends when all of the env's agents are truncated or all are
terminal (mettagrid's own rule), or when the first episode's staggered cut-off is reached.

Seeds
-----
Episode ``k`` of env ``e`` uses the seed ``episode_seed(seed, e, k)`` (``seeding.py``) for both the map
builder (its ``seed`` field, when it has one: mettagrid's ``Simulation`` does not pass its own seed to the
map builder) and the C++ engine, in a new simulation per episode. Maps therefore differ per env and per
episode, and a run is reproducible. The staggered cut-off of env ``e``'s first episode is drawn from
``(seed, e)`` too.

Workers
-------
``num_workers=0`` steps every env in this process. ``num_workers=K`` splits the envs into K contiguous
groups, each stepped by its own process; the batch arrays then live in a shared memory mapping, so workers
write observations directly into the arrays the caller reads. The C++ step holds the GIL, so threads would
not help. Commands and finished-episode statistics travel over one pipe per worker. Workers die with their
parent (``PR_SET_PDEATHSIG`` on Linux, and end-of-file on their pipe) and are joined by :meth:`VecEnv.close`.

Asynchronous steps
------------------
:meth:`VecEnv.step_async` starts a step of some rows' envs and returns at once; :meth:`VecEnv.step_wait`
waits for it. With workers, ``rows`` may be one of :meth:`VecEnv.worker_row_groups`, so the caller can
compute actions for one group while the other group's workers step (double buffering). Without workers
``step_async`` steps every env before it returns.
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
import mettagrid.config.mettagrid_c_config as mettagrid_c_config
from mettagrid.config.mettagrid_config import MettaGridConfig
from mettagrid.mettagrid_c import MettaGrid as MettaGridCpp
from mettagrid.mettagrid_c import (
    dtype_actions,
    dtype_masks,
    dtype_observations,
    dtype_rewards,
    dtype_terminals,
    dtype_truncations,
)
from mettagrid.policy.policy_env_interface import PolicyEnvInterface
from mettagrid.simulator.simulator import Buffers, Simulation

from metta_agent.seeding import episode_seed, first_episode_cutoff

__all__ = ["VecEnv"]

_EMPTY: list[dict[str, float]] = []


class _EnvGroup:
    """A contiguous range of envs stepped in this process over caller-owned batch array slices.

    ``obs``, ``rewards``, ``terminals``, ``truncations`` and ``actions`` hold exactly this group's rows.
    """

    def __init__(
        self,
        game: MettaGridConfig,
        env_indices: Sequence[int],
        seed: int,
        stagger: bool,
        stat_keys: dict[str, str],
        obs: np.ndarray,
        rewards: np.ndarray,
        terminals: np.ndarray,
        truncations: np.ndarray,
        actions: np.ndarray,
    ):
        # Private copy: the map builder's seed is set per episode (read only while a Simulation is built).
        self._game = game.model_copy(deep=True)
        self._seedable_map = hasattr(self._game.game.map_builder, "seed")
        self._env_indices = [int(e) for e in env_indices]  # global indices: they pick seeds and cut-offs
        self._seed = int(seed)
        self._stagger = bool(stagger)
        self._stat_items = list(stat_keys.items())
        self._max_steps = int(self._game.game.max_steps)
        # Fast path: drive the C++ engine directly. mettagrid's Simulation adds ~35 us of Python per step
        # (timers, talk channel, event handlers) and re-converts the config to C++ for every episode; we
        # convert once and build engines ourselves. Games that use features implemented in those Python
        # handlers (talk, end_episode_on_game_stats) go through Simulation.
        g = self._game.game
        self._fast = not g.talk.enabled and not g.end_episode_on_game_stats
        if self._fast:
            self._c_cfg, self._agent_renames = mettagrid_c_config.convert_to_cpp_game_config(g)

        E = len(self._env_indices)
        A = int(g.num_agents)
        self.num_envs, self.agents_per_env = E, A
        self._obs, self._rewards = obs, rewards
        self._terminals, self._truncations = terminals, truncations
        self._terminals2d = terminals.reshape(E, A)
        self._truncations2d = truncations.reshape(E, A)
        self._buffers = [
            Buffers(
                observations=obs[i * A : (i + 1) * A],
                terminals=terminals[i * A : (i + 1) * A],
                truncations=truncations[i * A : (i + 1) * A],
                rewards=rewards[i * A : (i + 1) * A],
                masks=np.ones(A, dtype=dtype_masks),
                actions=actions[i * A : (i + 1) * A],
                teacher_actions=np.zeros(A, dtype=dtype_actions),  # also the (unused) vibe-action buffer
            )
            for i in range(E)
        ]
        self._sims: list[Simulation | None] = [None] * E  # slow path only
        self._engines: list[MettaGridCpp | None] = [None] * E
        self._steppers: list[Any] = [None] * E
        self._episode = np.zeros(E, dtype=np.int64)  # index of the episode each env is playing
        self._ep_return = np.zeros(E * A, dtype=np.float64)
        self._ep_len = np.zeros(E, dtype=np.int64)
        self._cutoff = np.zeros(E, dtype=np.int64)
        self._cutoffs_left = 0
        # Envs restarted on the last step, whose rows still show the final step's flags (see step()).
        self._restarted = np.zeros(E, dtype=bool)
        self._any_restarted = False

    # -- lifecycle ---------------------------------------------------------------------------------

    def reset(self) -> None:
        """(Re)start every env at its first episode; writes the first observations."""
        self.close()
        self._episode[:] = 0
        self._ep_return[:] = 0.0
        self._ep_len[:] = 0
        self._rewards[:] = 0.0
        self._terminals[:] = False
        self._truncations[:] = False
        self._restarted[:] = False
        self._any_restarted = False
        for i, e in enumerate(self._env_indices):
            self._cutoff[i] = first_episode_cutoff(self._seed, e, self._max_steps) if self._stagger else 0
            self._start(i)
        self._cutoffs_left = int(np.count_nonzero(self._cutoff))

    def close(self) -> None:
        for i in range(self.num_envs):
            self._close_env(i)

    def _close_env(self, i: int) -> None:
        sim = self._sims[i]
        if sim is not None:
            sim.close()
        self._sims[i] = None
        self._engines[i] = None
        self._steppers[i] = None

    def _start(self, i: int) -> None:
        k = int(self._episode[i])
        s = episode_seed(self._seed, self._env_indices[i], k)
        if self._seedable_map:
            self._game.game.map_builder.seed = s
        b = self._buffers[i]
        if self._fast:
            # What Simulation.__init__ does, minus re-converting the config to C++ (1-6 ms per episode).
            grid = self._game.game.map_builder.create().build_for_num_agents(self.agents_per_env).grid.tolist()
            if self._agent_renames:
                grid = mettagrid_c_config.rename_map_agents(grid, self._agent_renames)
            engine = MettaGridCpp(self._c_cfg, grid, s)
            # set_buffers zeroes the rewards and flags and writes the first observation.
            engine.set_buffers(b.observations, b.terminals, b.truncations, b.rewards, b.actions, b.vibe_actions)
            self._engines[i] = engine
            self._steppers[i] = engine.step
        else:
            sim = Simulation(self._game, seed=s, buffers=b)  # the same, through mettagrid's Python layer
            self._sims[i] = sim
            self._engines[i] = sim._c_sim
            self._steppers[i] = sim.step
        self._episode[i] = k + 1

    # -- stepping ----------------------------------------------------------------------------------

    def step(self) -> list[dict[str, float]]:
        """Step every env once (actions already in the action array); returns finished agent-episodes."""
        if self._any_restarted:
            # The engine only ever sets flags (it never clears them), and it treats them as state: clear
            # the final-step flags that were kept visible for the caller before the new episode steps.
            self._terminals2d[self._restarted] = False
            self._truncations2d[self._restarted] = False
            self._restarted[:] = False
            self._any_restarted = False
        for stepper in self._steppers:
            stepper()
        self._ep_return += self._rewards
        self._ep_len += 1
        if self._cutoffs_left:
            hit = self._ep_len == self._cutoff
            if hit.any():
                self._truncations2d[hit] = True
        done = self._truncations2d.all(axis=1)
        done |= self._terminals2d.all(axis=1)
        if not done.any():
            return _EMPTY
        stats: list[dict[str, float]] = []
        for i in np.flatnonzero(done).tolist():
            self._finish_episode(i, stats)
        self._restarted |= done
        self._any_restarted = True
        return stats

    def _finish_episode(self, i: int, stats: list[dict[str, float]]) -> None:
        A = self.agents_per_env
        rows = slice(i * A, (i + 1) * A)
        c_sim = self._engines[i]
        assert c_sim is not None
        length = int(self._ep_len[i])
        returns = self._ep_return[rows].tolist()
        for a in range(A):
            d: dict[str, float] = {"episode_return": returns[a], "episode_length": length}
            for metric, stat in self._stat_items:
                v = c_sim.get_agent_stat(a, stat)
                d[metric] = 0.0 if v is None else float(v)
            stats.append(d)
        # A new Simulation zeroes rewards and flags in its buffers: keep the final step's values visible
        # until the next step (which clears the flags again before stepping the new episode).
        rewards = self._rewards[rows].copy()
        terminals = self._terminals[rows].copy()
        truncations = self._truncations[rows].copy()
        self._close_env(i)
        self._start(i)
        self._rewards[rows] = rewards
        self._terminals[rows] = terminals
        self._truncations[rows] = truncations
        self._ep_return[rows] = 0.0
        self._ep_len[i] = 0
        if self._cutoff[i]:
            self._cutoff[i] = 0
            self._cutoffs_left -= 1


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
    game: MettaGridConfig,
    env_lo: int,
    env_hi: int,
    first_env_index: int,
    seed: int,
    stagger: bool,
    stat_keys: dict[str, str],
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
        A = int(game.game.num_agents)
        rows = slice((env_lo - first_env_index) * A, (env_hi - first_env_index) * A)
        group = _EnvGroup(
            game,
            range(env_lo, env_hi),
            seed,
            stagger,
            stat_keys,
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
                stats = _EMPTY
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


class VecEnv:
    """Many mettagrid envs stepped as one batch of agents (rows = env_index * agents_per_env + agent).

    Args:
        game: the game config (``change_vibe`` should be disabled; ``episode_truncates=True`` recommended).
        num_envs: number of independent envs.
        seed: non-negative run seed; episode ``k`` of env ``e`` uses ``episode_seed(seed, e, k)``.
        num_workers: 0 = step all envs in this process; K > 0 = K worker processes (shared memory).
        stagger_first_episodes: cut each env's first episode at a random step in ``[1, max_steps]``
            (reported as truncation), so envs restart at different steps. Later episodes are full length.
        stat_keys: ``{metric: engine per-agent stat name}`` added to every finished agent-episode's stats.
        start_method: multiprocessing start method for workers (default ``"fork"`` where available:
            workers only run mettagrid, never torch; ``"spawn"`` works too, at ~1 s start-up per worker).
        first_env_index: global index of this batch's first env, for seeds and cut-offs. Data-parallel
            rank ``r`` passes ``r * num_envs``, so the ranks together play the envs one process with
            ``world_size * num_envs`` envs would play, and no two ranks play the same maps.

    The arrays returned by :meth:`reset` and :meth:`step` are views of internal buffers that the next
    ``step``/``reset`` overwrites (in worker mode they live in shared memory): copy what you keep.
    """

    def __init__(
        self,
        game: MettaGridConfig,
        num_envs: int,
        seed: int = 0,
        num_workers: int = 0,
        stagger_first_episodes: bool = True,
        stat_keys: dict[str, str] | None = None,
        start_method: str | None = None,
        first_env_index: int = 0,
    ):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if first_env_index < 0:
            raise ValueError(f"first_env_index must be >= 0, got {first_env_index}")
        self._closed = True  # until fully built, so __del__/close() of a half-built object are safe
        self._procs: list[Any] = []
        self._conns: list[Any] = []
        self._group: _EnvGroup | None = None
        self._buf: mmap.mmap | None = None

        interface = PolicyEnvInterface.from_mg_cfg(game)
        self.env_interface = interface
        self.game = game
        self.num_envs = int(num_envs)
        self.agents_per_env = int(game.game.num_agents)
        self.num_agents = self.num_envs * self.agents_per_env
        self.obs_shape: tuple[int, int] = (int(interface.observation_shape[0]), int(interface.observation_shape[1]))
        self.obs_height, self.obs_width = int(interface.obs_height), int(interface.obs_width)
        self.action_names: list[str] = list(interface.action_names)
        self.features: list[tuple[int, str, float]] = [
            (int(f.id), str(f.name), float(f.normalization)) for f in interface.obs_features
        ]
        self.max_steps = int(game.game.max_steps)
        self.seed = int(seed)
        self.stat_keys: dict[str, str] = dict(stat_keys or {})
        self.num_workers = min(int(num_workers), self.num_envs)
        self._stagger = bool(stagger_first_episodes)
        self.first_env_index = int(first_env_index)
        self._pending_stats: list[dict[str, float]] = []
        self._started = False
        # Envs of each worker ([lo, hi) local indices) and the workers stepping now (sent, not yet waited for).
        self._worker_bounds: list[int] = [0, self.num_envs]
        self._in_flight: set[int] = set()
        self._serial_in_flight = False

        n = self.num_agents
        if self.num_workers == 0:
            self._obs = np.zeros((n, *self.obs_shape), dtype=dtype_observations)
            self._rewards = np.zeros(n, dtype=dtype_rewards)
            self._terminals = np.zeros(n, dtype=dtype_terminals)
            self._truncations = np.zeros(n, dtype=dtype_truncations)
            self._actions = np.zeros(n, dtype=dtype_actions)
            self._group = _EnvGroup(
                game,
                range(self.first_env_index, self.first_env_index + self.num_envs),
                self.seed,
                self._stagger,
                self.stat_keys,
                self._obs,
                self._rewards,
                self._terminals,
                self._truncations,
                self._actions,
            )
            self._closed = False
        else:
            self._start_workers(game, start_method)

    # -- workers -----------------------------------------------------------------------------------

    def _start_workers(self, game: MettaGridConfig, start_method: str | None) -> None:
        if start_method is None:
            start_method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        ctx = mp.get_context(start_method)
        layout, size = _layout(self.num_agents, self.obs_shape)
        path = os.path.join(_shm_dir(), f"metta_vecenv_{os.getpid()}_{uuid.uuid4().hex}")
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, size)
            self._buf = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self._closed = False  # from here on close() must clean up
        try:
            arr = _views(self._buf, layout)
            self._obs, self._rewards = arr["obs"], arr["rewards"]
            self._terminals, self._truncations, self._actions = arr["terminals"], arr["truncations"], arr["actions"]
            bounds = np.linspace(0, self.num_envs, self.num_workers + 1).round().astype(int).tolist()
            self._worker_bounds = bounds
            fork = start_method == "fork"
            for w in range(self.num_workers):
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
                        game,
                        self.first_env_index + bounds[w],
                        self.first_env_index + bounds[w + 1],
                        self.first_env_index,
                        self.seed,
                        self._stagger,
                        self.stat_keys,
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

    def _recv(self, w: int) -> bytes:
        try:
            return self._conns[w].recv_bytes()
        except (EOFError, OSError) as exc:
            code = self._procs[w].exitcode if w < len(self._procs) else None
            self.close()
            raise RuntimeError(f"VecEnv worker {w} died (exit code {code})") from exc

    def _broadcast(self, cmd: bytes) -> None:
        workers = range(len(self._conns))
        self._send(cmd, workers)
        self._collect(workers)

    def _send(self, cmd: bytes, workers: Sequence[int]) -> None:
        for w in workers:
            try:
                self._conns[w].send_bytes(cmd)
            except (BrokenPipeError, OSError) as exc:
                self.close()
                raise RuntimeError(f"VecEnv worker {w} died") from exc

    def _collect(self, workers: Sequence[int]) -> None:
        """Wait for each worker's reply; keep its finished-episode stats, raise its error."""
        errors = []
        for w in workers:
            msg = self._recv(w)
            if not msg:
                continue
            if msg[:1] == b"E":
                errors.append(f"worker {w}:\n{pickle.loads(msg[1:])}")
            else:
                self._pending_stats.extend(pickle.loads(msg))
        if errors:
            raise RuntimeError("VecEnv worker error:\n" + "\n".join(errors))

    # -- public API --------------------------------------------------------------------------------

    def reset(self) -> np.ndarray:
        """Start every env at its first episode. Returns obs ``uint8 [N, M, 3]`` (an internal buffer).

        Calling it again restarts the run from scratch (same seeds, same staggered cut-offs)."""
        self._check_open()
        if self._in_flight:  # a step still running: let it finish, then forget it
            self._collect(sorted(self._in_flight))
            self._in_flight.clear()
        self._serial_in_flight = False
        self._pending_stats.clear()
        if self._group is not None:
            self._group.reset()
        else:
            self._broadcast(b"R")
        self._started = True
        return self._obs

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Apply ``actions`` (ints ``[N]``) and step every env once.

        Returns ``(obs uint8 [N, M, 3], rewards float32 [N], terminals bool [N], truncations bool [N])``.
        Where an env's episode ended on this step, rewards and flags are those of the final step and obs is
        already the first observation of the env's next episode. The arrays are internal buffers that the
        next call overwrites."""
        rows = slice(0, self.num_agents)
        self.step_async(actions, rows)
        return self.step_wait(rows)

    def worker_row_groups(self, count: int) -> list[slice]:
        """Split the workers into ``count`` contiguous groups; returns each group's agent rows.

        Each group can be stepped with :meth:`step_async` while the caller works on another one."""
        if not 1 <= count <= max(self.num_workers, 1):
            raise ValueError(f"cannot split {self.num_workers} workers into {count} groups")
        if self.num_workers == 0:
            return [slice(0, self.num_agents)]
        cut = np.linspace(0, self.num_workers, count + 1).round().astype(int).tolist()
        A = self.agents_per_env
        return [slice(self._worker_bounds[lo] * A, self._worker_bounds[hi] * A) for lo, hi in zip(cut[:-1], cut[1:])]

    def step_async(self, actions: np.ndarray, rows: slice | None = None) -> None:
        """Write ``actions`` for ``rows`` (all rows by default) and start stepping their envs.

        With workers ``rows`` must cover whole workers (see :meth:`worker_row_groups`) and the call returns
        at once; without workers it steps every env (``rows`` must then be all rows) before returning."""
        self._check_open()
        if not self._started:
            raise RuntimeError("call reset() before step()")
        rows = slice(0, self.num_agents) if rows is None else rows
        workers = self._workers_of(rows)
        actions = np.asarray(actions)
        if actions.shape != (rows.stop - rows.start,):
            raise ValueError(f"expected actions of shape ({rows.stop - rows.start},), got {actions.shape}")
        # Out-of-range actions are the engine's business: it counts them as invalid and does nothing.
        np.copyto(self._actions[rows], actions, casting="unsafe")
        if self._group is not None:
            stats = self._group.step()
            if stats:
                self._pending_stats.extend(stats)
            self._serial_in_flight = True
        else:
            busy = self._in_flight.intersection(workers)
            if busy:
                raise RuntimeError(f"workers {sorted(busy)} are still stepping: call step_wait() first")
            self._send(b"S", workers)
            self._in_flight.update(workers)

    def step_wait(self, rows: slice | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Wait for the step :meth:`step_async` started on ``rows``; returns those rows' arrays (see :meth:`step`)."""
        self._check_open()
        rows = slice(0, self.num_agents) if rows is None else rows
        workers = self._workers_of(rows)
        if self._group is not None:
            if not self._serial_in_flight:
                raise RuntimeError("step_wait() without step_async()")
            self._serial_in_flight = False
        else:
            if not self._in_flight.issuperset(workers):
                raise RuntimeError("step_wait() on rows that step_async() did not start")
            self._in_flight.difference_update(workers)
            self._collect(workers)
        if (rows.start, rows.stop) == (0, self.num_agents):  # the buffers themselves (zero copy, same objects)
            return self._obs, self._rewards, self._terminals, self._truncations
        return self._obs[rows], self._rewards[rows], self._terminals[rows], self._truncations[rows]

    def _workers_of(self, rows: slice) -> list[int]:
        """The workers whose envs are exactly ``rows`` (all rows when there are no workers)."""
        A = self.agents_per_env
        if rows.step not in (None, 1) or rows.start is None or rows.stop is None:
            raise ValueError(f"rows must be a contiguous slice with start and stop, got {rows}")
        if self._group is not None:
            if (rows.start, rows.stop) != (0, self.num_agents):
                raise ValueError("without workers every env steps together: rows must be all rows")
            return []
        bounds = [b * A for b in self._worker_bounds]
        if rows.start not in bounds or rows.stop not in bounds or rows.start >= rows.stop:
            raise ValueError(f"rows {rows.start}:{rows.stop} do not cover whole workers (boundaries {bounds})")
        return list(range(bounds.index(rows.start), bounds.index(rows.stop)))

    def pop_episode_stats(self) -> list[dict[str, float]]:
        """One dict per agent-episode finished since the last call, in env/agent order of finishing:
        ``{"episode_return", "episode_length", **{metric: engine stat at episode end}}``. Staggered
        (cut-short) first episodes are included."""
        stats, self._pending_stats = self._pending_stats, []
        return stats

    def engine(self, env_index: int) -> MettaGridCpp:
        """The C++ engine now playing env ``env_index`` (in-process envs only), for readers of the grid such
        as replay writers and renderers. Auto-reset replaces it when its episode ends, inside :meth:`step`:
        to read an episode's final state, keep the reference taken before that step."""
        self._check_open()
        if self._group is None:
            raise RuntimeError("engine() needs in-process envs (num_workers=0)")
        if not self._started:
            raise RuntimeError("call reset() before engine()")
        engine = self._group._engines[env_index]
        assert engine is not None
        return engine

    def close(self) -> None:
        """Stop workers (or close in-process simulations). Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        if self._group is not None:
            self._group.close()
            self._group = None
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

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("VecEnv is closed")

    def __enter__(self) -> "VecEnv":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return (
            f"VecEnv(num_envs={self.num_envs}, agents_per_env={self.agents_per_env}, "
            f"num_workers={self.num_workers}, seed={self.seed})"
        )
