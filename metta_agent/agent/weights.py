"""Weight management shared by both policy forms (docs/design.md, "Weight management"): clipping, L2-init loss, spectra.

A policy names its clipped layers (``{name: (module, clip_scale)}``); the same names in both forms give the
same bounds. The initial weights are kept as buffers so the L2-init term and the clip bounds survive a
checkpoint round trip.
"""

import math

import torch
from torch import nn

COLLAPSED_SINGULAR_VALUE = 1e-3  # relative to the largest singular value
EFFECTIVE_RANK_MASS = 0.99


class WeightManager(nn.Module):
    """Clip bounds and initial weights of a policy's clipped layers."""

    def __init__(self, layers: dict[str, tuple[nn.Module, float]]):
        super().__init__()
        # Plain dict: the layers belong to the policy; registering them here would duplicate state keys.
        self.__dict__["_layers"] = {name: module for name, (module, _) in layers.items()}
        self.clip_scales = {name: float(scale) for name, (_, scale) in layers.items()}
        for name, module in self._layers.items():
            self.register_buffer(_buffer(name), module.weight.detach().clone())

    @property
    def layer_names(self) -> list[str]:
        return list(self._layers)

    def initial_weight(self, name: str) -> torch.Tensor:
        return getattr(self, _buffer(name))

    @torch.no_grad()
    def clip(self, clip_range: float) -> None:
        """Clamp each layer's weight (not bias) to +-(clip_range x max|W0| x clip_scale); scale 0 exempts."""
        if clip_range <= 0:
            return
        for name, module in self._layers.items():
            scale = self.clip_scales[name]
            if scale <= 0:
                continue
            bound = clip_range * scale * float(self.initial_weight(name).abs().max())
            module.weight.clamp_(-bound, bound)

    def l2_init_loss(self, l2_init_scale: float) -> torch.Tensor:
        """Sum of l2_init_scale x ||W - W0||^2 over the layers, with gradient."""
        total = None
        for name, module in self._layers.items():
            term = (module.weight - self.initial_weight(name)).pow(2).sum()
            total = term if total is None else total + term
        if total is None:
            return torch.zeros(())
        return l2_init_scale * total

    @torch.no_grad()
    def metrics(self) -> dict[str, float]:
        """``weights/<metric>/<layer>`` for every 2-D weight (conv kernels flattened to [out, in*k*k])."""
        result: dict[str, float] = {}
        for name, module in self._layers.items():
            for metric, value in spectrum_metrics(module.weight.detach().flatten(1)).items():
                result[f"weights/{metric}/{name}"] = value
        return result


def spectrum_metrics(matrix: torch.Tensor) -> dict[str, float]:
    singular = torch.linalg.svdvals(matrix.float().cpu())
    largest = float(singular[0])
    smallest = float(singular[-1])
    total = float(singular.sum())
    metrics = {
        "frobenius_norm": float(matrix.float().norm()),
        "mean_singular_value": float(singular.mean()),
        "max_singular_value": largest,
        "condition_ratio": largest / smallest if smallest > 0 else math.inf,
        "collapsed_dim_fraction": float((singular < COLLAPSED_SINGULAR_VALUE * largest).float().mean()),
    }
    positive = singular[singular > 0]
    if positive.numel() >= 2:
        log_rank = torch.log(torch.arange(1, positive.numel() + 1, dtype=torch.float64))
        log_sv = torch.log(positive.double())
        slope, r2 = _linear_fit(log_rank, log_sv)
    else:
        slope, r2 = 0.0, 0.0
    metrics["spectrum_loglog_slope"] = slope
    metrics["spectrum_loglog_r2"] = r2
    cumulative = torch.cumsum(singular, 0) / total if total > 0 else torch.ones_like(singular)
    metrics["effective_rank"] = float(int((cumulative < EFFECTIVE_RANK_MASS).sum()) + 1)
    return metrics


def _linear_fit(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    x_mean, y_mean = x.mean(), y.mean()
    sxx = ((x - x_mean) ** 2).sum()
    sxy = ((x - x_mean) * (y - y_mean)).sum()
    slope = sxy / sxx
    residual = ((y - (y_mean + slope * (x - x_mean))) ** 2).sum()
    total = ((y - y_mean) ** 2).sum()
    r2 = 1.0 - residual / total if total > 0 else torch.tensor(1.0)
    return float(slope), float(r2)


def _buffer(layer_name: str) -> str:
    return "initial_" + layer_name.replace(".", "_")
