"""Rebuild an agent from a checkpoint: the architecture and the game it was built with come from the
checkpoint's metadata, the weights from its tensors. The architecture is a registered one, or the YAML graph
the checkpoint embeds: a path named in a checkpoint is never opened."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from metta_agent.agent.metta_agent import MettaAgent
from metta_agent.agent.registry import build_agent, is_architecture_file, pytorch_twin
from metta_agent.checkpoint import ARCHITECTURE_YAML, load_checkpoint
from metta_agent.config import build_config
from metta_agent.env.info import EnvInfo, Feature
from metta_agent.errors import UsageError
from metta_agent.policies.component.graph import shipped_architectures


def agent_from_checkpoint(metadata: dict[str, Any], payload: dict[str, Any], path: str | Path) -> MettaAgent:
    try:
        agent_meta = metadata["agent"]
        settings = build_config([{"agent": agent_meta["settings"]}]).agent
        geometry = agent_meta["geometry"]
        original = EnvInfo(
            features=tuple(Feature(int(i), str(n), float(z)) for i, n, z in agent_meta["original_features"]),
            action_names=tuple(agent_meta["action_names"]),
            obs_height=int(geometry["obs_height"]),
            obs_width=int(geometry["obs_width"]),
            num_tokens=int(geometry["num_tokens"]),
            agents_per_env=1,
        )
        action_rows = {str(name): int(row) for name, row in agent_meta["action_rows"].items()}
    except (KeyError, TypeError, ValueError) as error:
        raise UsageError(f"'{path}' has incomplete agent metadata (missing {error})") from None
    spec_text = None
    if is_architecture_file(settings.name):
        # A user's graph: built from the YAML stored in the checkpoint, never from the path it names.
        spec_text = agent_meta.get(ARCHITECTURE_YAML)
        if not isinstance(spec_text, str):
            raise UsageError(f"'{path}' names the architecture file '{settings.name}' but does not embed its graph; "
                             f"a checkpoint loads only a registered architecture or a graph stored in it")
    agent = build_agent(settings, original, spec_text=spec_text)
    agent.action_rows = action_rows
    agent.initialize_to_environment(original.features, original.action_names)
    missing, unexpected = agent.load_state_dict(payload["model"], strict=False)
    if missing or unexpected:
        problem = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise UsageError(f"'{path}' does not match architecture '{settings.name}' ({problem})")
    return agent


def load_agent(path: str | Path, game=None, as_agent: str | None = None) -> MettaAgent:
    """``as_agent`` loads the checkpoint into another form of its architecture (``fast`` <-> ``pytorch/fast``)."""
    metadata, payload = load_checkpoint(path)
    agent = agent_from_checkpoint(metadata, payload, path)
    if as_agent is not None and as_agent != agent.settings.name:
        other = other_form(agent.settings.name)
        if as_agent != other:
            choices = f"as '{agent.settings.name}' or '{other}'" if other else f"only as '{agent.settings.name}'"
            raise UsageError(f"cannot load '{path}' as '{as_agent}': it holds architecture '{agent.settings.name}', "
                             f"which loads {choices}")
        agent = _as_other_form(agent, as_agent)
    if game is not None:
        from metta_agent.game_source import load_game

        game_config = load_game(game) if isinstance(game, str) else game
        env = EnvInfo.from_game(game_config)
        agent.initialize_to_environment(env.features, env.action_names)
    return agent


def other_form(name: str) -> str | None:
    """The other form of architecture ``name`` (``fast`` <-> ``pytorch/fast``), or None if it has one form.

    Only the two forms of one architecture share a weight layout; any other name would at best fail the
    weight transfer with a shape error, so it is refused up front with the names that would work.
    """
    if name.startswith("pytorch/"):
        component = name.removeprefix("pytorch/")
        return component if component in shipped_architectures() else None
    return pytorch_twin(name)


def _as_other_form(agent: MettaAgent, name: str) -> MettaAgent:
    from dataclasses import replace

    from metta_agent.agent.transfer import transfer_weights

    other = build_agent(replace(agent.settings, name=name), agent.original_env())
    transfer_weights(agent, other)
    return other
