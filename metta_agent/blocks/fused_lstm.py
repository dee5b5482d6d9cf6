"""The fused CPU LSTM used for training segments with restarts inside them.

``nn.LSTM`` cannot reset the state of one row in the middle of a sequence, so a minibatch with restarts had to
be cut into several LSTM calls (one per step where some segment restarts), and short episodes made training
about 20% slower. The kernel in ``csrc/fused_lstm.cpp`` runs all steps of all rows in one call and multiplies
the state entering each step by ``keep`` (0 where that row starts a new episode), so its cost does not depend
on how many restarts there are. It computes the same network as ``nn.LSTM`` (same parameters, gate order and
math) to float rounding. It is about 25% slower than one ``nn.LSTM`` call that ignores restarts, so a
minibatch without restarts skips it (``recurrent.py``).

The kernel is compiled on first use (about 30 s, cached under ``$METTA_AGENT_CACHE`` or
``~/.cache/metta-agent``; ``make install`` does it up front). Without a C++ compiler, on CUDA, or with
``METTA_AGENT_FUSED_LSTM=0``, the core runs one ``nn.LSTM`` call over the segments' episode pieces instead
(see ``recurrent.py``).
"""

from __future__ import annotations

import os
import platform
import sys
import warnings
from pathlib import Path

import torch

_SOURCE = Path(__file__).parent / "csrc" / "fused_lstm.cpp"
_kernel = None
_failure: str | None = None


def _build_flags() -> list[str]:
    """Vector instructions for ATen's ``Vectorized`` (its AVX2 path, with Sleef's exp and tanh, on x86)."""
    flags = ["-O3"]
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        flags += ["-mavx2", "-mfma", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    else:
        flags += ["-DCPU_CAPABILITY=DEFAULT"]
    return flags


def build_directory() -> Path:
    root = Path(os.environ.get("METTA_AGENT_CACHE", Path.home() / ".cache" / "metta-agent"))
    # One build per torch, Python, machine type and vector flags: a home directory may be shared by machines.
    vector = "avx2" if "-mavx2" in _build_flags() else "default"
    tag = f"torch{torch.__version__}-py{sys.version_info.major}{sys.version_info.minor}-{platform.machine()}-{vector}"
    return root / "kernels" / tag.replace("+", "_")


def load():
    """The compiled kernel module, built on first call; None (with the reason in ``failure()``) if unavailable."""
    global _kernel, _failure
    if _kernel is not None or _failure is not None:
        return _kernel
    if os.environ.get("METTA_AGENT_FUSED_LSTM", "1") == "0":
        _failure = "disabled by METTA_AGENT_FUSED_LSTM=0"
        return None
    directory = build_directory()
    name = "metta_agent_fused_lstm"
    try:
        from torch.utils import cpp_extension

        directory.mkdir(parents=True, exist_ok=True)
        if not any(directory.glob(f"{name}*.so")):
            print(f"metta-agent: compiling the fused LSTM kernel into {directory} (first use only, ~30 s)",
                  file=sys.stderr, flush=True)
        _kernel = cpp_extension.load(name, [str(_SOURCE)], extra_cflags=_build_flags(),
                                     build_directory=str(directory), verbose=False)
    except Exception as error:  # no compiler, no ninja, headers missing: fall back, and say so once
        _failure = f"{type(error).__name__}: {str(error).strip().splitlines()[-1] if str(error).strip() else ''}"
        warnings.warn(f"fused LSTM kernel unavailable ({_failure}); training runs nn.LSTM over episode pieces "
                      "instead, which is slower on a CPU when episodes are short", stacklevel=2)
    return _kernel


def failure() -> str | None:
    return _failure


def usable(x: torch.Tensor) -> bool:
    """Whether the fused kernel can run on this input (CPU, float32/float64, kernel built)."""
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and load() is not None


class _FusedLSTM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h0, c0, keep, *weights):
        y, h_n, c_n, *saved = _kernel.forward(x, h0, c0, keep, list(weights), True)
        ctx.save_for_backward(keep, *weights, *saved)
        ctx.num_weights = len(weights)
        return y, h_n, c_n

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy, dh_n, dc_n):
        keep, *rest = ctx.saved_tensors
        weights, saved = rest[:ctx.num_weights], rest[ctx.num_weights:]
        dx, dh0, dc0, *dw = _kernel.backward(dy, dh_n, dc_n, keep, weights, saved)
        return dx, dh0, dc0, None, *dw


def fused_lstm(lstm: torch.nn.LSTM, x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, keep: torch.Tensor):
    """``lstm`` over batch-major ``x [B, T, input]`` from ``(h0, c0) [layers, B, hidden]``, where the state
    entering step ``t`` of row ``b`` is multiplied by ``keep[b, t]``; returns ``(y [B, T, hidden], h_n, c_n)``.

    Only single-direction LSTMs with biases and no projection are supported; ``usable(x)`` says whether the
    kernel can run at all.
    """
    if lstm.bidirectional or not lstm.bias or lstm.proj_size:
        raise ValueError("fused_lstm supports unidirectional nn.LSTM with biases and no projection")
    if load() is None:
        raise RuntimeError(f"the fused LSTM kernel is unavailable: {failure()}")
    keep = keep.to(x.dtype)
    weights = lstm._flat_weights
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, h0, c0, *weights)):
        return _FusedLSTM.apply(x, h0, c0, keep, *weights)
    y, h_n, c_n = _kernel.forward(x, h0, c0, keep, list(weights), False)
    return y, h_n, c_n


if __name__ == "__main__":  # `python -m metta_agent.blocks.fused_lstm`: build the kernel now (make install)
    kernel = load()
    print(f"fused LSTM kernel: {'ready in ' + str(build_directory()) if kernel else 'unavailable: ' + str(failure())}")
    sys.exit(0)
