"""Data-parallel training: 2 CPU ranks through the CLI's torchrun launcher, and the checks it relies on."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from metta_agent.checkpoint import list_checkpoints, load_checkpoint
from metta_agent.cli import _without_options, main
from metta_agent.trainer import distributed

TINY = ["--game", "heart", "--set", "trainer.num_envs=4", "--set", "trainer.batch_size=1024",
        "--set", "trainer.minibatch_size=512", "--set", "trainer.bptt_horizon=16"]


def test_two_ranks_train_with_identical_weights(tmp_path):
    """2 ranks x 1024 agent steps per epoch, 4096 steps = 2 epochs; weights identical on both ranks."""
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "metta_agent.cli", "train", "--nproc-per-node", "2", *TINY, "--steps", "4096",
         "--run-dir", str(run_dir), "--quiet", "--json"],
        capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])  # rank 0 alone prints it
    assert summary["world_size"] == 2 and summary["epochs"] == 2 and summary["agent_steps"] == 4096
    assert len(done.stdout.strip().splitlines()) == 1

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]  # one line per epoch: only rank 0 logs
    assert [row["agent_steps"] for row in rows] == [2048, 4096]  # both ranks' steps
    assert all(row["world_size"] == 2 for row in rows)
    # Rank 0's weights broadcast and compared with every rank's after each update (see the test below).
    assert [row["replica_divergence"] for row in rows] == [0.0, 0.0]
    # Each epoch's episodes come from both ranks: 8 envs x 4 agents; the staggered first episodes end early.
    assert rows[0]["episodes"] >= 2 * 4

    checkpoints = list_checkpoints(run_dir)
    assert [path.name for path in checkpoints] == ["epoch_000002.pt"]
    metadata, tensors = load_checkpoint(checkpoints[-1])
    assert metadata["trainer"]["world_size"] == 2 and metadata["trainer"]["agent_steps"] == 4096


def _divergence_worker(rank: int, init_file: str, results: dict) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        world = distributed.World(rank=rank, world_size=2, local_rank=rank, local_world_size=2)
        torch.manual_seed(0)
        module = torch.nn.Linear(4, 3)
        same = distributed.replica_divergence(module, world)
        with torch.no_grad():
            module.bias[1] += 0.25 * rank  # rank 1 drifts
        drifted = distributed.replica_divergence(module, world)
        stop = distributed.any_rank(rank == 1, world)
        gathered = distributed.gather_lists([rank, rank], world)
        results[rank] = (same, drifted, stop, gathered)
    finally:
        torch.distributed.destroy_process_group()


def test_replica_divergence_sees_a_rank_that_drifted(tmp_path):
    """The weight check the 2-rank test reads is able to fail: 0 for equal replicas, the gap otherwise."""
    manager = torch.multiprocessing.Manager()
    results = manager.dict()
    torch.multiprocessing.spawn(_divergence_worker, args=(str(tmp_path / "init"), results), nprocs=2)
    for rank in (0, 1):
        same, drifted, stop, gathered = results[rank]
        assert same == 0.0
        assert drifted == pytest.approx(0.25)
        assert stop is True  # rank 1 asked to stop: both ranks stop
        assert gathered == [0, 0, 1, 1]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--nproc-per-node", "0"], "--nproc-per-node must be at least 1, got 0"),
        (["--nnodes", "0"], "--nnodes must be at least 1"),
        (["--nnodes", "2"], "--nnodes > 1 needs --master-addr"),
        (["--nnodes", "2", "--node-rank", "2", "--master-addr", "h"], "--node-rank must be in 0..1"),
        (["--nproc-per-node", "2", "--set", "trainer.batch_size=1000"], "must be divisible by trainer.bptt_horizon"),
        (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--device", "tpu"], "trainer.device"),
    ],
)
def test_launcher_errors_are_one_line_and_exit_code_2(args, message, capsys, tmp_path):
    code = main(["train", "--game", "heart", "--run-dir", str(tmp_path / "run"), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_launcher_passes_every_other_option_to_the_ranks():
    argv = ["train", "--nproc-per-node", "2", "--game", "heart", "--nnodes=1", "--run-dir", "x", "--set",
            "trainer.seed=3", "--master-port", "29500"]
    names = ("--nproc-per-node", "--nnodes", "--node-rank", "--master-addr", "--master-port", "--run-dir")
    assert _without_options(argv, names) == ["train", "--game", "heart", "--set", "trainer.seed=3"]
    command = distributed.torchrun_command(["train"], 2)
    assert command[1:5] == ["-m", "torch.distributed.run", "--nproc-per-node=2", "--standalone"]
    command = distributed.torchrun_command(["train"], 4, nnodes=2, node_rank=1, master_addr="n0", master_port=29500)
    assert "--nnodes=2" in command and "--node-rank=1" in command and "--master-addr=n0" in command
    assert "--standalone" not in command and command[-3:] == ["-m", "metta_agent.cli", "train"]


def test_a_single_process_is_rank_0_of_1(monkeypatch):
    for name in distributed.TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with distributed.process_group("cpu") as world:
        assert world == distributed.World() and world.is_main and not world.distributed
    agent = torch.nn.Linear(2, 2)
    assert distributed.wrap_for_training(agent, torch.device("cpu"), world) is agent
    assert distributed.any_rank(True, world) and distributed.gather_lists([1], world) == [1]
    assert os.environ.get("RANK") is None


def _rank_pid(root_pid: int, rank: int) -> int | None:
    """The PID of the process below ``root_pid`` whose environment says RANK=rank (Linux /proc)."""
    import pathlib

    for proc in pathlib.Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            stat = (proc / "stat").read_text().split()
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ and b"LOCAL_RANK=" + str(rank).encode() in environ:
            parent = int(stat[3])
            while parent > 1:
                if parent == root_pid:
                    return int(proc.name)
                try:
                    parent = int(pathlib.Path(f"/proc/{parent}/stat").read_text().split()[3])
                except OSError:
                    break
    return None


def test_a_killed_rank_ends_the_run_with_one_line_naming_it(tmp_path):
    import signal
    import time

    run_dir = tmp_path / "run"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "metta_agent.cli", "train", "--nproc-per-node", "2", *TINY, "--steps", "100000000",
         "--set", "trainer.eval_interval=0", "--set", "trainer.checkpoint_interval=1", "--run-dir", str(run_dir),
         "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 600  # a bound for a loaded machine; the test waits for the first epoch
    while not (metrics.exists() and metrics.read_text().count("\n") >= 1):
        assert launcher.poll() is None, launcher.stderr.read()
        assert time.monotonic() < deadline, "timed out waiting for the first epoch"
        time.sleep(0.1)
    victim = _rank_pid(launcher.pid, 1)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    _, err = launcher.communicate(timeout=300)
    assert launcher.returncode == 1
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) == 1, err
    assert "rank 1 was killed by SIGKILL" in lines[0] and f"--run-dir {run_dir} --resume" in lines[0]


def test_the_launcher_filter_holds_back_rank_prefixed_tracebacks_and_reads_the_root_cause():
    # The surviving rank's traceback as torch prints it (each line prefixed with "[rank0]: "), then torchrun's
    # failure report; the rank's own warning line passes through unchanged.
    stderr = [
        "[rank0]: Traceback (most recent call last):\n",
        '[rank0]:   File "<frozen runpy>", line 198, in _run_module_as_main\n',
        "[rank0]:     work.wait()\n",
        "[rank0]: RuntimeError: Read error [127.0.0.1]:45450: Connection reset by peer.\n",
        "W1203 14:00:00.000000 123 torch/distributed/elastic/multiprocessing/api.py:900] Sending process 7 closing\n",
        "[rank0]: warning: something the user should see\n",
        "=" * 60 + "\n",
        "Root Cause (first observed failure):\n",
        "[0]:\n",
        "  rank      : 1 (local_rank: 1)\n",
        "  exitcode  : -9 (pid: 8)\n",
        "  traceback : Signal 9 (SIGKILL) received by PID 8\n",
        "=" * 60 + "\n",
    ]
    forwarded: list[str] = []
    failure = distributed.filter_launcher_stderr(stderr, forwarded.append)
    assert forwarded == ["[rank0]: warning: something the user should see\n"]
    assert (failure.rank, failure.exit_code, failure.signal_name) == ("1", "-9", "SIGKILL")
