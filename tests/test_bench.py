"""Tests for metta_agent.bench: a tiny benchmark run returns every figure, positive, finite and consistent."""

from __future__ import annotations

import math

import pytest

from metta_agent.bench import run_benchmark
from metta_agent.config import build_config

RATES = ("env_sps", "inference_sps", "train_step_sps", "train_sps", "serial_bound", "bound_ratio")


@pytest.fixture(scope="module")
def tiny_result():
    # heart has 4 agents: 4 envs x 4 agents x bptt 16 = 256 divides batch 1024 (64 steps) and minibatch 256.
    config = build_config(
        [
            {
                "game": {"name": "heart"},
                "trainer": {"num_envs": 4, "batch_size": 1024, "minibatch_size": 256, "bptt_horizon": 16},
            }
        ]
    )
    messages: list[str] = []
    result = run_benchmark(config, epochs=1, repeats=1, progress=messages.append)
    return result, messages


def test_all_rates_positive_and_finite(tiny_result):
    result, _ = tiny_result
    for key in (*RATES, "rollout_sps", "update_sps"):
        assert key in result, key
        value = result[key]
        assert isinstance(value, float), (key, value)
        assert math.isfinite(value) and value > 0, (key, value)


def test_bound_follows_formulas(tiny_result):
    result, _ = tiny_result
    expected_bound = 1.0 / (1.0 / result["env_sps"] + 1.0 / result["inference_sps"] + 1.0 / result["train_step_sps"])
    assert result["serial_bound"] == pytest.approx(expected_bound, rel=1e-12)
    assert result["bound_ratio"] == pytest.approx(result["train_sps"] / expected_bound, rel=1e-12)
    assert result["train_sps_no_restarts"] > 0 and 0 <= result["restart_segment_fraction"] <= 1
    # One repeat: the median of one paired ratio is that ratio.
    assert result["restart_overhead"] == pytest.approx(1 - result["train_sps"] / result["train_sps_no_restarts"])
    # The bound can never exceed the slowest piece.
    assert result["serial_bound"] < min(result["env_sps"], result["inference_sps"], result["train_step_sps"])


def test_config_figures(tiny_result):
    result, messages = tiny_result
    assert result["game"] == "heart"
    assert result["agent"] == "pytorch/fast"
    assert result["num_envs"] == 4
    assert result["batch_size"] == 1024
    assert result["num_agents"] == 16
    assert result["rollout_steps"] == 64
    assert result["epochs"] == 1 and result["repeats"] == 1
    # The buffer holds at least each agent step's observation (200 tokens x 3 bytes); 2,677 bytes today, with
    # the recurrent state stored at every step.
    per_step = result["experience_mb"] * 2**20 / result["batch_size"]
    assert 600 < per_step < 4000, per_step
    assert result["peak_rss_mb"] > result["experience_mb"]
    assert any("warm-up" in message for message in messages)
    assert any("repeat 1/1" in message for message in messages)


def test_rejects_bad_counts():
    config = build_config([{"game": {"name": "heart"}}])
    with pytest.raises(ValueError):
        run_benchmark(config, epochs=0)
    with pytest.raises(ValueError):
        run_benchmark(config, repeats=0)


def test_component_architecture_is_measured_beside_its_pytorch_twin():
    from metta_agent.bench import run_benchmark
    from metta_agent.config import build_config

    config = build_config([{"agent": {"name": "fast"}, "game": {"name": "heart"},
                            "trainer": {"num_envs": 4, "batch_size": 1024, "minibatch_size": 256,
                                        "bptt_horizon": 16}}])
    result = run_benchmark(config, epochs=1, repeats=1)
    assert result["pytorch_agent"] == "pytorch/fast"
    for key in ("pytorch_inference_sps", "pytorch_train_step_sps"):
        assert result[key] > 0
    assert abs(result["pytorch_inference_ratio"] - result["pytorch_inference_sps"] / result["inference_sps"]) < 1e-9


def test_compile_and_two_ranks_are_measured_in_the_same_run():
    """compile_speedup from a second trainer with trainer.compile flipped (aot_eager: cheap to compile here),
    and train_sps_2ranks from a 2-rank `metta-agent train` subprocess, beside serial_bound and train_sps."""
    config = build_config([{"game": {"name": "heart"},
                            "trainer": {"num_envs": 4, "batch_size": 1024, "minibatch_size": 512, "bptt_horizon": 16,
                                        "compile_backend": "aot_eager"}}])
    messages: list[str] = []
    result = run_benchmark(config, epochs=1, repeats=1, progress=messages.append, compare_compile=True, ranks=2)
    for key in ("train_sps", "serial_bound", "train_sps_compiled", "train_sps_2ranks", "compile_warmup_seconds"):
        assert math.isfinite(result[key]) and result[key] > 0, (key, result[key])
    assert result["compile_speedup"] == pytest.approx(result["train_sps_compiled"] / result["train_sps"])
    assert result["compile_backend"] == "aot_eager"
    assert any("2 ranks" in message for message in messages)
    # Read from the ranks' own /proc entries while they ran: a process holding torch is well over 100 MB.
    assert result["peak_rss_mb_2ranks"] > 100
