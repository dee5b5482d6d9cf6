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

The build folder is keyed by everything that makes two builds differ (``key_fields()``): torch version, place
and CUDA/CPU build, Python version, ``sys.prefix`` and include folder, the source's path and content hash,
compiler and flags, machine, and the ninja that builds it. So environments sharing a home directory (two
checkouts, a test venv) each keep their own build instead of rebuilding over one another. The build runs the
ninja beside the interpreter first (the ``ninja`` package of the project's environment), whether or not that
environment is activated: two ninja versions read each other's build log as "command line changed", and
activated and plain ``.venv/bin/python`` processes used to rebuild the kernel over each other at every start.
Building and loading hold an ``fcntl.flock`` on ``build.flock`` in that folder (the holder's PID written in
it; the OS releases it when the holder dies). Under it a ``lock`` file left by a killed build (torch's ``FileBaton``, on which torch would wait forever)
is removed, and build processes orphaned by a killed build (ninja, the compiler) are stopped. The wait for
the flock is bounded by ``$METTA_AGENT_KERNEL_LOCK_TIMEOUT`` seconds (default 300): past it the process prints
one line naming the lock and its holder's PID and runs the ``nn.LSTM`` path instead; it never hangs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import warnings
from pathlib import Path

import torch

try:
    import fcntl
except ImportError:  # not POSIX: no build lock (torch's own lock file still serializes builds)
    fcntl = None

_SOURCE = Path(__file__).parent / "csrc" / "fused_lstm.cpp"
_NAME = "metta_agent_fused_lstm"
LOCK_NAME = "build.flock"  # our flock, in the build folder
TORCH_LOCK_NAME = "lock"  # torch's FileBaton in the build folder, waited on forever by cpp_extension.load
LOCK_TIMEOUT_ENV = "METTA_AGENT_KERNEL_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT = 300.0  # a build takes 30-100 s; a loaded machine can queue a few
# Processes that a killed build can leave running in the build folder (ninja and the compiler it started).
_BUILD_TOOLS = {"ninja", "cc", "c++", "g++", "gcc", "cc1", "cc1plus", "as", "ld", "ld.bfd", "ld.gold", "ld.lld",
                "collect2", "clang", "clang++", "ccache", "sccache"}
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


def key_fields() -> dict[str, str]:
    """Everything that makes two builds of the kernel differ (torch's build command and its inputs)."""
    cuda, hip = torch.version.cuda, getattr(torch.version, "hip", None)
    return {
        "torch": torch.__version__,
        "torch_path": str(Path(torch.__file__).resolve().parent),
        "accelerator": f"cuda{cuda}" if cuda else f"hip{hip}" if hip else "cpu",
        "python": f"{sys.implementation.name}-{platform.python_version()}",
        "prefix": sys.prefix,
        "python_include": sysconfig.get_paths().get("include", ""),
        "source": str(_SOURCE.resolve()),
        "source_sha256": hashlib.sha256(_SOURCE.read_bytes()).hexdigest(),
        "compiler": os.environ.get("CXX", "c++"),
        "flags": " ".join(_build_flags()),
        "machine": platform.machine(),
        "ninja": _ninja(),
    }


def _build_path() -> str:
    """PATH for the build: the interpreter's own folder first, so its environment's ninja runs."""
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def _ninja() -> str:
    """The ninja the build will run, and its version."""
    path = shutil.which("ninja", path=_build_path())
    if path is None:
        return "none"
    try:
        version = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        version = "unknown"
    return f"{path} {version}"


@contextlib.contextmanager
def _build_environment():
    before = os.environ.get("PATH")
    os.environ["PATH"] = _build_path()
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PATH", None)
        else:
            os.environ["PATH"] = before


def cache_key(fields: dict[str, str]) -> str:
    """A readable folder name (torch, Python, machine, vector flags) ending in a short hash of all ``fields``."""
    python = "".join(fields["python"].rsplit("-", 1)[-1].split(".")[:2])
    vector = "avx2" if "-mavx2" in fields["flags"].split() else "default"
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]
    return f"torch{fields['torch']}-py{python}-{fields['machine']}-{vector}-{digest}".replace("+", "_")


def build_directory() -> Path:
    root = Path(os.environ.get("METTA_AGENT_CACHE", Path.home() / ".cache" / "metta-agent"))
    return root / "kernels" / cache_key(key_fields())


def lock_timeout() -> float:
    try:
        return max(0.0, float(os.environ.get(LOCK_TIMEOUT_ENV, DEFAULT_LOCK_TIMEOUT)))
    except ValueError:
        return DEFAULT_LOCK_TIMEOUT


class _LockTimeout(Exception):
    """The build lock (or a killed build's orphans) did not come free in time; the message is one line."""


def _holder(path: Path) -> str:
    try:
        pid, *host = path.read_text().split()
    except (OSError, ValueError):
        return "PID unknown"
    return f"PID {pid}" + (f" on {host[0]}" if host and host[0] != socket.gethostname() else "")


@contextlib.contextmanager
def _build_lock(directory: Path, deadline: float):
    """Hold an exclusive flock on ``directory/build.flock`` (released by the OS if this process dies)."""
    if fcntl is None:
        yield
        return
    path = directory / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise _LockTimeout(f"the kernel build lock {path} is held by {_holder(path)} "
                                       f"(waited {lock_timeout():g} s, {LOCK_TIMEOUT_ENV})") from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the flock


def _orphan_builders(directory: Path) -> list[int]:
    """Build tools (ninja, the compiler) still running in ``directory``, left by a killed build (Linux /proc)."""
    target, found = os.path.realpath(directory), []
    try:
        entries = list(os.scandir("/proc"))
    except OSError:
        return found
    for entry in entries:
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if os.readlink(f"/proc/{entry.name}/cwd") != target:
                continue
            with open(f"/proc/{entry.name}/comm") as comm:
                if comm.read().strip() in _BUILD_TOOLS:
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def _stop_orphans(directory: Path, deadline: float) -> None:
    """Stop the ninja and compiler processes that a killed build left in ``directory`` (called under the flock,
    so no live build owns them). Their work is lost anyway: ninja dies of SIGPIPE when it reports a finished
    step to its dead parent, before logging it, so the next ninja compiles again; letting them run would only
    cost a compile's time and let two compilers write the same files."""
    started, orphans = time.monotonic(), _orphan_builders(directory)
    deadline = max(deadline, started + 10)  # stopping them takes a few seconds, even after a long flock wait
    if orphans:
        print(f"metta-agent: stopping build processes {orphans} left by a killed kernel build in {directory}",
              file=sys.stderr, flush=True)
    while orphans:
        if time.monotonic() >= deadline:
            raise _LockTimeout(f"build processes {orphans} of a killed kernel build still run in {directory} "
                               f"(waited {lock_timeout():g} s, {LOCK_TIMEOUT_ENV})")
        for pid in orphans:  # SIGTERM lets ninja remove half-written outputs; SIGKILL whatever ignores it
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM if time.monotonic() - started < 5 else signal.SIGKILL)
        time.sleep(0.1)
        orphans = _orphan_builders(directory)


def _build_and_load(directory: Path, deadline: float):
    from torch.utils import cpp_extension

    with _build_lock(directory, deadline):
        # Whoever made these held no flock, so it is dead: its lock file and its orphans must not block us.
        _stop_orphans(directory, deadline)
        with contextlib.suppress(FileNotFoundError):
            (directory / TORCH_LOCK_NAME).unlink()
        if not any(directory.glob(f"{_NAME}*.so")):
            print(f"metta-agent: compiling the fused LSTM kernel into {directory} (first use only, ~30 s)",
                  file=sys.stderr, flush=True)
        with _build_environment():
            return cpp_extension.load(_NAME, [str(_SOURCE)], extra_cflags=_build_flags(),
                                      build_directory=str(directory), verbose=False)


def load():
    """The compiled kernel module, built on first call; None (with the reason in ``failure()``) if unavailable."""
    global _kernel, _failure
    if _kernel is not None or _failure is not None:
        return _kernel
    if os.environ.get("METTA_AGENT_FUSED_LSTM", "1") == "0":
        _failure = "disabled by METTA_AGENT_FUSED_LSTM=0"
        return None
    deadline = time.monotonic() + lock_timeout()
    try:
        directory = build_directory()
        directory.mkdir(parents=True, exist_ok=True)
        _kernel = _build_and_load(directory, deadline)
    except _LockTimeout as error:  # never wait forever on another process: one line, then the nn.LSTM path
        _failure = str(error)
        print(f"metta-agent: fused LSTM kernel not loaded: {_failure}; training runs nn.LSTM over episode pieces "
              "instead", file=sys.stderr, flush=True)
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
