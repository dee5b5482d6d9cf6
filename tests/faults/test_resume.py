"""Checkpoints that never lose work: resume after SIGKILL, refusal of crafted or broken files, non-finite updates."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from metta_agent.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from metta_agent.cli import main
from metta_agent.config import build_config
from metta_agent.errors import TrainingError, UsageError
from metta_agent.trainer import trainer as trainer_module
from metta_agent.trainer.ppo import lr_lambda
from metta_agent.trainer.trainer import Trainer

SMALL = ["--game", "heart", "--set", "trainer.num_envs=4", "--set", "trainer.batch_size=512",
         "--set", "trainer.minibatch_size=256", "--set", "trainer.bptt_horizon=16"]


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "metta_agent.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def metric_rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_sigkill_then_resume_continues_without_repeating_an_epoch(tmp_path):
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "metta_agent.cli", "train", *SMALL, "--steps", "10000000", "--run-dir", str(run_dir),
         "--quiet", "--set", "trainer.checkpoint_interval=2", "--set", "trainer.keep_checkpoints=2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    metrics = run_dir / "metrics.jsonl"
    # A bound for a badly loaded machine only: the test waits for the event, not for a time.
    deadline = time.monotonic() + 900
    # Kill once an odd epoch has been logged after a checkpoint: its row is past the checkpoint and must go.
    while True:
        rows = metrics.read_text().count("\n") if metrics.exists() else 0
        if rows >= 5 and rows % 2 == 1 and list_checkpoints(run_dir):
            break
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"timed out waiting for 5 epochs and a checkpoint (training exited: {process.poll()}, "
                        f"{rows} rows logged)")
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    logged = [row["epoch"] for row in metric_rows(run_dir)]
    saved_epoch = load_checkpoint(run_dir)[0]["trainer"]["epoch"]
    assert saved_epoch < logged[-1], "the kill should land after an epoch newer than the checkpoint"

    total = 512 * (logged[-1] + 2)
    result = cli("train", "--run-dir", str(run_dir), "--resume", "--steps", str(total), "--quiet", "--json")
    assert result.returncode == 0, result.stderr
    rows = metric_rows(run_dir)
    epochs = [row["epoch"] for row in rows]
    assert epochs == list(range(1, len(epochs) + 1)), epochs  # every epoch once, in order
    assert rows[-1]["agent_steps"] == total and rows[-1]["epoch"] == total // 512
    resumed = rows[saved_epoch]  # the first epoch after the checkpoint
    assert resumed["agent_steps"] == 512 * (saved_epoch + 1)
    assert json.loads(result.stdout.strip().splitlines()[-1])["agent_steps"] == total

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    logged_epochs = [(event.step, event.value) for event in events.Scalars("train/epoch")]
    assert logged_epochs == [(512 * epoch, epoch) for epoch in range(1, total // 512 + 1)], logged_epochs


def _checkpoint_after_two_epochs(config, run_dir):
    """A trainer of ``config`` closed after two epochs, and the checkpoint it wrote then."""
    first = Trainer(config, run_dir, show_progress=False)
    try:
        for _ in range(2):
            first.run_epoch()
        return first, first.save_checkpoint()
    finally:
        first.close()


def test_resume_restores_optimizer_schedule_and_counters(small_trainer_layers, tmp_path):
    config = build_config(small_trainer_layers + [{"trainer": {"total_agent_steps": 512 * 4, "checkpoint_interval": 1,
                                                               "lr_schedule": "linear"}}])
    first, path = _checkpoint_after_two_epochs(config, tmp_path)
    second = Trainer(config, tmp_path, show_progress=False, resume_from=path)
    try:
        assert (second.state.epoch, second.state.agent_steps) == (2, 1024)
        assert second.scheduler.last_epoch == first.scheduler.last_epoch == 2
        assert second.optimizer.param_groups[0]["lr"] == first.optimizer.param_groups[0]["lr"] < config.trainer.lr
        for name, value in first.agent.state_dict().items():
            assert torch.equal(value, second.agent.state_dict()[name]), name
        moments = [state["exp_avg"] for state in second.optimizer.state.values()]
        expected = [state["exp_avg"] for state in first.optimizer.state.values()]
        assert len(moments) == len(expected) > 0 and all(torch.equal(a, b) for a, b in zip(moments, expected))
        assert torch.equal(second.minibatch_generator.get_state(), first.minibatch_generator.get_state())
        assert second.env.seed != first.env.seed  # new maps after a resume, not a replay of the first ones
        assert second.run_epoch()["epoch"] == 3
    finally:
        second.close()


def test_resume_applies_changed_learning_rate_adam_settings_and_length(small_trainer_layers, tmp_path):
    layers = small_trainer_layers + [{"trainer": {"total_agent_steps": 512 * 4, "lr_schedule": "linear"}}]
    _, path = _checkpoint_after_two_epochs(build_config(layers), tmp_path)
    # What `--resume --steps 4096 --set trainer.lr=... --set trainer.adam_eps=...` builds.
    changed = build_config(layers + [{"trainer": {"total_agent_steps": 512 * 8, "lr": 2e-3, "adam_eps": 1e-6}}])
    second = Trainer(changed, tmp_path, show_progress=False, resume_from=path)
    try:
        rule = lr_lambda(changed.trainer, total_epochs=8)
        group = second.optimizer.param_groups[0]
        assert group["lr"] == 2e-3 * rule(2) and group["eps"] == 1e-6  # from the first resumed epoch on
        second.run_epoch()
        assert group["lr"] == 2e-3 * rule(3)
    finally:
        second.close()


class _RunsCode:
    """A pickle payload that would create a file if it were ever unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": "metta-agent-checkpoint", "format_version": 1, "metadata": "{}",
                "model": _RunsCode(marker)}, path)
    with pytest.raises(UsageError, match="refusing to load"):
        load_checkpoint(path)
    assert main(["eval", str(path)]) == 2
    assert "refusing to load" in capsys.readouterr().err
    assert not marker.exists()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    result = cli("train", *SMALL, "--steps", "512", "--run-dir", str(run_dir), "--quiet")
    assert result.returncode == 0, result.stderr
    return run_dir


def _one_line_exit_2(capsys, args, message):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_truncated_corrupt_and_foreign_checkpoints_give_one_line_errors(trained_run, tmp_path, capsys):
    good = list_checkpoints(trained_run)[-1]
    data = good.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    _one_line_exit_2(capsys, ["eval", str(truncated)], "truncated or corrupt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(4096))
    _one_line_exit_2(capsys, ["eval", str(garbage)], "truncated or corrupt")

    metadata, payload = load_checkpoint(good)
    future = tmp_path / "future.pt"
    torch.save({**payload, "format_version": 99}, future)
    _one_line_exit_2(capsys, ["eval", str(future)], "format version 99")

    unknown = tmp_path / "unknown.pt"
    metadata["agent"]["settings"]["name"] = "no_such_architecture"
    save_checkpoint(unknown, metadata, {"model": payload["model"]})
    _one_line_exit_2(capsys, ["eval", str(unknown)], "no_such_architecture")


def test_resume_errors_are_one_line(trained_run, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_exit_2(capsys, ["train", "--run-dir", str(empty), "--resume"], "has no config.yaml")
    no_checkpoints = tmp_path / "fresh"
    no_checkpoints.mkdir()
    (no_checkpoints / "config.yaml").write_text((trained_run / "config.yaml").read_text())
    _one_line_exit_2(capsys, ["train", "--run-dir", str(no_checkpoints), "--resume"], "has no checkpoints")
    _one_line_exit_2(capsys, ["eval", str(no_checkpoints)], "has no checkpoints")
    _one_line_exit_2(capsys, ["train", "--resume"], "--resume needs --run-dir")
    _one_line_exit_2(capsys, ["train", "--run-dir", str(trained_run), "--resume", "--game", "arena"],
                     "--game cannot change a resumed run")
    _one_line_exit_2(capsys, ["train", "--run-dir", str(trained_run), "--resume", "--set", "agent.clip_range=1"],
                     "may only change trainer.* keys")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.yaml").write_text((trained_run / "config.yaml").read_text())
    (broken / "checkpoints").mkdir()
    newest = list_checkpoints(trained_run)[-1]
    (broken / "checkpoints" / newest.name).write_bytes(newest.read_bytes()[:1000])
    _one_line_exit_2(capsys, ["train", "--run-dir", str(broken), "--resume"], "truncated or corrupt")


def _poison(monkeypatch, bad_calls):
    """Make the PPO loss non-finite on the given (0-based) calls."""
    calls = {"n": 0}
    original = trainer_module.ppo_loss

    def poisoned(agent, minibatch, cfg, **options):
        parts = original(agent, minibatch, cfg, **options)
        if calls["n"] in bad_calls:
            parts.loss = parts.loss * float("nan")
        calls["n"] += 1
        return parts

    monkeypatch.setattr(trainer_module, "ppo_loss", poisoned)


def test_non_finite_loss_skips_the_update_and_is_counted(small_trainer_layers, monkeypatch, tmp_path):
    trainer = Trainer(build_config(small_trainer_layers), tmp_path, show_progress=False)
    try:
        _poison(monkeypatch, bad_calls={0})
        before = {name: value.clone() for name, value in trainer.agent.state_dict().items()}
        stepped = {"n": 0}
        original_step = trainer.optimizer.step
        monkeypatch.setattr(trainer.optimizer, "step", lambda: (stepped.__setitem__("n", stepped["n"] + 1),
                                                                original_step())[1])
        with pytest.warns(RuntimeWarning, match="non-finite loss"):
            metrics = trainer.run_epoch()
        assert metrics["skipped_updates"] == 1 and stepped["n"] == 1  # 2 minibatches, the first skipped
        assert all(torch.isfinite(v).all() for v in trainer.agent.state_dict().values() if v.is_floating_point())
        assert any(not torch.equal(before[n], v) for n, v in trainer.agent.state_dict().items())
        assert trainer.save_checkpoint() is not None
    finally:
        trainer.env.close()


def test_non_finite_updates_in_a_row_stop_the_run_and_no_bad_checkpoint_is_written(
        small_trainer_layers, monkeypatch, tmp_path):
    config = build_config(small_trainer_layers + [{"trainer": {"max_skipped_updates_in_a_row": 3,
                                                               "checkpoint_interval": 1,
                                                               "total_agent_steps": 512 * 10}}])
    trainer = Trainer(config, tmp_path, show_progress=False)
    _poison(monkeypatch, bad_calls=set(range(2, 100)))  # epoch 1 is fine; every update after it is not
    with pytest.warns(RuntimeWarning), pytest.raises(TrainingError, match="3 updates in a row"):
        trainer.train()
    rows = metric_rows(tmp_path)
    assert [row["skipped_updates"] for row in rows] == [0, 2]  # the third skip, in epoch 3, stopped the run
    for path in list_checkpoints(tmp_path):
        weights = load_checkpoint(path)[1]["model"]
        assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())

    trainer = Trainer(config, tmp_path / "nan", show_progress=False)
    try:
        trainer.run_epoch()
        with torch.no_grad():
            next(trainer.agent.parameters()).fill_(float("inf"))
        with pytest.warns(RuntimeWarning, match="not writing checkpoint"):
            assert trainer.save_checkpoint() is None
        assert list_checkpoints(tmp_path / "nan") == []
    finally:
        trainer.env.close()
