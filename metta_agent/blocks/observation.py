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


class TokenToBox(nn.Module):
    """Scatter tokens ``[N, M, 3]`` into a float grid ``[N, F, H, W]`` at ``[feature, row, col]``.

    Padding, out-of-window locations and features ``>= F`` go to a spill slot past the end of the grid
    that is cut off afterwards, so no real cell is corrupted. The input is never modified.
    """

    def __init__(self, num_features: int, height: int, width: int):
        super().__init__()
        self.num_features, self.height, self.width = num_features, height, width

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[0]
        location = tokens[..., 0].long()
        feature = tokens[..., 1].long()
        value = tokens[..., 2].float()
        is_global = location == GLOBAL_LOCATION
        row = torch.where(is_global, self.height // 2, location >> 4)
        col = torch.where(is_global, self.width // 2, location & 0x0F)
        valid = (location != PAD_LOCATION) & (feature < self.num_features) & (row < self.height) & (col < self.width)
        cells = self.num_features * self.height * self.width
        index = (feature * self.height + row) * self.width + col
        index = torch.where(valid, index, cells)
        grid = torch.zeros(n, cells + 1, dtype=value.dtype, device=tokens.device)
        grid.scatter_(1, index, value)
        return grid[:, :cells].view(n, self.num_features, self.height, self.width)


class ObsNormalizer(nn.Module):
    """Divide each feature plane of a box ``[N, F, H, W]`` by that feature's normalisation."""

    def __init__(self, num_features: int):
        super().__init__()
        self.register_buffer("scale", torch.ones(num_features))

    def set_normalizations(self, normalizations: torch.Tensor) -> None:
        self.scale.copy_(normalizations.clamp_min(1e-6))

    def forward(self, box: torch.Tensor) -> torch.Tensor:
        return box / self.scale.view(1, -1, 1, 1)
