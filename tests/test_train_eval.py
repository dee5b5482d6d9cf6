"""Evaluation during training: it lands in the metrics rows and never disturbs training."""

from __future__ import annotations

import json

import pytest

from metta_agent.config import build_config
from metta_agent.trainer.trainer import Trainer

TIMING = {"sps", "rollout_seconds", "update_seconds", "eval_seconds"}


def small_heart(eval_interval: int, epochs: int = 4, **trainer) -> dict:
    return {
        "agent": {"name": "pytorch/fast"},
        "game": {"name": "heart", "max_steps": 40},
        "trainer": {"num_envs": 4, "batch_size": 256, "minibatch_size": 64, "bptt_horizon": 16,
                    "update_epochs": 2, "total_agent_steps": 256 * epochs, "eval_interval": eval_interval,
                    "eval_episodes": 2, "seed": 3, **trainer},
    }


def history(config: dict, run_dir=None) -> list[dict]:
    return Trainer(build_config([config]), run_dir, show_progress=False).train().history


def test_eval_does_not_change_training():
    with_eval = history(small_heart(eval_interval=1))
    without = history(small_heart(eval_interval=0))
    assert len(with_eval) == len(without) == 4
    for on, off in zip(with_eval, without):
        assert "eval/hearts" in on and not any(key.startswith("eval/") for key in off)
        trained_on = {k: v for k, v in on.items() if not k.startswith("eval/") and k not in TIMING}
        trained_off = {k: v for k, v in off.items() if k not in TIMING}
        assert trained_on == trained_off
        assert on["ratio_dev_before_update"] <= 1e-4


def test_eval_rows_follow_the_schedule_and_the_last_epoch(tmp_path):
    rows = history(small_heart(eval_interval=2, epochs=5), tmp_path / "run")
    evaluated = [row["epoch"] for row in rows if "eval/return" in row]
    assert evaluated == [2, 4, 5]
    written = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for row in written:
        assert {"epoch", "agent_steps", "sps"} <= set(row)
    last = written[-1]
    assert last["eval/hearts"] >= 0 and last["eval/hearts_stderr"] >= 0 and last["eval/length"] == 40


def test_eval_interval_must_not_be_negative():
    from metta_agent.errors import UsageError

    with pytest.raises(UsageError, match="eval_interval"):
        Trainer(build_config([small_heart(eval_interval=-1)]), None, show_progress=False)
