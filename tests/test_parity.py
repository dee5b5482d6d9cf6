"""Both forms of every architecture are the same network (SPEC sections 5-8), checked on engine data."""

import pytest

from metta_agent.parity import ARCHITECTURES, check_architecture


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_component_and_pytorch_forms_are_the_same_network(name):
    report = check_architecture(name)
    failed = [(c.name, c.difference, c.tolerance) for c in report.checks if not c.ok]
    assert not failed, failed
    names = {c.name for c in report.checks}
    assert names >= {"initial_weights", "weight_transfer", "rollout_outputs", "training_outputs", "ppo_gradients",
                     "clip_weights", "l2_init_loss", "weight_metric_names", "first_epoch_metrics",
                     "params_after_first_update"}
    assert report.params_component == report.params_pytorch > 0
    rollout = next(c for c in report.checks if c.name == "rollout_outputs")
    assert "0 mid-rollout" not in rollout.detail, "the rollout must contain episode restarts"
