"""MettaScope replay files of evaluation episodes, written by mettagrid's own replay writer.

mettagrid 0.26 records replays with ``EpisodeReplay`` (``mettagrid.simulator.replay_log_writer``): per step
it reads the grid objects, actions, action success and rewards, and at the end writes zlib-compressed JSON
(``.json.z``, format version 4, the format MettaScope loads). ``EpisodeReplay`` reads a ``Simulation``, but
``VecEnv`` drives the C++ engines directly, without one. :class:`EngineView` supplies the part of the
``Simulation`` interface that ``EpisodeReplay`` reads, from an engine and its game config, so the files
are exactly what mettagrid itself would write (a test compares the two on the same seed and actions).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from mettagrid.config.mettagrid_c_config import convert_to_cpp_game_config
from mettagrid.config.mettagrid_config import MettaGridConfig
from mettagrid.simulator.replay_log_writer import EpisodeReplay

from metta_agent.env.vecenv import VecEnv
from metta_agent.seeding import episode_seed
from metta_agent.games import with_map_seed

REPLAY_SUFFIX = ".json.z"


class EngineView:
    """What ``EpisodeReplay`` reads from a ``Simulation``, answered by a bare C++ engine.

    Talk (chat text) is a ``Simulation``-level feature that ``VecEnv``'s engine loop does not run, so no
    talk is recorded, and no per-agent policy infos are published (``_context`` stays empty).
    """

    def __init__(self, engine: Any, game: MettaGridConfig, seed: int):
        self._engine = engine
        self._game = game
        self._seed = int(seed)
        self._context: dict[str, Any] = {}

    @property
    def config(self) -> MettaGridConfig:
        return self._game

    @property
    def num_agents(self) -> int:
        return int(self._game.game.num_agents)

    @property
    def action_names(self) -> list[str]:
        return [action.name for action in self._game.game.actions.actions()]

    @property
    def resource_names(self) -> list[str]:
        return list(self._game.game.resource_names)

    @property
    def object_type_names(self) -> list[str]:
        return self._engine.object_type_names

    @property
    def map_width(self) -> int:
        return self._engine.map_width

    @property
    def map_height(self) -> int:
        return self._engine.map_height

    @property
    def current_step(self) -> int:
        return self._engine.current_step

    @property
    def action_success(self) -> list[bool]:
        return self._engine.action_success()

    @property
    def episode_stats(self) -> dict:
        return self._engine.get_episode_stats()

    @property
    def seed(self) -> int:
        return self._seed

    def talk_states(self) -> dict:
        return {}

    def grid_objects(self, bbox: Any = None, ignore_types: list[str] | None = None) -> dict[int, dict]:
        if bbox is not None:
            raise NotImplementedError("EngineView reads the whole map")
        return self._engine.grid_objects(-1, -1, -1, -1, list(ignore_types or []))


class ReplayRecorder:
    """Records the first episode of every env of a ``VecEnv`` (one episode per env, as evaluation runs
    them) and writes each to ``directory/<prefix>-episode<NNN>.json.z`` when it ends."""

    def __init__(self, directory: str | Path, prefix: str):
        self.directory = Path(directory)
        self.prefix = prefix
        self.paths: list[Path] = []
        self._replays: dict[int, tuple[EpisodeReplay, Any]] = {}
        self._agents_per_env = 0

    def start(self, env: VecEnv) -> None:
        """Called after ``env.reset()``: take each env's engine (kept to the end, see ``VecEnv.engine``)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._agents_per_env = env.agents_per_env
        self._replays = {}
        for index in range(env.num_envs):
            engine = env.engine(index)
            seed = episode_seed(env.seed, index, 0)
            view = EngineView(engine, _episode_config(env.game, seed), seed)
            self._replays[index] = (EpisodeReplay(view), engine)

    def after_step(self, actions: np.ndarray, rewards: np.ndarray, ended: np.ndarray) -> None:
        """Log the step each recorded env just took; write the replays of envs whose episode ``ended``."""
        agents = self._agents_per_env
        for index in list(self._replays):
            replay, engine = self._replays[index]
            rows = slice(index * agents, (index + 1) * agents)
            replay.log_step(engine.current_step, np.asarray(actions[rows]), np.asarray(rewards[rows], dtype=np.float64))
            if ended[index]:
                path = self.directory / f"{self.prefix}-episode{index:03d}{REPLAY_SUFFIX}"
                replay.write_replay(str(path))
                self.paths.append(path)
                del self._replays[index]


def _episode_config(game: MettaGridConfig, seed: int) -> MettaGridConfig:
    """The config as the episode ran it, as ``Simulation`` would hold it: ``VecEnv`` seeds the map builder
    with the episode seed, and converting a config for the engine normalises it in place (a per-agent
    ``agents`` list, from which ``EpisodeReplay`` takes the inventory capacity names)."""
    game = with_map_seed(game, seed) if hasattr(game.game.map_builder, "seed") else game.model_copy(deep=True)
    convert_to_cpp_game_config(game.game)
    return game
