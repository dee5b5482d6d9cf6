"""One writer per run directory; readers work on a run that is training; a killed writer leaves no lock."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from metta_agent.cli import main

SMALL = ["--game", "heart", "--set", "trainer.num_envs=4", "--set", "trainer.batch_size=256",
         "--set", "trainer.minibatch_size=128", "--set", "trainer.bptt_horizon=16", "--set", "trainer.eval_interval=0",
         "--set", "trainer.checkpoint_interval=1", "--set", "game.max_steps=40"]
WAIT_SECONDS = 300  # a generous bound for a loaded machine; the test waits for a file, not for this


def wait_for_checkpoint(process: subprocess.Popen, run_dir) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not list((run_dir / "checkpoints").glob("epoch_*.pt")) if (run_dir / "checkpoints").is_dir() else True:
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, "timed out waiting for the first checkpoint"
        time.sleep(0.1)


def test_second_writer_is_refused_readers_work_and_a_killed_writer_leaves_no_lock(tmp_path, capsys):
    run_dir = tmp_path / "run"
    writer = subprocess.Popen([sys.executable, "-m", "metta_agent.cli", "train", *SMALL, "--steps", "100000000",
                               "--run-dir", str(run_dir), "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
    try:
        wait_for_checkpoint(writer, run_dir)
        assert main(["train", "--run-dir", str(run_dir), "--resume", "--quiet"]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert f"PID {writer.pid}" in err

        assert main(["eval", str(run_dir), "--episodes", "1", "--max-steps", "5", "--json"]) == 0, "a reader"
        capsys.readouterr()
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=60)

    rows_before = (run_dir / "metrics.jsonl").read_text().count("\n")
    steps = 256 * (rows_before + 1)
    assert main(["train", "--run-dir", str(run_dir), "--resume", "--steps", str(steps), "--quiet", "--json"]) == 0
    assert capsys.readouterr().err.count("Traceback") == 0
