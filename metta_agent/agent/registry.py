"""Architecture names -> policy constructors, and ``build_agent`` which builds and initialises an agent.

Names: ``fast``, ``latent_attn_tiny``, ... select the component form (shipped YAML); ``pytorch/<name>``
selects the hand-written PyTorch twin; a path ending in ``.yaml`` loads a user's component graph (a checkpoint
of such an agent carries the YAML text, and is rebuilt from that text, never from a path it names).
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable

from torch import nn

from metta_agent.agent.metta_agent import MettaAgent
from metta_agent.config import AgentSettings
from metta_agent.env.info import EnvInfo
from metta_agent.errors import UsageError, first_line
from metta_agent.param_budget import check_parameter_budget, meta_parameter_count
from metta_agent.policies.component.graph import (
    ComponentPolicy,
    load_spec,
    shipped_architectures,
    spec_from_text,
    spec_parameters,
)
from metta_agent.policies.pytorch.example import Example
from metta_agent.policies.pytorch.fast import Fast
from metta_agent.policies.pytorch.latent_attn import latent_attn_med, latent_attn_small, latent_attn_tiny

PolicyFactory = Callable[..., nn.Module]

PYTORCH_AGENTS: dict[str, PolicyFactory] = {
    "pytorch/fast": Fast,
    "pytorch/latent_attn_tiny": latent_attn_tiny,
    "pytorch/latent_attn_small": latent_attn_small,
    "pytorch/latent_attn_med": latent_attn_med,
    "pytorch/example": Example,
}
COMMON_SETTINGS = ["analyze_weights_interval", "clip_range", "l2_init_scale", "name"]


def agent_names() -> list[str]:
    return shipped_architectures() + sorted(PYTORCH_AGENTS)


def pytorch_twin(name: str) -> str | None:
    """``fast`` -> ``pytorch/fast`` when the PyTorch form exists."""
    twin = f"pytorch/{name}"
    return twin if twin in PYTORCH_AGENTS else None


def is_architecture_file(name: str) -> bool:
    """Whether an architecture name is a path to a user's component YAML (not a registered architecture)."""
    return name.endswith((".yaml", ".yml"))


def resolve_architecture(name: str, spec_text: str | None = None) -> tuple[PolicyFactory, list[str]]:
    """The policy constructor for ``name`` and the architecture parameters it accepts. With ``spec_text``
    (the YAML a checkpoint embeds) a YAML architecture is built from that text; its file is never opened."""
    if spec_text is not None and is_architecture_file(name):
        source = f"{name} (embedded)"
        spec = spec_from_text(spec_text, source)
        return functools.partial(ComponentPolicy, spec=spec, source=source), sorted(spec_parameters(spec, source))
    factory = PYTORCH_AGENTS.get(name)
    if factory is not None:
        return factory, [p for p in inspect.signature(factory).parameters if p != "env"]
    if name in shipped_architectures() or is_architecture_file(name):
        spec, source = load_spec(name)
        return functools.partial(ComponentPolicy, spec=spec, source=source), sorted(spec_parameters(spec, source))
    raise UsageError(f"unknown agent '{name}'; choose one of: {', '.join(agent_names())} or a path to a .yaml graph")


def build_agent(settings: AgentSettings, env: EnvInfo, spec_text: str | None = None) -> MettaAgent:
    """Build the architecture ``settings.name`` for a game described by ``env`` (torch's RNG sets the weights);
    ``spec_text``: see ``resolve_architecture``."""
    factory, allowed = resolve_architecture(settings.name, spec_text)
    for key in settings.kwargs:
        if key not in allowed:
            raise UsageError(
                f"unknown agent parameter '{key}' for '{settings.name}'; allowed: {', '.join(COMMON_SETTINGS + allowed)}"
            )
    if getattr(factory, "func", None) is not ComponentPolicy:  # a graph checks its budget component by component
        try:
            values = meta_parameter_count(lambda: factory(env, **settings.kwargs))
        except (RuntimeError, ValueError, TypeError) as error:  # e.g. a negative size
            raise UsageError(f"agent '{settings.name}' cannot be built with {settings.kwargs}: {first_line(error)}") \
                from None
        check_parameter_budget(values, f"agent '{settings.name}' with {settings.kwargs or 'its defaults'}",
                               "lower its size parameters (agent.kwargs)")
    policy = factory(env, **settings.kwargs)
    return MettaAgent(policy, settings, env)
