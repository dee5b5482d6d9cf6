"""The experience buffer: one rollout of ``T`` steps for ``N`` agents, read as ``[S, TT]`` BPTT segments.

Agent ``i``'s steps are contiguous, so the storage ``[N, T]`` reshapes for free into ``S = N * T / TT``
segments, segment ``i * T/TT + t // TT`` holding steps ``t`` of agent ``i``. The recurrent state each step
started from is stored too; training reads it at the first step of each segment.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict

from metta_agent import contract as keys


STEP_KEYS = (
    keys.ENV_OBS,
    keys.STARTS,
    keys.ACTIONS,
    keys.ACT_LOG_PROB,
    keys.VALUES,
    keys.LSTM_H,
    keys.LSTM_C,
)


class Experience:
    def __init__(
        self,
        num_agents: int,
        steps: int,
        bptt: int,
        obs_shape: tuple[int, int],
        lstm_shape: tuple[int, int],
        device: torch.device,
        extra: dict[str, tuple[int, ...]] | None = None,
    ):
        """``extra``: more float entries per agent step, by key and trailing shape (the kickstart teachers')."""
        if steps % bptt:
            raise ValueError(f"rollout length {steps} must be a multiple of bptt_horizon {bptt}")
        self.num_agents, self.steps, self.bptt = num_agents, steps, bptt
        self.num_segments = num_agents * steps // bptt
        shape = (num_agents, steps)

        def zeros(*extra: int, dtype=torch.float32) -> torch.Tensor:
            return torch.zeros(*shape, *extra, dtype=dtype, device=device)

        self.data = TensorDict(
            {
                keys.ENV_OBS: zeros(*obs_shape, dtype=torch.uint8),
                keys.STARTS: zeros(dtype=torch.bool),
                keys.ACTIONS: zeros(dtype=torch.long),
                keys.ACT_LOG_PROB: zeros(),
                keys.VALUES: zeros(),
                keys.REWARDS: zeros(),
                keys.LSTM_H: zeros(*lstm_shape),
                keys.LSTM_C: zeros(*lstm_shape),
                keys.ADVANTAGES: zeros(),
                keys.RETURNS: zeros(),
                **{key: zeros(*trailing) for key, trailing in (extra or {}).items()},
            },
            batch_size=shape,
            device=device,
        )
        # Whether the observation *after* step t starts a new episode (terminal or truncated).
        self.next_starts = zeros(dtype=torch.bool)

    def store(self, t: int, step: TensorDict, rows: slice = slice(None)) -> None:
        """Record the policy's inputs and outputs of rollout step ``t`` for agent ``rows`` (all by default)."""
        for key in STEP_KEYS:
            self.data[key][rows, t].copy_(step[key])

    def store_extra(self, t: int, values: dict[str, torch.Tensor], rows: slice = slice(None)) -> None:
        for key, value in values.items():
            self.data[key][rows, t].copy_(value)

    def store_outcome(
        self, t: int, rewards: torch.Tensor, next_starts: torch.Tensor, rows: slice = slice(None)
    ) -> None:
        self.data[keys.REWARDS][rows, t].copy_(rewards)
        self.next_starts[rows, t].copy_(next_starts)

    def compute_advantages(self, bootstrap_values: torch.Tensor, gamma: float, gae_lambda: float) -> None:
        """GAE over each agent's whole rollout; the last step bootstraps from the next observation's value."""
        values = self.data[keys.VALUES]
        rewards = self.data[keys.REWARDS]
        continues = (~self.next_starts).float()
        advantages = self.data[keys.ADVANTAGES]
        next_value = bootstrap_values
        running = torch.zeros_like(bootstrap_values)
        for t in range(self.steps - 1, -1, -1):
            delta = rewards[:, t] + gamma * next_value * continues[:, t] - values[:, t]
            running = delta + gamma * gae_lambda * continues[:, t] * running
            advantages[:, t] = running
            next_value = values[:, t]
        self.data[keys.RETURNS].copy_(advantages + values)

    def segments(self) -> TensorDict:
        """The buffer as ``[S, TT]`` segments (a view)."""
        return self.data.reshape(self.num_segments, self.bptt)

    def minibatches(self, segments_per_minibatch: int, generator: torch.Generator):
        """Every segment exactly once per call, in random order (no replacement)."""
        order = torch.randperm(self.num_segments, generator=generator)
        segments = self.segments()
        for start in range(0, self.num_segments, segments_per_minibatch):
            yield segments[order[start : start + segments_per_minibatch].to(segments.device)]
