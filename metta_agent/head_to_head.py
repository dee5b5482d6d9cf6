"""Two policies in the same episodes: ``metta-agent eval RUN --against OTHER`` (docs/design.md, "Evaluation
and baselines").

Every episode seats both policies, half of the agents each; the seats alternate between episodes (agents of
even index play for the first policy in even episodes, for the second in odd ones), so neither policy keeps
the same start positions. Per episode each policy's figure is the mean over its own agents; the report gives
each policy's mean and standard error over episodes, and the paired difference (first minus second) with a
95% confidence interval (Student's t over episodes).

OTHER is ``random`` or ``scripted`` (ours), a run directory or checkpoint, ``mettagrid:NAME`` (a policy
mettagrid registers under a short name, e.g. ``mettagrid:noop``) or a full class path of a
``mettagrid.policy.policy.MultiAgentPolicy``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from mettagrid.config.mettagrid_config import MettaGridConfig

from metta_agent.errors import UsageError, first_line
from metta_agent.evaluate import BASELINES, AgentActor, baseline_actor, run_episodes, standard_error
from metta_agent.games import GAME_NAMES

# Student's t 0.975 quantiles by degrees of freedom (beyond the table, the normal 1.96).
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
         20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048,
         29: 2.045, 30: 2.042}
METTAGRID_PREFIX = "mettagrid:"


def seats(episodes: int, agents_per_env: int) -> np.ndarray:
    """``[episodes * agents]`` bool: True where the first policy plays (even agents in even episodes...)."""
    episode = np.repeat(np.arange(episodes), agents_per_env)
    agent = np.tile(np.arange(agents_per_env), episodes)
    return (agent + episode) % 2 == 0


class SeatedActor:
    """Each row acts as the actor that holds its seat (both actors see every row, so their memory stays whole)."""

    def __init__(self, first, second, first_rows: np.ndarray):
        self.first, self.second, self.first_rows = first, second, first_rows

    def act(self, obs: np.ndarray, starts: np.ndarray) -> np.ndarray:
        return np.where(self.first_rows, self.first.act(obs, starts), self.second.act(obs, starts))


class MettagridActor:
    """A mettagrid ``MultiAgentPolicy`` on our batch: one instance per episode, fed ``AgentObservation``s built
    from the tokens, its agent policies reset at every episode start."""

    def __init__(self, class_path: str, game: MettaGridConfig, episodes: int, rows: np.ndarray):
        from mettagrid.policy.loader import initialize_or_load_policy
        from mettagrid.policy.policy_env_interface import PolicyEnvInterface
        from mettagrid.policy.policy_spec import PolicySpec

        self.interface = PolicyEnvInterface.from_mg_cfg(game)
        try:
            policies = [initialize_or_load_policy(self.interface, PolicySpec(class_path=class_path))
                        for _ in range(episodes)]
        except Exception as error:
            raise UsageError(f"mettagrid policy '{class_path}' does not load: {type(error).__name__}: "
                             f"{first_line(error)}") from None
        agents = self.interface.num_agents
        self.rows = np.flatnonzero(rows)
        self.seats = {int(row): policies[row // agents].agent_policy(int(row % agents)) for row in self.rows}
        self.features = {int(f.id): f for f in self.interface.obs_features}
        self.action_index = {name: index for index, name in enumerate(self.interface.action_names)}

    def act(self, obs: np.ndarray, starts: np.ndarray) -> np.ndarray:
        from mettagrid.simulator import AgentObservation
        from mettagrid.simulator.interface import ObservationToken

        actions = np.zeros(obs.shape[0], dtype=np.int64)
        agents = self.interface.num_agents
        for row in self.rows.tolist():
            seat = self.seats[row]
            if starts[row]:
                seat.reset()
            tokens = [ObservationToken(feature=self.features[int(t[1])], value=int(t[2]),
                                       raw_token=tuple(int(v) for v in t))
                      for t in obs[row] if t[1] != 0xFF and int(t[1]) in self.features]
            action = seat.step(AgentObservation(agent_id=row % agents, tokens=tokens))
            actions[row] = self.action_index.get(action.name, 0)  # a vibe action: no main action (noop)
        return actions


def opponent(spec: str, game: MettaGridConfig, episodes: int, rows: np.ndarray, seed: int, greedy: bool):
    """``(name, actor)`` for OTHER as the command line names it."""
    from metta_agent.env.info import EnvInfo

    agents = EnvInfo.from_game(game).agents_per_env * episodes
    if spec in BASELINES:
        if spec == "scripted" and game.label not in GAME_NAMES:
            raise UsageError("--against scripted needs a built-in game: the scripted policy knows their stations only")
        return spec, baseline_actor(spec, game, agents, seed + 1)
    dotted = "." in spec and all(part.isidentifier() for part in spec.split("."))
    if spec.startswith(METTAGRID_PREFIX) or (dotted and not Path(spec).exists()):
        class_path = spec.removeprefix(METTAGRID_PREFIX)
        return spec, MettagridActor(class_path, game, episodes, ~rows)
    if Path(spec).exists():
        from metta_agent.agent.loading import load_agent

        agent = load_agent(spec, game=game)
        return f"{agent.settings.name} ({spec})", AgentActor(agent, seed + 1, greedy)
    raise UsageError(f"unknown --against '{spec}': give random, scripted, a run directory or checkpoint, "
                     "mettagrid:NAME or a full class path")


def head_to_head(agent, name: str, other: str, game: MettaGridConfig, episodes: int, seed: int = 0,
                 greedy: bool = False) -> dict[str, Any]:
    """Play ``agent`` against ``other`` in ``episodes`` shared episodes; per-policy figures and differences."""
    from metta_agent.env.info import EnvInfo

    if episodes < 2:
        raise UsageError("a head-to-head needs at least 2 episodes (the seats alternate between episodes)")
    env = EnvInfo.from_game(game)
    if env.agents_per_env < 2:
        raise UsageError("a head-to-head needs a game with at least 2 agents")
    agent.initialize_to_environment(env.features, env.action_names)
    first_rows = seats(episodes, env.agents_per_env)
    other_name, other_actor = opponent(other, game, episodes, first_rows, seed, greedy)
    played = run_episodes(game, episodes, seed, SeatedActor(AgentActor(agent, seed, greedy), other_actor, first_rows))
    per_agent = env.agents_per_env
    stats = [name for name in played[0][0]]
    result: dict[str, Any] = {"episodes": episodes, "agents_per_episode": per_agent, "greedy": greedy,
                              "policies": [name, other_name], "first": {}, "second": {}, "difference": {}}
    for stat in stats:
        firsts, seconds = [], []
        for k, episode in enumerate(played):
            mine = first_rows[k * per_agent:(k + 1) * per_agent]
            values = np.array([agent_stats[stat] for agent_stats in episode])
            firsts.append(values[mine].mean())
            seconds.append(values[~mine].mean())
        short = stat.removeprefix("episode_")
        firsts_a, seconds_a = np.array(firsts), np.array(seconds)
        diff = firsts_a - seconds_a
        half = _T975.get(len(diff) - 1, 1.96) * standard_error(diff)
        result["first"][short] = {"mean": float(firsts_a.mean()), "stderr": standard_error(firsts_a)}
        result["second"][short] = {"mean": float(seconds_a.mean()), "stderr": standard_error(seconds_a)}
        result["difference"][short] = {"mean": float(diff.mean()), "ci95": [float(diff.mean() - half),
                                                                            float(diff.mean() + half)]}
    return result


def describe(result: dict[str, Any]) -> str:
    first, second = result["policies"]
    lines = [f"{first} vs {second}: {result['episodes']} episodes x {result['agents_per_episode']} agents, half "
             f"each, seats alternated", f"  {'':<10} {'first':>17}   {'second':>17}   {'difference (95% CI)':>28}"]
    for stat in result["first"]:
        a, b, d = result["first"][stat], result["second"][stat], result["difference"][stat]
        lo, hi = d["ci95"]
        lines.append(f"  {stat:<10} {a['mean']:9.3f} +- {a['stderr']:5.3f}   {b['mean']:9.3f} +- {b['stderr']:5.3f}   "
                     f"{d['mean']:+9.3f} [{lo:+.3f}, {hi:+.3f}]")
    return "\n".join(lines)
