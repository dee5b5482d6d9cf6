"""Architecture names -> policy constructors, and ``make_agent`` which builds and initialises an agent."""

from __future__ import annotations

import inspect
from typing import Callable

from torch import nn

from metta_agent.agent.metta_agent import MettaAgent
from metta_agent.config import AgentSettings
from metta_agent.env.info import EnvInfo
from metta_agent.errors import UsageError
from metta_agent.policies.pytorch.fast import Fast

PolicyFactory = Callable[..., nn.Module]

PYTORCH_AGENTS: dict[str, PolicyFactory] = {
    "pytorch/fast": Fast,
}


def agent_names() -> list[str]:
    return sorted(PYTORCH_AGENTS)


def policy_factory(name: str) -> PolicyFactory:
    factory = PYTORCH_AGENTS.get(name)
    if factory is None:
        raise UsageError(f"unknown agent '{name}'; choose one of: {', '.join(agent_names())}")
    return factory


def architecture_parameters(factory: PolicyFactory) -> list[str]:
    signature = inspect.signature(factory)
    return [name for name in signature.parameters if name != "env"]


def build_agent(settings: AgentSettings, env: EnvInfo) -> MettaAgent:
    """Build the architecture ``settings.name`` for a game described by ``env`` (torch's RNG sets the weights)."""
    factory = policy_factory(settings.name)
    allowed = architecture_parameters(factory)
    for key in settings.kwargs:
        if key not in allowed:
            common = ["analyze_weights_interval", "clip_range", "l2_init_scale", "name"]
            raise UsageError(
                f"unknown agent parameter '{key}' for '{settings.name}'; allowed: {', '.join(common + allowed)}"
            )
    policy = factory(env, **settings.kwargs)
    return MettaAgent(policy, settings, env)
