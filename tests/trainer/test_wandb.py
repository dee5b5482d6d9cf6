"""Optional W&B logging, offline (no network, no API key): what lands under the run directory."""

from __future__ import annotations

import pytest

from metta_agent.cli import main
from metta_agent.trainer.wandb_log import wanted_mode

pytest.importorskip("wandb")

TINY = ["--game", "heart", "--set", "trainer.num_envs=2", "--set", "trainer.batch_size=256",
        "--set", "trainer.minibatch_size=128", "--set", "trainer.bptt_horizon=16", "--set", "trainer.update_epochs=1",
        "--set", "trainer.eval_interval=1", "--set", "trainer.eval_episodes=1", "--set", "game.max_steps=40", "--quiet"]


def test_without_an_api_key_wandb_logs_offline_under_the_run(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert wanted_mode() == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wanted_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wanted_mode() == "offline"
    monkeypatch.delenv("WANDB_API_KEY")

    run = tmp_path / "run"
    assert main(["train", *TINY, "--steps", "256", "--run-dir", str(run), "--wandb"]) == 0
    run_id = (run / "wandb_id").read_text().strip()
    offline = list((run / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(offline) == 1
    assert (offline[0] / f"run-{run_id}.wandb").stat().st_size > 0
    assert list(offline[0].glob("files/media/images/curve_*.png"))  # the learning curve went along
    # A resumed run continues the same W&B run.
    assert main(["train", "--resume", "--run-dir", str(run), "--steps", "512", "--quiet", "--wandb"]) == 0
    assert (run / "wandb_id").read_text().strip() == run_id
    assert len(list((run / "wandb").glob(f"offline-run-*-{run_id}"))) >= 1
