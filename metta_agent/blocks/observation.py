"""Observation encoders' front ends: tokens -> dense box, and feature normalisation.

A token is ``[location, feature_id, value]`` with ``location = row << 4 | col``. ``0xFF`` marks padding and
``0xFE`` a global token (no cell). Global tokens carry agent-wide state such as ``episode_completion_pct``;
the box form places them in the agent's own (centre) cell so the time limit stays visible to the policy.
"""

import torch
from torch import nn

PAD_LOCATION = 0xFF
GLOBAL_LOCATION = 0xFE
INVALID_FEATURE = 0xFF


def token_cells(location: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column of each token's location byte; global tokens sit in the centre (the agent's cell)."""
    is_global = location == GLOBAL_LOCATION
    row = torch.where(is_global, height // 2, location >> 4)
    col = torch.where(is_global, width // 2, location & 0x0F)
    return row, col


class TokenToBox(nn.Module):
    """Scatter tokens ``[N, M, 3]`` into a float grid ``[N, F, H, W]`` at ``[feature, row, col]``.

    Padding, out-of-window locations and features ``>= F`` go to a spill slot past the end of the grid
    that is cut off afterwards, so no real cell is corrupted. A (feature, cell) pair given twice is summed
    (mettagrid gives each at most once), as in ``token_conv``. The input is never modified.
    """

    def __init__(self, num_features: int, height: int, width: int):
        super().__init__()
        self.num_features, self.height, self.width = num_features, height, width

    @property
    def cells(self) -> int:
        """``F * H * W``: the box's size, and the spill index of dropped tokens."""
        return self.num_features * self.height * self.width

    def positions(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each token's flat box index ``(feature * H + row) * W + col`` (``cells`` for the tokens the box
        drops) and its feature id, both ``[N, M]`` int64."""
        location = tokens[..., 0].long()
        feature = tokens[..., 1].long()
        row, col = token_cells(location, self.height, self.width)
        valid = (location != PAD_LOCATION) & (feature < self.num_features) & (row < self.height) & (col < self.width)
        index = (feature * self.height + row) * self.width + col
        return torch.where(valid, index, self.cells), feature

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n, cells = tokens.shape[0], self.cells
        index, _ = self.positions(tokens)
        value = tokens[..., 2].float()
        grid = torch.zeros(n, cells + 1, dtype=value.dtype, device=tokens.device)
        grid.scatter_add_(1, index, value)
        return grid[:, :cells].view(n, self.num_features, self.height, self.width)


class ObsNormalizer(nn.Module):
    """Divide each feature plane of a box ``[N, F, H, W]`` by that feature's normalisation."""

    def __init__(self, num_features: int, normalizations: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("scale", torch.ones(num_features))
        if normalizations is not None:
            self.set_normalizations(normalizations)

    def set_normalizations(self, normalizations: torch.Tensor) -> None:
        """``normalizations[i]`` for feature id ``i``; ids past the box width are ignored."""
        scale = torch.ones_like(self.scale)
        count = min(scale.numel(), normalizations.numel())
        scale[:count] = normalizations[:count].to(scale.device).clamp_min(1e-6)
        self.scale.copy_(scale)

    def forward(self, box: torch.Tensor) -> torch.Tensor:
        return box / self.scale.view(1, -1, 1, 1)


class TokenPadStrip(nn.Module):
    """Keep the first K tokens, K = the longest valid prefix in the batch, and return the padding mask.

    Tokens come valid-first, so cutting at the longest row's count drops only padding. Returns
    ``(tokens [N, K, 3], padding [N, K] bool)``; ``padding`` is True where a token is padding.
    """

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        padding = tokens[..., 0] == PAD_LOCATION
        keep = valid_prefix(padding)
        return tokens[:, :keep], padding[:, :keep]


def valid_prefix(padding: torch.Tensor) -> int:
    """How many leading tokens hold every valid one (at least 1), given the ``[N, M]`` padding mask: tokens
    come valid-first, so cutting there drops only padding."""
    return max(int((~padding).sum(dim=1).max()), 1) if padding.shape[0] else 1


class ValueNormalizer(nn.Module):
    """Each token's value divided by its feature's normalisation, in float (padding gives 0)."""

    def __init__(self, normalizations: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("scale", torch.ones(256))
        if normalizations is not None:
            self.set_normalizations(normalizations)

    def set_normalizations(self, normalizations: torch.Tensor) -> None:
        scale = torch.ones(256, device=self.scale.device)
        scale[: normalizations.numel()] = normalizations.to(self.scale.device).clamp_min(1e-6)
        self.scale.copy_(scale)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        feature = tokens[..., 1].long()
        value = tokens[..., 2].float() / self.scale[feature]
        return torch.where(tokens[..., 0] == PAD_LOCATION, torch.zeros_like(value), value)
