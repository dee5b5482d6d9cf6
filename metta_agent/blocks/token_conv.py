"""The first convolution of a box encoder, computed from the observation tokens (docs/design.md,
"Token convolution").

``conv(normalizer(token_to_box(tokens)))`` builds a ``[N, F, H, W]`` box that is ~99% zeros (an 11x11
window with ~23 features holds 2,783 cells, an observation ~25 tokens) and convolves all of it. The same
numbers come from the tokens alone: output ``(c, i, j)`` is ``bias[c]`` plus, for every token
``(feature f, cell (r, s), value v)`` that the kernel placed at ``(i, j)`` covers, ``v / scale[f] *
weight[c, f, r - i * stride, s - j * stride]``. So the weight is laid out once per call as a table with one
row per (feature, cell) holding that cell's contribution to every output position and channel, and each
agent's output is the sum of its tokens' rows weighted by their normalised values: one ``embedding_bag``.
On arena that is ~24x fewer multiply-adds than the dense convolution, its backward scatters into the weight
instead of convolving, and no box is built or normalised.

The function is the same as the dense path's (sums in another order: outputs agree to ~1e-7); a (feature,
cell) pair given twice is summed in both (``TokenToBox`` adds). Without gradients (rollout, evaluation) the
table is kept between calls until the weight changes (its version counter moves on every in-place update:
optimizer steps, loading, broadcasting). Convolutions with padding, dilation or groups use the dense path.
"""

from __future__ import annotations


import torch
from torch import nn
from torch.nn import functional

from metta_agent.blocks.observation import PAD_LOCATION, ObsNormalizer, TokenToBox, valid_prefix


def token_conv(tokens: torch.Tensor, box: TokenToBox, normalizer: ObsNormalizer, conv: nn.Conv2d) -> torch.Tensor:
    """``conv(normalizer(box(tokens)))`` for tokens ``[N, M, 3]``: ``[N, out_channels, OH, OW]``."""
    if not _sparse_ok(box, conv):
        return conv(normalizer(box(tokens)))
    features, height, width = box.num_features, box.height, box.width
    kernel, stride = conv.kernel_size, conv.stride
    out_h, out_w = (height - kernel[0]) // stride[0] + 1, (width - kernel[1]) // stride[1] + 1
    channels = conv.out_channels
    tokens = tokens[:, :valid_prefix(tokens[..., 0] == PAD_LOCATION)]
    rows, feature = box.positions(tokens)  # box.cells (dropped tokens) is the table's all-zero row
    scale = normalizer.scale
    value = tokens[..., 2].to(scale.dtype) / scale[feature.clamp(max=features - 1)]
    out = functional.embedding_bag(rows, _table(conv, features, height, width), per_sample_weights=value,
                                   mode="sum", padding_idx=box.cells)
    out = out.view(-1, out_h, out_w, channels).permute(0, 3, 1, 2)
    return out if conv.bias is None else out + conv.bias.view(1, channels, 1, 1)


def _sparse_ok(box: TokenToBox, conv: nn.Conv2d) -> bool:
    return (conv.padding in ((0, 0), "valid") and conv.dilation == (1, 1) and conv.groups == 1
            and conv.in_channels == box.num_features and box.height <= 16 and box.width <= 16)


def _table(conv: nn.Conv2d, features: int, height: int, width: int) -> torch.Tensor:
    """``[F*H*W + 1, OH*OW*C]``: row ``(f, r, s)`` holds the weights that cell's feature ``f`` meets at every
    output position (zeros where the kernel does not cover it); the last row is zeros (padding)."""
    weight = conv.weight
    cacheable = not torch.is_grad_enabled()
    if cacheable:
        cached = getattr(conv, "_token_table", None)
        key = (weight._version, weight.data_ptr(), weight.device, weight.dtype)
        if cached is not None and cached[0] == key:
            return cached[1]
    table = _LaidOut.apply(weight, height, width, conv.stride)
    if cacheable:
        conv._token_table = (key, table)
    return table


class _LaidOut(torch.autograd.Function):
    """The weight ``[C, F, KH, KW]`` laid out as the table ``[F*H*W + 1, OH*OW*C]``. Viewed as ``[F, H, W, OH,
    OW, C]``, output position ``(i, j)`` holds the kernel at rows ``i*SH ..`` and columns ``j*SW ..``: one block
    copy per position, and the backward sums the same blocks of the table's gradient (a gather-and-scatter
    through an index table cost ~6% of an arena update, its sort included)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, height: int, width: int, stride: tuple[int, int]) -> torch.Tensor:
        channels, features, kh, kw = weight.shape
        out_h, out_w = (height - kh) // stride[0] + 1, (width - kw) // stride[1] + 1
        table = weight.new_zeros(features * height * width + 1, out_h * out_w * channels)
        blocks = table[:-1].view(features, height, width, out_h, out_w, channels)
        kernel = weight.permute(1, 2, 3, 0)  # [F, KH, KW, C]
        for i in range(out_h):
            for j in range(out_w):
                blocks[:, i * stride[0]:i * stride[0] + kh, j * stride[1]:j * stride[1] + kw, i, j] = kernel
        ctx.geometry = (weight.shape, height, width, stride, out_h, out_w)
        return table

    @staticmethod
    def backward(ctx, grad_table: torch.Tensor):
        (channels, features, kh, kw), height, width, stride, out_h, out_w = ctx.geometry
        blocks = grad_table[:-1].reshape(features, height, width, out_h, out_w, channels)
        grad = grad_table.new_zeros(features, kh, kw, channels)
        for i in range(out_h):
            for j in range(out_w):
                grad += blocks[:, i * stride[0]:i * stride[0] + kh, j * stride[1]:j * stride[1] + kw, i, j]
        return grad.permute(3, 0, 1, 2), None, None, None
