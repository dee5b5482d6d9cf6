"""The experience buffer: one rollout of ``T`` steps for ``N`` agents, read as ``[S, TT]`` BPTT segments.

Agent ``i``'s steps are contiguous, so the storage ``[N, T]`` reshapes for free into ``S = N * T / TT``
segments, segment ``i * T/TT + t // TT`` holding steps ``t`` of agent ``i``. Training needs the recurrent
state only where a segment starts, so that is all the buffer keeps of it: ``[N, T/TT]`` states, one per
segment (the state a step reads is 2 KB per agent for ``fast``, most of a step's storage otherwise). A
segment batch shows it to the agent as ``LSTM_H``/``LSTM_C`` ``[B, TT, ...]``, the segment's state repeated
along TT as an expanded view (no copy); the agent reads step 0 (docs/design.md, "Recurrent state").
"""

from __future__ import annotations

import torch
from tensordict import TensorDict

from metta_agent import contract as keys


STEP_KEYS = (keys.ENV_OBS, keys.STARTS, keys.ACTIONS, keys.ACT_LOG_PROB, keys.VALUES)
STATE_KEYS = (keys.LSTM_H, keys.LSTM_C)


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
                keys.ADVANTAGES: zeros(),
                keys.RETURNS: zeros(),
                **{key: zeros(*trailing) for key, trailing in (extra or {}).items()},
            },
            batch_size=shape,
            device=device,
        )
        # The state entering each segment's first step, ``[N, T/TT, num_layers, hidden]``.
        self.segment_state = TensorDict(
            {key: torch.zeros(num_agents, steps // bptt, *lstm_shape, device=device) for key in STATE_KEYS},
            batch_size=(num_agents, steps // bptt),
            device=device,
        )
        # Whether the observation *after* step t starts a new episode (terminal or truncated).
        self.next_starts = zeros(dtype=torch.bool)

    def store(self, t: int, step: TensorDict, rows: slice = slice(None)) -> None:
        """Record the policy's inputs and outputs of rollout step ``t`` for agent ``rows`` (all by default)."""
        for key in STEP_KEYS:
            self.data[key][rows, t].copy_(step[key])
        if t % self.bptt == 0:
            for key in STATE_KEYS:
                self.segment_state[key][rows, t // self.bptt].copy_(step[key])

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

    def segments(self, index: torch.Tensor | None = None) -> TensorDict:
        """The buffer as ``[S, TT]`` segments (views), or the segments ``index`` picks (a copy); either way with
        each segment's entering state as ``LSTM_H``/``LSTM_C`` expanded along TT."""
        segments = self.data.reshape(self.num_segments, self.bptt)
        states = self.segment_state.reshape(self.num_segments)
        if index is not None:
            segments, states = segments[index], states[index]
        for key in STATE_KEYS:
            state = states[key]
            segments[key] = state.unsqueeze(1).expand(state.shape[0], self.bptt, *state.shape[1:])
        return segments

    def minibatches(self, segments_per_minibatch: int, generator: torch.Generator):
        """Every segment exactly once per call, in random order (no replacement)."""
        order = torch.randperm(self.num_segments, generator=generator).to(self.data.device)
        for start in range(0, self.num_segments, segments_per_minibatch):
            yield self.segments(order[start : start + segments_per_minibatch])

    @property
    def nbytes(self) -> int:
        """Bytes held by the buffer's tensors."""
        tensors = [*self.data.values(True, True), *self.segment_state.values(True, True), self.next_starts]
        return sum(t.numel() * t.element_size() for t in tensors)

    def copy_from(self, other: "Experience") -> None:
        """This buffer's contents become ``other``'s (same shapes)."""
        self.data.update_(other.data)
        self.segment_state.update_(other.segment_state)
        self.next_starts.copy_(other.next_starts)
