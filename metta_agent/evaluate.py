"""Evaluation: the trained agent against a uniform-random policy on the same seeds.

Each of ``episodes`` envs plays one episode, all in parallel. Observers (a replay recorder, an ASCII
renderer) follow the trained agent's episodes only; the random baseline runs unobserved.

Across games, the agent is re-initialised to the evaluation game: features are matched by name (a feature
the agent was not built with is dropped, because its input width is fixed), and each action keeps its
embedding by name. An action the agent was never trained with gets a free, untrained embedding row: the
agent can choose it, with a logit from that row's initial weights. The result lists both
(``dropped_features``, ``untrained_actions``) so that a cross-game score can be read for what it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import torch
from tensordict import TensorDict

from metta_agent import contract as keys
from metta_agent.agent.metta_agent import MettaAgent
from metta_agent.env import VecEnv
from metta_agent.env.info import EnvInfo
from metta_agent.games import game_stat_keys

EVAL_SEED_OFFSET = 1_000_000  # evaluation maps differ from the ones a default training run used


class EpisodeObserver(Protocol):
    """Follows the first episode of some envs of an evaluation run."""

    def start(self, env: VecEnv) -> None:
        """Called after ``env.reset()``, before the first step."""

    def after_step(self, actions: np.ndarray, rewards: np.ndarray, ended: np.ndarray) -> None:
        """Called after every step with its actions and rewards ``[N]`` and, per env, whether its episode
        ended on this step."""


def run_episodes(game, episodes: int, seed: int, agent: MettaAgent | None, greedy: bool = False,
                 observers: Sequence[EpisodeObserver] = ()) -> list[dict[str, float]]:
    """Run ``episodes`` full episodes (one per env, all in parallel); ``agent=None`` acts uniformly at random.

    ``greedy`` makes the agent take its most probable action instead of sampling one."""
    rng = np.random.default_rng(seed)
    with VecEnv(game, num_envs=episodes, seed=seed + EVAL_SEED_OFFSET, stagger_first_episodes=False,
                stat_keys=game_stat_keys(game)) as env:
        obs = torch.from_numpy(env.reset())
        starts = torch.ones(env.num_agents, dtype=torch.bool)
        for observer in observers:
            observer.start(env)
        finished: list[dict[str, float]] = []
        if agent is not None:
            agent.reset_memory()
            agent.eval()
            was_greedy, agent.greedy = agent.greedy, greedy
        env_done = np.zeros(env.num_envs, dtype=bool)
        try:
            while not env_done.all():
                if agent is None:
                    actions = rng.integers(0, len(env.action_names), size=env.num_agents)
                else:
                    with torch.inference_mode():
                        td = TensorDict({keys.ENV_OBS: obs, keys.DONES: starts,
                                         keys.TRAINING_ENV_IDS: torch.arange(env.num_agents)},
                                        batch_size=[env.num_agents])
                        actions = agent(td)[keys.ACTIONS].numpy()
                next_obs, rewards, terminals, truncations = env.step(actions)
                ended = (terminals | truncations).reshape(env.num_envs, env.agents_per_env).all(axis=1)
                for observer in observers:
                    observer.after_step(actions, rewards, ended)
                env_done |= ended
                finished.extend(env.pop_episode_stats())
                obs = torch.from_numpy(next_obs)
                starts = torch.from_numpy(terminals | truncations)
        finally:
            if agent is not None:
                agent.greedy = was_greedy
        return finished


def evaluate(agent: MettaAgent, game, episodes: int = 8, seed: int = 0, greedy: bool = False,
             replay_dir: str | Path | None = None, observers: Sequence[EpisodeObserver] = ()) -> dict[str, Any]:
    """Mean episode return, length and game stats of ``agent`` and of a random policy on ``game``.

    ``replay_dir`` writes one MettaScope replay per episode of the agent (listed under ``replays``);
    ``observers`` (e.g. :class:`metta_agent.render.AsciiRenderer`) follow the agent's episodes.
    """
    env = EnvInfo.from_game(game)
    dropped_features = [f.name for f in env.features if f.name not in agent.original_features]
    untrained_actions = [name for name in env.action_names if name not in agent.action_rows]
    agent.initialize_to_environment(env.features, env.action_names)
    observers = list(observers)
    recorder = None
    if replay_dir is not None:
        from metta_agent.replay import ReplayRecorder

        label = game.label or "game"
        recorder = ReplayRecorder(replay_dir, f"{label}-{agent.settings.name.replace('/', '-')}-seed{seed}")
        observers.append(recorder)
    torch.manual_seed(seed)
    trained = run_episodes(game, episodes, seed, agent, greedy, observers)
    random = run_episodes(game, episodes, seed, None)
    result: dict[str, Any] = {"episodes": episodes, "agents_per_episode": env.num_agents, "greedy": greedy,
                              "dropped_features": dropped_features, "untrained_actions": untrained_actions}
    result.update({f"{name}": value for name, value in _means(trained).items()})
    result.update({f"random_{name}": value for name, value in _means(random).items()})
    if recorder is not None:
        result["replays"] = [str(path) for path in recorder.paths]
    return result


def _means(episodes: list[dict[str, float]]) -> dict[str, float]:
    if not episodes:
        return {}
    means = {f"mean_{name.removeprefix('episode_')}": float(np.mean([e[name] for e in episodes])) for name in episodes[0]}
    return means
