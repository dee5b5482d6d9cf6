"""The latent-attention agents (docs/design.md, "Architectures"): tokens -> Fourier embedding ->
cross-attention from learned latents (-> self-attention over them) -> LSTM core -> the shared heads."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from metta_agent.blocks.attention import FourierAttributeEmbedding, LatentCrossAttention, LatentSelfAttention
from metta_agent.blocks.observation import TokenPadStrip, ValueNormalizer
from metta_agent.env.info import EnvInfo
from metta_agent.policies.pytorch.recurrent_policy import RecurrentPolicy


@dataclass(frozen=True)
class LatentAttnSizes:
    embed_dim: int
    num_frequencies: int
    cross_output_dim: int | None  # None: the LSTM width (tiny feeds the cross-attention's cls straight in)
    num_queries: int
    query_dim: int
    heads: int
    cross_layers: int
    self_layers: int  # 0: no self-attention stage


SIZES = {
    "tiny": LatentAttnSizes(10, 4, None, 1, 32, 4, 2, 0),
    "small": LatentAttnSizes(8, 8, 32, 10, 32, 4, 1, 2),
    "med": LatentAttnSizes(12, 8, 32, 10, 32, 8, 3, 3),
}


class LatentAttn(RecurrentPolicy):
    def __init__(self, env: EnvInfo, sizes: LatentAttnSizes, hidden_size: int = 128):
        super().__init__()
        self.obs_tokens = TokenPadStrip()
        self.obs_values = ValueNormalizer(env.normalizations)
        self.obs_fourier = FourierAttributeEmbedding(sizes.embed_dim, sizes.num_frequencies, env.obs_height,
                                                     env.obs_width)
        with_self_attention = sizes.self_layers > 0
        self.obs_latents = LatentCrossAttention(
            self.obs_fourier.output_dim,
            sizes.cross_output_dim if with_self_attention else hidden_size,
            sizes.num_queries, sizes.query_dim, sizes.heads, sizes.cross_layers,
            use_mask=True, use_cls=not with_self_attention,
        )
        self.obs_encoded = (
            LatentSelfAttention(sizes.cross_output_dim, hidden_size, sizes.heads, sizes.self_layers, use_cls=True)
            if with_self_attention else None
        )
        self.attach_core_and_heads(hidden_size)

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens, padding = self.obs_tokens(tokens)
        embedded = self.obs_fourier(tokens, self.obs_values(tokens))
        latents = self.obs_latents(embedded, padding)
        return latents if self.obs_encoded is None else self.obs_encoded(latents)


def latent_attn_tiny(env: EnvInfo, hidden_size: int = 128) -> LatentAttn:
    return LatentAttn(env, SIZES["tiny"], hidden_size)


def latent_attn_small(env: EnvInfo, hidden_size: int = 128) -> LatentAttn:
    return LatentAttn(env, SIZES["small"], hidden_size)


def latent_attn_med(env: EnvInfo, hidden_size: int = 128) -> LatentAttn:
    return LatentAttn(env, SIZES["med"], hidden_size)
