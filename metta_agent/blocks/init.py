"""Initialisers as docs/design.md ("Building blocks") names them: "orth(g)" = orthogonal with gain g, bias 0."""

import math

import torch
from torch import nn

from metta_agent.blocks.conv import Conv2d


def orthogonal_(layer: nn.Module, gain: float = 1.0) -> nn.Module:
    nn.init.orthogonal_(layer.weight, gain)
    if getattr(layer, "bias", None) is not None:
        nn.init.zeros_(layer.bias)
    return layer


def linear(in_features: int, out_features: int, gain: float = 1.0) -> nn.Linear:
    return orthogonal_(nn.Linear(in_features, out_features), gain)


def conv2d(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, gain: float = 1.0) -> nn.Conv2d:
    return orthogonal_(Conv2d(in_channels, out_channels, kernel_size, stride=stride), gain)


SQRT2 = math.sqrt(2.0)


@torch.no_grad()
def trunc_normal_(tensor: torch.Tensor, std: float = 0.02) -> torch.Tensor:
    return nn.init.trunc_normal_(tensor, std=std, a=-2 * std, b=2 * std)
