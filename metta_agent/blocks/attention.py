"""Token encoders for the latent-attention architectures: a Fourier attribute embedding of each token,
cross-attention from learned latent queries to the tokens, and self-attention over the latents."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metta_agent.blocks.init import trunc_normal_
from metta_agent.blocks.observation import INVALID_FEATURE, PAD_LOCATION, token_cells


class FourierAttributeEmbedding(nn.Module):
    """Per token: feature-id embedding (D), cos/sin of row and column at 2^0..2^(F-1), the normalised value.

    Output width ``D + 4F + 1``. Coordinates are scaled to [-1, 1] by the window size.
    """

    def __init__(self, embed_dim: int, num_frequencies: int, height: int, width: int):
        super().__init__()
        self.height, self.width = height, width
        self.feature_embedding = nn.Embedding(256, embed_dim, padding_idx=INVALID_FEATURE)
        with torch.no_grad():
            trunc_normal_(self.feature_embedding.weight, 0.02)
            self.feature_embedding.weight[INVALID_FEATURE].zero_()
        self.register_buffer("frequencies", 2.0 ** torch.arange(num_frequencies, dtype=torch.float32))
        self.output_dim = embed_dim + 4 * num_frequencies + 1

    def forward(self, tokens: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        location = tokens[..., 0].long()
        feature = torch.where(location == PAD_LOCATION, INVALID_FEATURE, tokens[..., 1].long())
        row, col = token_cells(location, self.height, self.width)
        row = row.float() / max(self.height - 1, 1) * 2 - 1
        col = col.float() / max(self.width - 1, 1) * 2 - 1
        row_angles = row.unsqueeze(-1) * self.frequencies
        col_angles = col.unsqueeze(-1) * self.frequencies
        parts = [
            self.feature_embedding(feature),
            torch.cos(row_angles), torch.sin(row_angles),
            torch.cos(col_angles), torch.sin(col_angles),
            values.unsqueeze(-1),
        ]
        return torch.cat(parts, dim=-1)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with its own q/k/v/out projections (k/v may be given precomputed)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} must be divisible by heads {heads}")
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        n, length, dim = x.shape
        return x.view(n, length, self.heads, dim // self.heads).transpose(1, 2)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                attend: torch.Tensor | None = None) -> torch.Tensor:
        """``attend``: bool ``[N, 1, 1, K]``, True where a key may be attended to."""
        out = F.scaled_dot_product_attention(self.split(self.q(queries)), keys, values, attn_mask=attend)
        n, _, length, _ = out.shape
        return self.out(out.transpose(1, 2).reshape(n, length, -1))


class LatentCrossAttention(nn.Module):
    """Learned latent queries attend to the tokens (Perceiver-style).

    Keys and values come from the LayerNorm'd tokens, computed once and shared by every layer. Each layer:
    pre-LN attention with residual, then LayerNorm + MLP (qd -> 4qd -> qd, GELU) with residual. Then a final
    LayerNorm and, if the widths differ, a linear projection to ``output_dim``. Padding is masked out.
    """

    def __init__(self, input_dim: int, output_dim: int, num_queries: int, query_dim: int, heads: int,
                 layers: int, use_mask: bool = True, use_cls: bool = False):
        super().__init__()
        self.use_mask, self.use_cls = use_mask, use_cls
        self.queries = nn.Parameter(trunc_normal_(torch.empty(num_queries, query_dim), 0.02))
        self.token_norm = nn.LayerNorm(input_dim)
        self.token_proj = nn.Linear(input_dim, query_dim)
        self.attention = nn.ModuleList(MultiHeadAttention(query_dim, heads) for _ in range(layers))
        self.attention_norms = nn.ModuleList(nn.LayerNorm(query_dim) for _ in range(layers))
        self.mlp_norms = nn.ModuleList(nn.LayerNorm(query_dim) for _ in range(layers))
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(query_dim, 4 * query_dim), nn.GELU(), nn.Linear(4 * query_dim, query_dim))
            for _ in range(layers)
        )
        self.final_norm = nn.LayerNorm(query_dim)
        self.projection = nn.Linear(query_dim, output_dim) if output_dim != query_dim else nn.Identity()

    def forward(self, tokens: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """``tokens [N, K, in]``, ``padding [N, K]`` -> ``[N, out]`` with cls, else ``[N, Q, out]``."""
        n = tokens.shape[0]
        memory = self.token_proj(self.token_norm(tokens))
        attend = _attend_mask(padding) if self.use_mask else None
        latents = self.queries.unsqueeze(0).expand(n, -1, -1)
        for attention, attention_norm, mlp_norm, mlp in zip(self.attention, self.attention_norms, self.mlp_norms,
                                                            self.mlps):
            keys, values = attention.split(attention.k(memory)), attention.split(attention.v(memory))
            latents = latents + attention(attention_norm(latents), keys, values, attend)
            latents = latents + mlp(mlp_norm(latents))
        out = self.projection(self.final_norm(latents))
        return out[:, 0] if self.use_cls else out


class LatentSelfAttention(nn.Module):
    """Self-attention over latents: optional learned cls token; per layer pre-LN attention with residual
    (no MLP); final LayerNorm and projection; returns the cls token ``[N, out]`` (or all latents)."""

    def __init__(self, input_dim: int, output_dim: int, heads: int, layers: int, use_cls: bool = True):
        super().__init__()
        self.use_cls = use_cls
        self.cls_token = nn.Parameter(trunc_normal_(torch.empty(1, 1, input_dim), 0.02)) if use_cls else None
        self.norms = nn.ModuleList(nn.LayerNorm(input_dim) for _ in range(layers))
        self.attention = nn.ModuleList(MultiHeadAttention(input_dim, heads) for _ in range(layers))
        self.final_norm = nn.LayerNorm(input_dim)
        self.projection = nn.Linear(input_dim, output_dim) if output_dim != input_dim else nn.Identity()

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        if self.cls_token is not None:
            latents = torch.cat([self.cls_token.expand(latents.shape[0], -1, -1), latents], dim=1)
        for norm, attention in zip(self.norms, self.attention):
            normed = norm(latents)
            latents = latents + attention(normed, attention.split(attention.k(normed)),
                                          attention.split(attention.v(normed)))
        out = self.projection(self.final_norm(latents))
        return out[:, 0] if self.use_cls else out


def _attend_mask(padding: torch.Tensor) -> torch.Tensor:
    """``[N, 1, 1, K]`` True where attention may look; a row of pure padding may look at its first token."""
    attend = ~padding
    attend[:, 0] |= padding.all(dim=1)
    return attend[:, None, None, :]
