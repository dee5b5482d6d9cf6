"""metta-agent's agents as mettagrid policies (docs/design.md, "mettagrid's policy interface").

``MettaAgentPolicy`` is a ``mettagrid.policy.policy.MultiAgentPolicy``: mettagrid's loader builds it from a
``PolicySpec`` whose ``data_path`` is a run directory or a checkpoint, and its runners seat it beside any
other policy::

    from mettagrid.policy.loader import initialize_or_load_policy
    from mettagrid.policy.policy_spec import PolicySpec

    spec = PolicySpec(class_path="metta_agent.mettagrid_policy.MettaAgentPolicy", data_path="runs/heart")
    policy = initialize_or_load_policy(policy_env_interface, spec)

The short name ``metta_agent`` works only after ``import metta_agent.mettagrid_policy`` (mettagrid discovers
short names in its own packages); use the full class path in specs.

The agent is re-initialised to the game it is given (features matched by name, actions by name), as
``eval --game`` does. Each agent id has its own recurrent state, started afresh when the runner resets the
agent's policy (an episode start). Agents stepped together by a runner (``can_step_group``/``step_group``)
and ``step_batch`` take one batched forward pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from mettagrid.policy.policy import AgentPolicy, MultiAgentPolicy
from mettagrid.policy.policy_env_interface import PolicyEnvInterface
from mettagrid.simulator import Action, AgentObservation
from tensordict import TensorDict

from metta_agent import contract as keys
from metta_agent.env.info import EnvInfo
from metta_agent.errors import UsageError

CLASS_PATH = "metta_agent.mettagrid_policy.MettaAgentPolicy"
EMPTY_TOKEN = 0xFF


class MettaAgentPolicy(MultiAgentPolicy):
    """A trained metta-agent agent (either policy form, any architecture) for mettagrid's runners.

    ``init_kwargs``: ``device`` (default ``cpu``), ``greedy`` (take the most probable action; default: sample)
    and ``seed`` (of the sampling generator).
    """

    short_names = ["metta_agent"]

    def __init__(self, policy_env_info: PolicyEnvInterface, device: str = "cpu", greedy: bool = False,
                 seed: int = 0, **kwargs: Any):
        super().__init__(policy_env_info, device=device)
        if kwargs:
            raise UsageError(f"MettaAgentPolicy takes device, greedy and seed; unknown: {', '.join(sorted(kwargs))}")
        self._device = torch.device(device)
        self._greedy = bool(greedy)
        self._generator = torch.Generator(device=self._device).manual_seed(int(seed))
        self._env = EnvInfo.from_interface(policy_env_info)
        self._agent = None
        self._starting: set[int] = set()  # agent ids whose next observation starts an episode
        self._source: Path | None = None

    # ---- loading and saving -------------------------------------------------------------------------------

    def load_policy_data(self, policy_data_path: str) -> None:
        """Load a run directory (its newest checkpoint) or a checkpoint file, safely."""
        from metta_agent.agent.loading import load_agent

        agent = load_agent(str(policy_data_path))
        self.use_agent(agent)
        self._source = Path(policy_data_path)

    def use_agent(self, agent) -> None:
        """Play ``agent`` (a ``MettaAgent``), re-initialised to this policy's game."""
        missing = [name for name in self._env.action_names if name not in agent.action_rows]
        if missing:
            raise UsageError(f"the agent's actions do not match the game's: it never trained with "
                             f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} (it knows "
                             f"{', '.join(list(agent.action_rows)[:8])})")
        agent.initialize_to_environment(self._env.features, self._env.action_names)
        self._agent = agent.to(self._device).eval()
        self.reset()

    def save_policy_data(self, policy_data_path: str) -> None:
        """Write the agent as a metta-agent checkpoint (the safe format ``load_policy_data`` reads)."""
        from metta_agent.checkpoint import save_checkpoint

        agent = self._require_agent()
        save_checkpoint(Path(policy_data_path), {"agent": agent.metadata()}, {"model": agent.state_dict()})

    def network(self):
        return self._agent

    # ---- acting -------------------------------------------------------------------------------------------

    def agent_policy(self, agent_id: int) -> AgentPolicy:
        return MettaAgentSeat(self, int(agent_id))

    def reset(self) -> None:
        """Every agent starts a new episode at its next step."""
        self._starting = set(range(self._env.agents_per_env))

    def step_batch(self, raw_observations: np.ndarray, raw_actions: np.ndarray) -> None:
        """Act for every agent at once: ``raw_observations`` ``[agents, tokens, 3]`` uint8 -> ``raw_actions``."""
        ids = np.arange(raw_observations.shape[0])
        raw_actions[...] = self.act(np.asarray(raw_observations), ids)

    def act(self, tokens: np.ndarray, agent_ids: Sequence[int]) -> np.ndarray:
        """Action indices for the agents ``agent_ids`` seeing ``tokens`` (``[n, tokens, 3]`` uint8), one forward."""
        agent = self._require_agent()
        ids = [int(i) for i in agent_ids]
        starts = torch.tensor([i in self._starting for i in ids], dtype=torch.bool)
        self._starting.difference_update(ids)
        td = TensorDict({keys.ENV_OBS: torch.from_numpy(np.ascontiguousarray(tokens)).to(self._device),
                         keys.STARTS: starts.to(self._device),
                         keys.AGENT_ROWS: torch.tensor(ids, dtype=torch.long, device=self._device)},
                        batch_size=[len(ids)])
        with torch.inference_mode():
            was = agent.greedy, agent.sampling_generator
            agent.greedy, agent.sampling_generator = self._greedy, self._generator
            try:
                return agent(td)[keys.ACTIONS].cpu().numpy()
            finally:
                agent.greedy, agent.sampling_generator = was

    def step_observations(self, observations: list[tuple[int, AgentObservation]]) -> list[Action]:
        tokens = np.full((len(observations), self._env.num_tokens, 3), EMPTY_TOKEN, dtype=np.uint8)
        for row, (_, obs) in enumerate(observations):
            raw = [token.raw_token for token in obs.tokens[: self._env.num_tokens]]
            if raw:
                tokens[row, : len(raw)] = np.asarray(raw, dtype=np.uint8)
        indices = self.act(tokens, [agent_id for agent_id, _ in observations])
        names = self._env.action_names
        return [Action(name=names[int(i)]) for i in indices]

    def start_episode(self, agent_id: int) -> None:
        self._starting.add(agent_id)

    def _require_agent(self):
        if self._agent is None:
            raise UsageError("MettaAgentPolicy has no agent: give its PolicySpec a data_path (a run directory or "
                             "checkpoint), or call load_policy_data")
        return self._agent


class MettaAgentSeat(AgentPolicy):
    """One agent's seat at a ``MettaAgentPolicy``: seats of one policy are stepped as one batch."""

    def __init__(self, parent: MettaAgentPolicy, agent_id: int):
        super().__init__(parent.policy_env_info)
        self.parent = parent
        self.agent_id = agent_id

    def step(self, obs: AgentObservation) -> Action:
        return self.parent.step_observations([(self.agent_id, obs)])[0]

    def can_step_group(self, policies: Sequence[AgentPolicy]) -> bool:
        return all(isinstance(p, MettaAgentSeat) and p.parent is self.parent for p in policies)

    def step_group(self, observations: list[tuple[int, AgentObservation]]) -> list[Action]:
        return self.parent.step_observations(observations)

    def reset(self, simulation: Optional[Any] = None) -> None:
        self.parent.start_episode(self.agent_id)


# ---- export ---------------------------------------------------------------------------------------------------

AGENT_FILE = "agent.pt"


def export_submission(path: str | Path, out_dir: str | Path, game: str | None = None) -> dict[str, Any]:
    """Write a folder mettagrid's submission loader accepts (``load_policy_spec_from_path``):

    - ``agent.pt``: the agent alone (weights and the metadata to rebuild it; no optimizer), in the safe
      checkpoint format;
    - ``policy_spec.json``: the full class path, ``data_path`` relative to the folder, ``init_kwargs``
      (``device``) and the game's ``policy_env_interface``;
    - ``cogames.toml``: the same as a manifest.

    The ``metta_agent`` source is not bundled: the folder loads where metta-agent is installed.
    ``path`` is a run directory or checkpoint; the game is the run's recorded one unless ``game`` names another.
    """
    from mettagrid.policy.submission import (
        POLICY_MANIFEST_FILENAME,
        POLICY_SPEC_FILENAME,
        SubmissionPolicySpec,
        write_submission_policy_spec,
    )

    from metta_agent.agent.loading import load_agent
    from metta_agent.checkpoint import load_checkpoint
    from metta_agent.game_source import games_from_metadata, load_game

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"export folder '{out}' already exists and is not empty; choose another")
    metadata, _ = load_checkpoint(path)
    if game is not None:
        config = load_game(game)
    else:
        recorded = games_from_metadata(metadata)
        if recorded is not None and len(recorded) > 1:
            raise UsageError(f"'{path}' trained on a mixture of games ({', '.join(e.label for e in recorded)}): "
                             "choose the one to export for with --game")
        config = recorded[0].config if recorded else load_game(metadata.get("game", "arena"))
    interface = PolicyEnvInterface.from_mg_cfg(config)
    agent = load_agent(str(path))
    policy = MettaAgentPolicy(interface)
    policy.use_agent(agent)  # refuses an agent whose actions do not match the game
    out.mkdir(parents=True, exist_ok=True)
    policy.save_policy_data(str(out / AGENT_FILE))
    spec = SubmissionPolicySpec(class_path=CLASS_PATH, data_path=AGENT_FILE, init_kwargs={"device": "cpu"},
                                policy_env_interface=interface)
    write_submission_policy_spec(out / POLICY_SPEC_FILENAME, spec)
    (out / POLICY_MANIFEST_FILENAME).write_text(
        f'[policy]\nclass_path = "{CLASS_PATH}"\ndata_path = "{AGENT_FILE}"\n\n[policy.init_kwargs]\ndevice = "cpu"\n',
        encoding="utf-8")
    return {"folder": str(out), "class_path": CLASS_PATH, "data_path": AGENT_FILE, "agent": agent.settings.name,
            "game": config.label, "source_bundled": False}


def play_interactive(path: str | Path, game, seed: int = 0, greedy: bool = False) -> list[float]:
    """One episode of the agent in mettagrid's terminal viewer (miniscope), through mettagrid's own runner; the
    agents' episode returns."""
    from mettagrid.policy.loader import initialize_or_load_policy
    from mettagrid.policy.policy_spec import PolicySpec
    from mettagrid.runner.rollout import single_episode_rollout

    interface = PolicyEnvInterface.from_mg_cfg(game)
    policy = initialize_or_load_policy(interface, PolicySpec(class_path=CLASS_PATH, data_path=str(path),
                                                             init_kwargs={"greedy": greedy, "seed": seed}))
    result, _ = single_episode_rollout([policy], [0] * interface.num_agents, game, seed=seed,
                                       max_action_time_ms=60_000, render_mode="unicode", autostart=False,
                                       capture_replay=False)
    return [float(r) for r in result.rewards]
