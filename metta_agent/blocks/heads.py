"""Decoders: the critic (value head) and the actor (bilinear head over action embeddings)."""

import math

import torch
from torch import nn

from metta_agent.blocks.init import SQRT2, linear

MAX_ACTION_EMBEDDINGS = 100


class Critic(nn.Module):
    """``critic_1``: Linear(in -> hidden) orth(sqrt 2) + tanh; ``value``: Linear(hidden -> 1) orth(1)."""

    def __init__(self, input_size: int = 128, hidden_size: int = 1024):
        super().__init__()
        self.critic_1 = linear(input_size, hidden_size, SQRT2)
        self.value = linear(hidden_size, 1, 1.0)

    def clipped_layers(self) -> dict[str, nn.Module]:
        return {"critic_1": self.critic_1, "value": self.value}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value(torch.tanh(self.critic_1(x))).squeeze(-1)


class ActionEmbedding(nn.Module):
    """``Embedding(100, D)`` whose rows are chosen by action *name*, so a game with another action list
    keeps each known action's embedding (row 0 is never used)."""

    def __init__(self, embedding_dim: int = 16, num_embeddings: int = MAX_ACTION_EMBEDDINGS):
        super().__init__()
        self.embedding = nn.Embedding(num_embeddings, embedding_dim)
        with torch.no_grad():
            nn.init.orthogonal_(self.embedding.weight)
            self.embedding.weight.mul_(0.1 / self.embedding.weight.abs().max())
        self.register_buffer("action_rows", torch.zeros(0, dtype=torch.long), persistent=False)

    def set_action_rows(self, rows: list[int]) -> None:
        self.action_rows = torch.tensor(rows, dtype=torch.long, device=self.embedding.weight.device)

    def forward(self) -> torch.Tensor:
        """Embeddings of the current game's actions, ``[A, D]``."""
        if self.action_rows.numel() == 0:
            raise RuntimeError("the agent has no actions yet: call initialize_to_environment first")
        return self.embedding(self.action_rows)


class Actor(nn.Module):
    """``actor_1``: Linear(in -> hidden) orth(1) + ReLU, then ``logit[a] = tanh(x W) . e_a + b``.

    ``b`` shifts every logit equally (it cancels in the softmax); it is kept so parameter counts match
    the reference.
    """

    def __init__(self, input_size: int = 128, hidden_size: int = 512, embedding_dim: int = 16):
        super().__init__()
        self.actor_1 = linear(input_size, hidden_size, 1.0)
        self.action_embeddings = ActionEmbedding(embedding_dim)
        bound = 1.0 / math.sqrt(hidden_size)
        self.bilinear_weight = nn.Parameter(torch.empty(hidden_size, embedding_dim).uniform_(-bound, bound))
        self.bilinear_bias = nn.Parameter(torch.empty(1).uniform_(-bound, bound))

    def clipped_layers(self) -> dict[str, nn.Module]:
        return {"actor_1": self.actor_1}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.actor_1(x))
        query = torch.tanh(hidden @ self.bilinear_weight)  # [N, D]
        return query @ self.action_embeddings().T + self.bilinear_bias  # [N, A]
