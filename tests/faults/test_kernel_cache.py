"""The fused-LSTM kernel cache: one build folder per environment, and no lock that can make a process wait
forever (a build killed midway, a held lock). Every test uses its own METTA_AGENT_CACHE; one real build is
shared by the module (the one finished after a build is killed)."""

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest

from metta_agent.blocks import fused_lstm

REPO = Path(__file__).resolve().parents[2]  # the checkout: subprocesses import this code
BUILD_TIMEOUT = 300  # a build takes 30-60 s on a loaded machine; past this the test reports a hang

# Loads the kernel and checks it against nn.LSTM; prints LOADED, or FALLBACK and the reason.
LOADER = """
import sys, torch
from metta_agent.blocks import fused_lstm
if fused_lstm.load() is None:
    print("FALLBACK", fused_lstm.failure())
    sys.exit(0)
torch.manual_seed(0)
lstm, x, h = torch.nn.LSTM(3, 4), torch.randn(2, 5, 3), torch.zeros(1, 2, 4)
y, _, _ = fused_lstm.fused_lstm(lstm, x, h, h.clone(), torch.ones(2, 5))
assert torch.allclose(y, lstm(x.transpose(0, 1), (h, h.clone()))[0].transpose(0, 1), atol=1e-5)
print("LOADED")
"""


def cache_env(cache: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("METTA_AGENT_FUSED_LSTM", fused_lstm.LOCK_TIMEOUT_ENV)}
    env.update(METTA_AGENT_CACHE=str(cache), **extra)
    return env


def directory_for(env: dict[str, str]) -> Path:
    with mock.patch.dict(os.environ, env, clear=True):
        return fused_lstm.build_directory()


def run(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([sys.executable, *args], env=env, cwd=REPO, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"{' '.join(args)[:60]} hung for {timeout} s (stderr: {error.stderr!r})")


def poll(condition, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(interval)


@pytest.fixture(scope="module")
def built_cache(tmp_path_factory):
    """A build killed (SIGKILL) while ninja runs, then a second process that builds and loads: the cache both
    leave is shared by the tests below."""
    env = cache_env(tmp_path_factory.mktemp("kernel-cache"))
    directory = directory_for(env)
    first = subprocess.Popen([sys.executable, "-m", "metta_agent.blocks.fused_lstm"], env=env, cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Mid-build: torch's lock file is there and ninja or the compiler runs in the build folder.
        poll(lambda: first.poll() is not None or ((directory / fused_lstm.TORCH_LOCK_NAME).exists()
                                                  and fused_lstm._orphan_builders(directory)),
             120, "the first build to start", interval=0.02)
        assert first.poll() is None, "the first process ended before its build was seen running"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert (directory / fused_lstm.TORCH_LOCK_NAME).exists(), "the killed build should have left torch's lock"
    started = time.monotonic()
    second = run(["-m", "metta_agent.blocks.fused_lstm"], env, BUILD_TIMEOUT)
    assert second.returncode == 0 and "ready in" in second.stdout, second.stdout + second.stderr
    assert not fused_lstm._orphan_builders(directory), "the killed build's ninja and compiler were stopped"
    print(f"build after the killed one: {time.monotonic() - started:.1f} s; {second.stderr.strip()}")
    return env, directory


def test_killed_build_does_not_block_the_next(built_cache):
    env, directory = built_cache
    assert any(directory.glob("metta_agent_fused_lstm*.so"))
    assert not (directory / fused_lstm.TORCH_LOCK_NAME).exists()
    result = run(["-c", LOADER], env, 120)
    assert result.stdout.split() == ["LOADED"], result.stdout + result.stderr


def test_stale_torch_lock_does_not_block_loading(built_cache):
    env, directory = built_cache
    (directory / fused_lstm.TORCH_LOCK_NAME).write_text("")  # as a build killed before torch removed it
    result = run(["-c", LOADER], env, 120)
    assert result.stdout.split() == ["LOADED"], result.stdout + result.stderr
    assert not (directory / fused_lstm.TORCH_LOCK_NAME).exists()


def hold_flock(directory: Path):
    directory.mkdir(parents=True, exist_ok=True)
    handle = open(directory / fused_lstm.LOCK_NAME, "a+")
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def test_held_lock_falls_back_with_one_line(tmp_path):
    env = cache_env(tmp_path, **{fused_lstm.LOCK_TIMEOUT_ENV: "1"})
    directory = directory_for(env)
    with hold_flock(directory):
        started = time.monotonic()
        result = run(["-c", LOADER], env, 60)
        elapsed = time.monotonic() - started
    assert result.returncode == 0 and result.stdout.startswith("FALLBACK"), result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert str(directory / fused_lstm.LOCK_NAME) in lines[0] and f"PID {os.getpid()}" in lines[0], lines[0]
    assert not any(directory.glob("*.so")) and not (directory / "build.ninja").exists()
    assert elapsed < 30


def test_loader_waits_for_a_lock_released_in_time(built_cache):
    env, directory = built_cache
    with hold_flock(directory):
        loader = subprocess.Popen([sys.executable, "-c", LOADER], env=env, cwd=REPO, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        time.sleep(2)  # holding the lock while the loader starts and waits for it
    try:
        out, err = loader.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        loader.kill()
        pytest.fail("the loader hung after the lock was released")
    assert out.split() == ["LOADED"], out + err


def test_key_differs_between_interpreters_and_builds(monkeypatch):
    fields = fused_lstm.key_fields()
    key = fused_lstm.cache_key(fields)
    assert key == fused_lstm.cache_key(dict(fields)), "the key is deterministic"
    assert key.startswith("torch") and "-py" in key and len(key) < 80
    for name, other in [("prefix", "/other/venv"), ("python", "cpython-3.12.1"), ("source", "/other/fused_lstm.cpp"),
                        ("source_sha256", "0" * 64), ("flags", "-O2"), ("torch", "2.9.1+cu128"),
                        ("accelerator", "cuda12.8"), ("compiler", "clang++"), ("ninja", "/usr/bin/ninja 1.11.1")]:
        assert fused_lstm.cache_key({**fields, name: other}) != key, name
    # Two interpreters (venvs) of the same Python and torch: two build folders.
    monkeypatch.setenv("METTA_AGENT_CACHE", "/tmp/unused")
    first = fused_lstm.build_directory()
    monkeypatch.setattr(sys, "prefix", "/some/other/venv")
    second = fused_lstm.build_directory()
    assert first != second and first.parent == second.parent


def test_the_build_runs_the_interpreters_own_ninja_activated_or_not(monkeypatch):
    """Two ninja versions read each other's build log as a changed command and rebuild: activated and plain
    ``.venv/bin/python`` processes must build with the same one, the environment's (a dependency)."""
    own = Path(sys.executable).parent
    if not (own / "ninja").exists():
        pytest.skip("no ninja beside this interpreter")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # as `make test` runs it: the environment not activated
    assert fused_lstm.key_fields()["ninja"].startswith(f"{own / 'ninja'} ")
    with fused_lstm._build_environment():
        assert shutil.which("ninja") == str(own / "ninja")
    assert os.environ["PATH"] == "/usr/bin:/bin"


def test_disabled_by_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("METTA_AGENT_CACHE", str(tmp_path))
    monkeypatch.setenv("METTA_AGENT_FUSED_LSTM", "0")
    monkeypatch.setattr(fused_lstm, "_kernel", None)
    monkeypatch.setattr(fused_lstm, "_failure", None)
    assert fused_lstm.load() is None and "METTA_AGENT_FUSED_LSTM=0" in fused_lstm.failure()
    assert not (tmp_path / "kernels").exists()


def test_no_compiler_falls_back(tmp_path):
    env = cache_env(tmp_path, CXX=str(tmp_path / "no-such-compiler"))
    result = run(["-m", "metta_agent.blocks.fused_lstm"], env, 120)
    assert result.returncode == 0 and "unavailable" in result.stdout, result.stdout + result.stderr
