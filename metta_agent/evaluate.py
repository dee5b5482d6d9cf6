"""Evaluation: the trained agent against a uniform-random policy on the same seeds."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tensordict import TensorDict

from metta_agent import contract as keys
from metta_agent.agent.metta_agent import MettaAgent
from metta_agent.env import VecEnv
from metta_agent.env.info import EnvInfo
from metta_agent.games import game_stat_keys

EVAL_SEED_OFFSET = 1_000_000  # evaluation maps differ from the ones a default training run used


def run_episodes(game, episodes: int, seed: int, agent: MettaAgent | None) -> list[dict[str, float]]:
    """Run ``episodes`` full episodes (one per env, all in parallel); ``agent=None`` acts uniformly at random."""
    rng = np.random.default_rng(seed)
    with VecEnv(game, num_envs=episodes, seed=seed + EVAL_SEED_OFFSET, stagger_first_episodes=False,
                stat_keys=game_stat_keys(game)) as env:
        obs = torch.from_numpy(env.reset())
        starts = torch.ones(env.num_agents, dtype=torch.bool)
        finished: list[dict[str, float]] = []
        if agent is not None:
            agent.reset_memory()
            agent.eval()
        env_done = np.zeros(env.num_envs, dtype=bool)
        while not env_done.all():
            if agent is None:
                actions = rng.integers(0, len(env.action_names), size=env.num_agents)
            else:
                with torch.inference_mode():
                    td = TensorDict({keys.ENV_OBS: obs, keys.DONES: starts,
                                     keys.TRAINING_ENV_IDS: torch.arange(env.num_agents)}, batch_size=[env.num_agents])
                    actions = agent(td)[keys.ACTIONS].numpy()
            next_obs, _, terminals, truncations = env.step(actions)
            ended = (terminals | truncations).reshape(env.num_envs, env.agents_per_env).all(axis=1)
            env_done |= ended
            finished.extend(env.pop_episode_stats())
            obs = torch.from_numpy(next_obs)
            starts = torch.from_numpy(terminals | truncations)
        return finished


def evaluate(agent: MettaAgent, game, episodes: int = 8, seed: int = 0) -> dict[str, Any]:
    env = EnvInfo.from_game(game)
    agent.initialize_to_environment(env.features, env.action_names)
    torch.manual_seed(seed)
    trained = run_episodes(game, episodes, seed, agent)
    random = run_episodes(game, episodes, seed, None)
    result: dict[str, Any] = {"episodes": episodes, "agents_per_episode": env.num_agents}
    result.update({f"{name}": value for name, value in _means(trained).items()})
    result.update({f"random_{name}": value for name, value in _means(random).items()})
    return result


def _means(episodes: list[dict[str, float]]) -> dict[str, float]:
    if not episodes:
        return {}
    means = {f"mean_{name.removeprefix('episode_')}": float(np.mean([e[name] for e in episodes])) for name in episodes[0]}
    return means
