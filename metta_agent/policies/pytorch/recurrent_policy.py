"""``RecurrentPolicy``: encoder -> LSTM core -> critic and actor, the composition every PyTorch policy shares
(docs/design.md, "Architectures"). A policy builds its encoder, then calls ``attach_core_and_heads``, and
defines ``encode`` (tokens -> one vector per row) and, if it has clipped layers, ``encoder_clipped_layers``.
The component form composes the same blocks in YAML."""

from __future__ import annotations

import torch
from torch import nn

from metta_agent.blocks.heads import Actor, Critic
from metta_agent.blocks.recurrent import LSTMState, RecurrentCore


class RecurrentPolicy(nn.Module):
    core: RecurrentCore
    critic: Critic
    actor: Actor

    def attach_core_and_heads(self, hidden_size: int) -> None:
        """The shared part, built after the encoder (so a seed draws the encoder's weights first, as the
        component form does)."""
        self.core = RecurrentCore(hidden_size, hidden_size, num_layers=2)
        self.critic = Critic(hidden_size, 1024)
        self.actor = Actor(hidden_size, 512, 16)

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encoder_clipped_layers(self) -> dict[str, nn.Module]:
        return {}

    def clipped_layers(self) -> dict[str, tuple[nn.Module, float]]:
        layers = {**self.encoder_clipped_layers(), **self.critic.clipped_layers(), **self.actor.clipped_layers()}
        return {name: (module, 1.0) for name, module in layers.items()}

    def forward(self, tokens: torch.Tensor, state: LSTMState,
                starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, LSTMState]:
        """``tokens [B*TT, M, 3]``, ``state`` entering each segment, ``starts [B, TT]``; returns logits
        ``[B*TT, A]``, values ``[B*TT]`` and the state after each segment."""
        batch, bptt = starts.shape
        hidden, state = self.core(self.encode(tokens).view(batch, bptt, -1), state, starts)
        hidden = hidden.reshape(batch * bptt, -1)
        return self.actor(hidden), self.critic(hidden), state
