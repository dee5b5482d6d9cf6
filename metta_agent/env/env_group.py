"""A contiguous range of mettagrid envs stepped in this process, written straight into batch arrays.

Row layout
----------
The group's envs write into caller-owned arrays of ``E * agents_per_env`` rows; agent ``a`` of the group's
env ``i`` is row ``i * agents_per_env + a``. Each C++ engine is bound (mettagrid ``Buffers``) to its row
slice: it writes observations, rewards and flags straight into the arrays and reads its actions from the
action array. Nothing is copied per step.

Auto-reset
----------
When an env's episode ends on a step, that step's rewards, terminals and truncations are returned as the
engine wrote them, but the env is replaced at once by a new simulation, so the returned observation rows are
already the *first* observation of the next episode. A set flag therefore means "this observation starts a
new episode" (docs/design.md, "Policy contract"). An episode ends when all of the env's agents are truncated
or all are terminal (mettagrid's own rule), or when the first episode's staggered cut-off is reached.

Seeds
-----
Episode ``k`` of env ``e`` (its global index) uses the seed ``episode_seed(seed, e, k)`` (``seeding.py``) for
both the map builder (its ``seed`` field, when it has one: mettagrid's ``Simulation`` does not pass its own
seed to the map builder) and the C++ engine, in a new simulation per episode. Maps therefore differ per env
and per episode, and a run is reproducible. The staggered cut-off of env ``e``'s first episode is drawn from
``(seed, e)`` too.

Mixtures
--------
The group plays a :class:`GameMix`: in a mixture, each episode's game is drawn from ``(seed, e, k)`` by
weight, and a game whose feature ids differ from the mixture's has its rows' tokens rewritten into the
mixture's feature space after every step and at every episode start (``env/mixture.py``).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import mettagrid.config.mettagrid_c_config as mettagrid_c_config
from mettagrid.config.mettagrid_config import MettaGridConfig
from mettagrid.mettagrid_c import MettaGrid as MettaGridCpp
from mettagrid.mettagrid_c import dtype_actions, dtype_masks
from mettagrid.simulator.simulator import Buffers, Simulation

from metta_agent.env.mixture import GameMix
from metta_agent.seeding import episode_seed, first_episode_cutoff

NO_STATS: list[dict[str, float]] = []


class _GameRunner:
    """One game of the mixture, made ready to start episodes from."""

    def __init__(self, game: MettaGridConfig):
        # Private copy: the map builder's seed is set per episode (read only while a Simulation is built).
        self.game = game.model_copy(deep=True)
        self.seedable_map = hasattr(self.game.game.map_builder, "seed")
        self.max_steps = int(self.game.game.max_steps)
        # Fast path: drive the C++ engine directly. mettagrid's Simulation adds ~35 us of Python per step
        # (timers, talk channel, event handlers) and re-converts the config to C++ for every episode; we
        # convert once and build engines ourselves. Games that use features implemented in those Python
        # handlers (talk, end_episode_on_game_stats) go through Simulation.
        g = self.game.game
        self.fast = not g.talk.enabled and not g.end_episode_on_game_stats
        if self.fast:
            self.c_cfg, self.agent_renames = mettagrid_c_config.convert_to_cpp_game_config(g)

    def seeded(self, seed: int) -> MettaGridConfig:
        """The game with its map builder seeded (the engine's own seed does not reach the map builder)."""
        if self.seedable_map:
            self.game.game.map_builder.seed = seed
        return self.game

    def grid(self, seed: int, agents: int) -> list:
        grid = self.seeded(seed).game.map_builder.create().build_for_num_agents(agents).grid.tolist()
        if self.agent_renames:
            grid = mettagrid_c_config.rename_map_agents(grid, self.agent_renames)
        return grid


class EnvGroup:
    """A contiguous range of envs stepped in this process over caller-owned batch array slices, playing the
    games of ``mix`` (each episode's game drawn by weight; tokens rewritten into the mixture's features).

    ``obs``, ``rewards``, ``terminals``, ``truncations`` and ``actions`` hold exactly this group's rows.
    """

    def __init__(
        self,
        mix: GameMix,
        env_indices: Sequence[int],
        seed: int,
        stagger: bool,
        obs: np.ndarray,
        rewards: np.ndarray,
        terminals: np.ndarray,
        truncations: np.ndarray,
        actions: np.ndarray,
    ):
        self._mix = mix
        self._games = [_GameRunner(game) for game in mix.games]
        self._env_indices = [int(e) for e in env_indices]  # global indices: they pick seeds and cut-offs
        self._seed = int(seed)
        self._stagger = bool(stagger)
        # For a mixture, every stat is also reported under its game's name ("<game>/hearts").
        self._stat_items = [list(keys.items()) for keys in mix.stat_keys]
        self._prefixes = [f"{label}/" for label in mix.labels] if mix.is_mixture else None
        self._remaps_tokens = any(remap is not None for remap in mix.remaps)

        E = len(self._env_indices)
        A = mix.info.agents_per_env
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
        self._playing = np.zeros(E, dtype=np.int64)  # index (in the mixture) of the game each env is playing
        self._remapped: list[int] = []  # envs whose game's tokens are rewritten into the mixture's features
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
            self._start(i)
            max_steps = self._games[self._playing[i]].max_steps
            self._cutoff[i] = first_episode_cutoff(self._seed, e, max_steps) if self._stagger else 0
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
        e = self._env_indices[i]
        s = episode_seed(self._seed, e, k)
        g = self._mix.draw(self._seed, e, k)
        self._playing[i] = g
        runner = self._games[g]
        b = self._buffers[i]
        if runner.fast:
            # What Simulation.__init__ does, minus re-converting the config to C++ (1-6 ms per episode).
            engine = MettaGridCpp(runner.c_cfg, runner.grid(s, self.agents_per_env), s)
            # set_buffers zeroes the rewards and flags and writes the first observation.
            engine.set_buffers(b.observations, b.terminals, b.truncations, b.rewards, b.actions, b.vibe_actions)
            self._engines[i] = engine
            self._steppers[i] = engine.step
        else:
            sim = Simulation(runner.seeded(s), seed=s, buffers=b)  # the same, through mettagrid's Python layer
            self._sims[i] = sim
            self._engines[i] = sim._c_sim
            self._steppers[i] = sim.step
        self._episode[i] = k + 1
        if self._remaps_tokens:
            self._remapped = [j for j in range(self.num_envs) if self._mix.remaps[self._playing[j]] is not None]
            self._remap(i)

    def _remap(self, i: int) -> None:
        remap = self._mix.remaps[self._playing[i]]
        if remap is not None:
            A = self.agents_per_env
            remap.apply(self._obs[i * A : (i + 1) * A])

    def engine(self, i: int) -> MettaGridCpp:
        """The C++ engine now playing the group's env ``i`` (replaced when its episode ends)."""
        engine = self._engines[i]
        assert engine is not None, "reset() first"
        return engine

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
        for i in self._remapped:
            self._remap(i)
        self._ep_return += self._rewards
        self._ep_len += 1
        if self._cutoffs_left:
            hit = self._ep_len == self._cutoff
            if hit.any():
                self._truncations2d[hit] = True
        done = self._truncations2d.all(axis=1)
        done |= self._terminals2d.all(axis=1)
        if not done.any():
            return NO_STATS
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
        g = int(self._playing[i])
        for a in range(A):
            d: dict[str, float] = {"episode_return": returns[a], "episode_length": length}
            for metric, stat in self._stat_items[g]:
                v = c_sim.get_agent_stat(a, stat)
                d[metric] = 0.0 if v is None else float(v)
            if self._prefixes is not None:
                d.update({self._prefixes[g] + name: value for name, value in list(d.items())})
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


