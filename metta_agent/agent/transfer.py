"""Weight transfer between the two forms of an architecture (component <-> PyTorch).

Both forms build the same blocks in the same order, so their policy state dicts hold the same tensors in
the same order under different names. The transfer pairs them by position and checks every shape, so a
mismatch (another architecture, other sizes) is an error, not a silent partial copy.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from metta_agent.errors import UsageError


def translate_policy_state(source_state: dict[str, torch.Tensor], target_state: dict[str, torch.Tensor],
                           what: str = "weights") -> "OrderedDict[str, torch.Tensor]":
    """``source_state``'s tensors renamed to ``target_state``'s keys (both policy state dicts)."""
    source_items, target_keys = list(source_state.items()), list(target_state.keys())
    if len(source_items) != len(target_keys):
        raise UsageError(f"cannot transfer {what}: {len(source_items)} tensors vs {len(target_keys)} in the target")
    translated: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for (source_key, tensor), target_key in zip(source_items, target_keys):
        expected = tuple(target_state[target_key].shape)
        if tuple(tensor.shape) != expected:
            raise UsageError(f"cannot transfer {what}: '{source_key}' {tuple(tensor.shape)} does not fit "
                             f"'{target_key}' {expected}")
        translated[target_key] = tensor
    return translated


def translate_agent_state(source_state: dict[str, torch.Tensor], target_agent, what: str = "weights"):
    """A full ``MettaAgent`` state dict (policy + weight-manager buffers) translated to ``target_agent``."""
    target_state = target_agent.state_dict()
    source_policy = {k: v for k, v in source_state.items() if k.startswith("policy.")}
    target_policy = {k: v for k, v in target_state.items() if k.startswith("policy.")}
    translated = translate_policy_state(source_policy, target_policy, what)
    for key, value in target_state.items():
        if not key.startswith("policy."):
            if key not in source_state:
                raise UsageError(f"cannot transfer {what}: the source has no '{key}'")
            translated[key] = source_state[key]
    return translated


def transfer_weights(source_agent, target_agent) -> None:
    """Copy ``source_agent``'s weights (and initial weights, action rows) onto ``target_agent`` in place."""
    state = translate_agent_state(source_agent.state_dict(), target_agent)
    target_agent.load_state_dict(state)
    target_agent.action_rows = dict(source_agent.action_rows)
    target_agent.initialize_to_environment(list(source_agent.original_features.values()), source_agent.action_names)
