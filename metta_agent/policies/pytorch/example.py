"""``Example``: the readable reference for writing a new agent. Copy this file and change ``encode``.

What a policy must do (everything else - sampling, log-probabilities, recurrent-state bookkeeping, weight
clipping, checkpoints - is done by ``MettaAgent`` and the shared blocks):

1. ``__init__(self, env, **sizes)``: build the network for a game described by ``env``
   (``env.num_features``, ``env.obs_height``/``obs_width``, ``env.num_tokens``). Read sizes from the game,
   never hard-code feature ids. Keyword arguments become the agent's config parameters
   (``--set agent.hidden_size=256``); an unknown one is rejected with the list of these names.
2. Subclass ``RecurrentPolicy`` and call ``self.attach_core_and_heads(hidden_size)`` after building the
   encoder: it adds the LSTM core and the shared critic and actor (the actor's action embeddings follow
   action *names* across games). ``MettaAgent`` keeps each agent's LSTM state and hands it to the core.
3. ``encode(self, tokens)``: uint8 ``[rows, M, 3]`` tokens (location, feature id, value) -> one vector of
   ``hidden_size`` per row. The composition runs the core and the heads on it.
4. ``encoder_clipped_layers(self)``: ``{name: module}`` of the encoder layers ``clip_weights()``,
   ``l2_init_loss()`` and the weight metrics cover (the heads' are added by the composition).

Register the class in ``metta_agent/agent/registry.py`` (``PYTORCH_AGENTS``) to train it with
``metta-agent train --agent pytorch/<name>``.

This example encodes the observation as a bag of tokens: each token's feature embedding is scaled by its
normalised value and tagged with its position, the bag is max-pooled, and an MLP maps it to the core.
"""

from __future__ import annotations

import torch
from torch import nn

from metta_agent.blocks.attention import FourierAttributeEmbedding
from metta_agent.blocks.init import linear
from metta_agent.blocks.observation import TokenPadStrip, ValueNormalizer
from metta_agent.env.info import EnvInfo
from metta_agent.policies.pytorch.recurrent_policy import RecurrentPolicy


class Example(RecurrentPolicy):
    def __init__(self, env: EnvInfo, embed_dim: int = 32, hidden_size: int = 128):
        super().__init__()
        # Encoder: tokens -> per-token vectors -> one vector per agent.
        self.tokens = TokenPadStrip()  # drops trailing padding, returns the padding mask
        self.values = ValueNormalizer(env.normalizations)  # each feature's scale
        self.embedding = FourierAttributeEmbedding(embed_dim, num_frequencies=4, height=env.obs_height,
                                                   width=env.obs_width)
        self.token_mlp = linear(self.embedding.output_dim, hidden_size)
        self.encoded_obs = linear(hidden_size, hidden_size)
        # Recurrent core and heads: the same blocks every architecture uses (RecurrentPolicy).
        self.attach_core_and_heads(hidden_size)

    def encoder_clipped_layers(self) -> dict[str, nn.Module]:
        return {"token_mlp": self.token_mlp, "encoded_obs": self.encoded_obs}

    def encode(self, env_obs: torch.Tensor) -> torch.Tensor:
        tokens, padding = self.tokens(env_obs)
        per_token = torch.relu(self.token_mlp(self.embedding(tokens, self.values(tokens))))
        # Padding must not win the max: push it far below any real activation.
        pooled = per_token.masked_fill(padding.unsqueeze(-1), -1e4).max(dim=1).values
        return torch.relu(self.encoded_obs(pooled))
