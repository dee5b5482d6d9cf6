"""Kickstarting from teacher checkpoints (trainer/kickstart.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from tensordict import TensorDict

from metta_agent import contract as keys
from metta_agent.cli import main
from metta_agent.config import build_config
from metta_agent.trainer.trainer import Trainer

TIMING = {"sps", "rollout_seconds", "update_seconds", "eval_seconds"}


def heart(agent: str = "pytorch/fast", epochs: int = 2, kickstart=None, seed: int = 3) -> dict:
    trainer = {"num_envs": 4, "batch_size": 512, "minibatch_size": 256, "bptt_horizon": 16, "update_epochs": 1,
               "total_agent_steps": 512 * epochs, "eval_interval": 0, "seed": seed}
    if kickstart is not None:
        trainer["kickstart"] = kickstart
    return {"agent": {"name": agent}, "game": {"name": "heart", "max_steps": 40}, "trainer": trainer}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A (briefly trained) component-form fast teacher."""
    run = tmp_path_factory.mktemp("kickstart") / "teacher"
    Trainer(build_config([heart("fast", seed=7)]), run, show_progress=False).train()
    return run


def kick(path, action=1.0, value=0.5, anneal=1536):
    return {"teachers": [{"path": str(path), "action_loss_coef": action, "value_loss_coef": value}],
            "anneal_steps": anneal}


def numbers(history):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in history]


def test_a_teacher_with_zero_coefficients_changes_nothing(teacher):
    plain = Trainer(build_config([heart()]), None, show_progress=False).train().history
    zero = Trainer(build_config([heart(kickstart=kick(teacher, 0.0, 0.0))]), None, show_progress=False).train().history
    assert numbers(plain) == numbers(zero)


def test_teachers_score_the_students_stream_with_their_own_exact_memory(teacher):
    trainer = Trainer(build_config([heart("pytorch/latent_attn_tiny", kickstart=kick(teacher))]), None,
                      show_progress=False)
    try:
        trainer.agent.train()
        trainer.rollout()
        data = trainer.experience.data
        model = trainer.kickstarter.teachers[0].agent
        # The first rollout starts every agent's episode, so replaying the whole stream from zero memory must give
        # the log-probabilities and values the teacher stored step by step.
        zeros = torch.zeros(*data.batch_size, *trainer.agent.lstm_shape)
        replay = TensorDict({keys.ENV_OBS: data[keys.ENV_OBS], keys.STARTS: data[keys.STARTS],
                             keys.ACTIONS: data[keys.ACTIONS], keys.LSTM_H: zeros, keys.LSTM_C: zeros},
                            batch_size=data.batch_size)
        assert bool(data[keys.STARTS][:, 0].all())
        with torch.no_grad():
            scored = model(replay)
        torch.testing.assert_close(scored[keys.FULL_LOG_PROBS], data["kickstart_0_log_probs"], rtol=0, atol=2e-5)
        torch.testing.assert_close(scored[keys.VALUES], data["kickstart_0_values"], rtol=0, atol=2e-5)
        assert not any(p.requires_grad for p in model.parameters())
    finally:
        trainer.close()


def test_coefficients_anneal_over_the_run_and_a_resume_continues_them(teacher, tmp_path):
    run = tmp_path / "student"
    config = heart("pytorch/latent_attn_tiny", epochs=2, kickstart=kick(teacher, anneal=1536))
    Trainer(build_config([config]), run, show_progress=False).train()
    config["trainer"]["total_agent_steps"] = 512 * 4
    from metta_agent.trainer import resume

    resumed = resume.resume_config(run, [], ["trainer.total_agent_steps=2048"], None, None)
    Trainer(resumed, run, show_progress=False, resume_from=run).train()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    factors = [row.get("kickstart/factor") for row in rows]
    # Epoch k trains from agent step 512 * k: the factor is 1 - 512 k / 1536; from step 1536 no teacher runs.
    assert factors[:3] == pytest.approx([1.0, 2 / 3, 1 / 3])
    assert factors[3] is None
    assert rows[1]["kickstart/0/action_coef"] == pytest.approx(2 / 3)
    assert rows[1]["kickstart/0/value_coef"] == pytest.approx(1 / 3)
    assert rows[0]["kickstart/0/action_loss"] > 0


@pytest.mark.parametrize("setting,message", [
    ("{teachers: [{path: /no/such/run, action_loss_coef: 1}], anneal_steps: 10}", "kickstart teacher 0:"),
    ("{teachers: [], anneal_steps: 10}", "must list at least one teacher"),
    ("{teachers: [{path: x, action_loss_coef: -1}], anneal_steps: 10}", "action_loss_coef must be a finite number"),
    ("{teachers: [{path: x}], anneal_steps: 0}", "anneal_steps must be a positive whole number"),
    ("{teachers: [{path: x, colour: 1}], anneal_steps: 5}", "must be {path, action_loss_coef, value_loss_coef}"),
])
def test_bad_kickstart_settings_are_one_line_errors(setting, message, tmp_path, capsys):
    code = main(["train", "--game", "heart", "--steps", "10", "--run-dir", str(tmp_path / "run"),
                 "--set", f"trainer.kickstart={setting}"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_a_teacher_must_know_the_games_actions(tmp_path, capsys):
    (tmp_path / "narrow.py").write_text(
        "import metta_agent\n\n\ndef narrow():\n    game = metta_agent.make_game('heart', max_steps=40)\n"
        "    game.game.actions.move.allowed_directions = ['north', 'south']\n    return game\n")
    config = heart(epochs=1)
    config["game"] = {"name": f"{tmp_path}/narrow.py:narrow"}
    Trainer(build_config([config]), tmp_path / "narrow-teacher", show_progress=False).train()
    code = main(["train", "--game", "heart", "--steps", "10", "--run-dir", str(tmp_path / "run"), "--set",
                 f"trainer.kickstart={{teachers: [{{path: {tmp_path}/narrow-teacher, action_loss_coef: 1}}], "
                 "anneal_steps: 10}"])
    err = capsys.readouterr().err
    assert code == 2 and "kickstart teacher 0" in err and "move_west" in err, err


def test_two_ranks_train_with_a_teacher(teacher, tmp_path):
    """Each rank runs its own copy of the teacher on its own envs; the kickstart terms enter the averaged
    gradient, so the replicas stay identical, and rank 0 logs the teachers' figures."""
    run_dir = tmp_path / "run"
    setting = (f"trainer.kickstart={{teachers: [{{path: {teacher}, action_loss_coef: 1.0, value_loss_coef: 0.5}}], "
               "anneal_steps: 3072}")
    done = subprocess.run(
        [sys.executable, "-m", "metta_agent.cli", "train", "--nproc-per-node", "2", "--game", "heart",
         "--set", "trainer.num_envs=4", "--set", "trainer.batch_size=1024", "--set", "trainer.minibatch_size=512",
         "--set", "trainer.bptt_horizon=16", "--set", setting, "--steps", "4096", "--run-dir", str(run_dir),
         "--quiet", "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["agent_steps"] for row in rows] == [2048, 4096]
    assert [row["replica_divergence"] for row in rows] == [0.0, 0.0]
    # The anneal counts both ranks' steps: epoch 2 trains from agent step 2048 of 3072.
    assert [row["kickstart/factor"] for row in rows] == pytest.approx([1.0, 1 / 3])
    assert all(row["kickstart/0/action_loss"] > 0 and row["kickstart/0/value_loss"] > 0 for row in rows)
