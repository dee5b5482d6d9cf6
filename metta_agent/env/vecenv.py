"""Many mettagrid environments stepped as one batch of agents, in this process or in worker processes.

The layers, each in its own file:

- ``env_group.py``: ``EnvGroup`` steps a contiguous range of envs in one process, straight into batch
  arrays (auto-reset, seeds, staggered first episodes);
- ``workers.py``: ``WorkerPool`` runs K such groups in K processes over one shared-memory batch;
- this file: ``VecEnv``, the batch API callers use (reset, step, asynchronous steps of row groups).

Row layout
----------
Every per-agent array has ``N = num_envs * agents_per_env`` rows; agent ``a`` of env ``e`` is row
``e * agents_per_env + a``. Rows are agents: ``num_agents`` is ``N``. Where an env's episode ended on a
step, the returned flags are that step's and the observation rows already start the next episode
(``env_group.py``, "Auto-reset").

Workers
-------
``num_workers=0`` steps every env in this process. ``num_workers=K`` splits the envs into K contiguous
groups, each stepped by its own process (``workers.py``).

Asynchronous steps
------------------
:meth:`VecEnv.step_async` starts a step of some rows' envs and returns at once; :meth:`VecEnv.step_wait`
waits for it. With workers, ``rows`` may be one of :meth:`VecEnv.worker_row_groups`, so the caller can
compute actions for one group while the other group's workers step (double buffering). Without workers
``step_async`` steps every env before it returns.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from mettagrid.config.mettagrid_config import MettaGridConfig
from mettagrid.mettagrid_c import MettaGrid as MettaGridCpp
from mettagrid.mettagrid_c import (
    dtype_actions,
    dtype_observations,
    dtype_rewards,
    dtype_terminals,
    dtype_truncations,
)

from metta_agent.env.env_group import EnvGroup
from metta_agent.env.mixture import GameMix
from metta_agent.env.workers import WorkerPool

__all__ = ["VecEnv"]

TOKEN_SIZE = 3  # an observation token is (location, feature id, value)


class VecEnv:
    """Many mettagrid envs stepped as one batch of agents (rows = env_index * agents_per_env + agent).

    Args:
        game: the game config, or a :class:`GameMix` of games whose envs draw each episode's game by weight
            (its tokens presented in the mixture's feature space, ``info``).
        num_envs: number of independent envs.
        seed: non-negative run seed; episode ``k`` of env ``e`` uses ``episode_seed(seed, e, k)``.
        num_workers: 0 = step all envs in this process; K > 0 = K worker processes (shared memory).
        stagger_first_episodes: cut each env's first episode at a random step in ``[1, max_steps]``
            (reported as truncation), so envs restart at different steps. Later episodes are full length.
        stat_keys: ``{metric: engine per-agent stat name}`` added to every finished agent-episode's stats
            (default: each game's own, ``games.game_stat_keys``). In a mixture each is also reported as
            ``<game>/<metric>``, with ``<game>/episode_return`` and ``<game>/episode_length``.
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
        game: MettaGridConfig | GameMix,
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
        self._group: EnvGroup | None = None
        self._pool: WorkerPool | None = None

        mix = game if isinstance(game, GameMix) else GameMix.single(game)
        if stat_keys is not None:
            mix = mix.with_stat_keys(stat_keys)
        self.mix = mix
        self.game = mix.games[0]
        self.info = mix.info  # the game as policies see it: features, actions, geometry
        self.num_envs = int(num_envs)
        self.agents_per_env = self.info.agents_per_env
        self.num_agents = self.num_envs * self.agents_per_env
        self.obs_shape: tuple[int, int] = (self.info.num_tokens, TOKEN_SIZE)
        self.max_steps = max(int(g.game.max_steps) for g in mix.games)
        self.seed = int(seed)
        self.num_workers = min(int(num_workers), self.num_envs)
        self.first_env_index = int(first_env_index)
        self._pending_stats: list[dict[str, float]] = []
        self._started = False
        # Envs of each worker ([lo, hi) local indices) and the workers stepping now (sent, not yet waited for).
        self._worker_bounds: list[int] = [0, self.num_envs]
        self._in_flight: set[int] = set()
        self._serial_in_flight = False

        stagger = bool(stagger_first_episodes)
        if self.num_workers == 0:
            n = self.num_agents
            self._obs = np.zeros((n, *self.obs_shape), dtype=dtype_observations)
            self._rewards = np.zeros(n, dtype=dtype_rewards)
            self._terminals = np.zeros(n, dtype=dtype_terminals)
            self._truncations = np.zeros(n, dtype=dtype_truncations)
            self._actions = np.zeros(n, dtype=dtype_actions)
            envs = range(self.first_env_index, self.first_env_index + self.num_envs)
            self._group = EnvGroup(mix, envs, self.seed, stagger, self._obs, self._rewards, self._terminals,
                                   self._truncations, self._actions)
        else:
            pool = WorkerPool(mix, self.num_envs, self.num_workers, self.obs_shape, self.first_env_index,
                              self.seed, stagger, start_method)
            self._pool = pool
            self._obs, self._rewards, self._actions = pool.obs, pool.rewards, pool.actions
            self._terminals, self._truncations = pool.terminals, pool.truncations
            self._worker_bounds = pool.bounds
        self._closed = False

    def _collect(self, workers: Sequence[int]) -> None:
        """Wait for ``workers`` to answer; keep their finished-episode stats."""
        assert self._pool is not None
        self._pending_stats.extend(self._pool.collect(workers))

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
            assert self._pool is not None
            workers = range(self._pool.num_workers)
            self._pool.send(b"R", workers)
            self._collect(workers)
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
            assert self._pool is not None
            self._pool.send(b"S", workers)
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
        return self._group.engine(env_index)

    def close(self) -> None:
        """Stop workers (or close in-process simulations). Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        if self._group is not None:
            self._group.close()
            self._group = None
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def _check_open(self) -> None:
        if self._pool is not None and self._pool.closed:  # a worker died
            self.close()
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
