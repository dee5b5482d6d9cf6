"""``Conv2d``: ``nn.Conv2d`` that runs as one matrix product where its kernel covers the whole input
(docs/design.md, "Building blocks").

Fast's second convolution (3x3 over a 3x3 map, no padding) has a single output position: every output
channel is the dot product of the flattened input with the flattened kernel. oneDNN's convolution is slow at
that shape (its backward ran at ~10 GFLOP/s, ~8% of an arena update); ``F.linear`` over
``x.flatten(1)`` and ``weight.view(out_channels, -1)`` computes the same sums (in another order: ~1e-7)
at matrix-product speed. The parameters and their names are ``nn.Conv2d``'s, so checkpoints and weight
clipping see no difference.
"""

import torch
from torch import nn
from torch.nn import functional


class Conv2d(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._one_position(x):
            out = functional.linear(x.flatten(1), self.weight.flatten(1), self.bias)
            return out.view(x.shape[0], self.out_channels, 1, 1)
        return super().forward(x)

    def _one_position(self, x: torch.Tensor) -> bool:
        return (x.dim() == 4 and tuple(x.shape[-2:]) == tuple(self.kernel_size) and self.groups == 1
                and self.padding in ((0, 0), "valid") and self.dilation == (1, 1) and self.padding_mode == "zeros")
