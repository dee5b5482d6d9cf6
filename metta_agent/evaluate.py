"""Evaluation: the trained agent beside a uniform-random and a scripted policy, on the same maps.

Each of ``episodes`` envs plays one episode, all in parallel. Every policy plays the same maps (the same
seeds). Means come with their standard error over episodes: the agents of one episode share a map and
interact, so an episode's figure is the mean over its agents, and the error is taken over episodes.

Evaluation maps come from their own seed domain: the envs are numbered from ``seeding.EVAL_ENV_INDEX_BASE``
(2**40), an env index no training run reaches, so no evaluation map is ever a training map, whatever the
seeds (``VecEnv`` seeds episode ``k`` of env ``e`` with ``(seed, e, k)``).

Observers (a replay recorder, an ASCII renderer) follow the trained agent's episodes only.

Across games, the agent is re-initialised to the evaluation game: features are matched by name (a feature
the agent was not built with is dropped, because its input width is fixed), and each action keeps its
embedding by name. An action the agent was never trained with gets a free, untrained embedding row: the
agent can choose it, with a logit from that row's initial weights. The result lists both
(``dropped_features``, ``untrained_actions``) so that a cross-game score can be read for what it is.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import torch
from tensordict import TensorDict

from metta_agent import contract as keys
from metta_agent.agent.metta_agent import MettaAgent
from metta_agent.env import VecEnv
from metta_agent.env.info import EnvInfo
from metta_agent.seeding import EVAL_ENV_INDEX_BASE

BASELINES = ("random", "scripted")


class Actor(Protocol):
    """Chooses every agent's action from its observation tokens."""

    def act(self, obs: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """``obs`` uint8 ``[N, tokens, 3]``; ``starts`` bool ``[N]``: this observation starts an episode."""


class EpisodeObserver(Protocol):
    """Follows the first episode of some envs of an evaluation run."""

    def start(self, env: VecEnv) -> None:
        """Called after ``env.reset()``, before the first step."""

    def after_step(self, actions: np.ndarray, rewards: np.ndarray, ended: np.ndarray) -> None:
        """Called after every step with its actions and rewards ``[N]`` and, per env, whether its episode
        ended on this step."""


class RandomActor:
    """Uniformly random actions."""

    def __init__(self, num_actions: int, seed: int):
        self.num_actions = num_actions
        self.rng = np.random.default_rng(seed)

    def act(self, obs: np.ndarray, starts: np.ndarray) -> np.ndarray:
        return self.rng.integers(0, self.num_actions, size=obs.shape[0])


class AgentActor:
    """A ``MettaAgent`` acting on its own: its memory is reset here and it samples from its own generator,
    so torch's global random stream is left alone. ``greedy`` takes the most probable action."""

    def __init__(self, agent: MettaAgent, seed: int, greedy: bool = False):
        self.agent = agent
        self.greedy = greedy
        self.device = next(agent.parameters()).device
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        agent.reset_memory()

    @torch.inference_mode()
    def act(self, obs: np.ndarray, starts: np.ndarray) -> np.ndarray:
        n = obs.shape[0]
        td = TensorDict({keys.ENV_OBS: torch.from_numpy(obs).to(self.device),
                         keys.STARTS: torch.from_numpy(starts).to(self.device)}, batch_size=[n])
        agent = self.agent
        was_training, was_greedy, was_generator = agent.training, agent.greedy, agent.sampling_generator
        agent.eval()
        agent.greedy, agent.sampling_generator = self.greedy, self.generator
        try:
            return agent(td)[keys.ACTIONS].cpu().numpy()
        finally:
            agent.greedy, agent.sampling_generator = was_greedy, was_generator
            agent.train(was_training)


def baseline_actor(name: str, game, num_agents: int, seed: int) -> Actor:
    """The ``random`` or ``scripted`` policy for ``num_agents`` agents (all envs) of ``game``."""
    env = EnvInfo.from_game(game)
    if name == "random":
        return RandomActor(len(env.action_names), seed)
    if name == "scripted":
        from metta_agent.scripted import ScriptedPolicy

        return ScriptedPolicy(game, num_agents=num_agents, seed=seed)
    raise ValueError(f"unknown baseline '{name}'; choose one of: {', '.join(BASELINES)}")


def run_episodes(game, episodes: int, seed: int, actor: Actor,
                 observers: Sequence[EpisodeObserver] = ()) -> list[list[dict[str, float]]]:
    """Play one episode in each of ``episodes`` envs (all in parallel); the finished episodes, each a list
    of its agents' statistics."""
    with VecEnv(game, num_envs=episodes, seed=seed, stagger_first_episodes=False,
                first_env_index=EVAL_ENV_INDEX_BASE) as env:
        obs = env.reset()
        starts = np.ones(env.num_agents, dtype=bool)
        for observer in observers:
            observer.start(env)
        finished: list[dict[str, float]] = []
        env_done = np.zeros(env.num_envs, dtype=bool)
        while not env_done.all():
            actions = actor.act(obs, starts)
            obs, rewards, terminals, truncations = env.step(actions)
            ended = (terminals | truncations).reshape(env.num_envs, env.agents_per_env).all(axis=1)
            for observer in observers:
                observer.after_step(actions, rewards, ended)
            env_done |= ended
            finished.extend(env.pop_episode_stats())
            starts = terminals | truncations
        # An env reports its agents together, one after another.
        per_agent = env.agents_per_env
        return [finished[i:i + per_agent] for i in range(0, len(finished), per_agent)]


def summarize(episodes: list[list[dict[str, float]]]) -> dict[str, float]:
    """``mean_<stat>`` (per agent per episode) and ``mean_<stat>_stderr`` (over episodes) for every stat."""
    if not episodes:
        return {}
    summary: dict[str, float] = {}
    for name in dict.fromkeys(name for episode in episodes for name in episode[0]):
        per_episode = np.array([np.mean([agent[name] for agent in episode]) for episode in episodes
                                if name in episode[0]])
        short = name.removeprefix("episode_")
        summary[f"mean_{short}"] = float(per_episode.mean())
        summary[f"mean_{short}_stderr"] = standard_error(per_episode)
    return summary


def combine_summaries(per_game: dict[str, dict[str, float]], weights: dict[str, float]) -> dict[str, float]:
    """Summaries of several games in one: ``mean_<game>/<stat>`` for each, and ``mean_<stat>`` the weighted mean
    over the games that have the stat (its standard error combined as for independent means)."""
    combined: dict[str, float] = {}
    for label, summary in per_game.items():
        combined.update({f"mean_{label}/{key.removeprefix('mean_')}": value for key, value in summary.items()})
    names = dict.fromkeys(key for summary in per_game.values() for key in summary if not key.endswith("_stderr"))
    for name in names:
        having = [label for label in per_game if name in per_game[label]]
        total = sum(weights[label] for label in having)
        combined[name] = sum(weights[label] * per_game[label][name] for label in having) / total
        combined[f"{name}_stderr"] = math.sqrt(sum((weights[label] * per_game[label].get(f"{name}_stderr", 0.0)) ** 2
                                                   for label in having)) / total
    return combined


def standard_error(values: np.ndarray) -> float:
    """Standard error of the mean (0 for a single value)."""
    values = np.asarray(values, dtype=float)
    if values.size < 2:
        return 0.0
    return float(values.std(ddof=1) / math.sqrt(values.size))


def evaluate(agent: MettaAgent, game, episodes: int = 8, seed: int = 0, greedy: bool = False,
             replay_dir: str | Path | None = None, observers: Sequence[EpisodeObserver] = (),
             baselines: Sequence[str] = BASELINES) -> dict[str, Any]:
    """Mean episode return, length and game stats (with standard errors) of ``agent`` and of each baseline
    policy on ``game``, all on the same maps.

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
    trained = run_episodes(game, episodes, seed, AgentActor(agent, seed, greedy), observers)
    result: dict[str, Any] = {"episodes": episodes, "agents_per_episode": env.agents_per_env, "greedy": greedy,
                              "dropped_features": dropped_features, "untrained_actions": untrained_actions}
    result.update(summarize(trained))
    for name in baselines:
        played = run_episodes(game, episodes, seed, baseline_actor(name, game, episodes * env.agents_per_env, seed))
        result.update({f"{name}_{key}": value for key, value in summarize(played).items()})
    if recorder is not None:
        result["replays"] = [str(path) for path in recorder.paths]
    return result
