import math
import os

import numpy as np
import pytest
import torch

from metta_agent import contract as keys
from metta_agent.bench import restarts_ignored
from metta_agent.config import build_config
from metta_agent.trainer.experience import Experience
from metta_agent.trainer.ppo import lr_lambda
from metta_agent.trainer.trainer import Trainer


def naive_gae(rewards, values, next_starts, bootstrap, gamma, lam):
    """Per agent, straight from the definition (delta_t, then the discounted sum within an episode)."""
    n, steps = rewards.shape
    advantages = np.zeros((n, steps))
    for i in range(n):
        for t in range(steps):
            total, discount = 0.0, 1.0
            for k in range(t, steps):
                next_value = bootstrap[i] if k + 1 == steps else values[i, k + 1]
                alive = 0.0 if next_starts[i, k] else 1.0
                delta = rewards[i, k] + gamma * next_value * alive - values[i, k]
                total += discount * delta
                if not alive:
                    break
                discount *= gamma * lam
            advantages[i, t] = total
    return advantages


def test_gae_matches_the_definition_including_the_last_step():
    generator = torch.Generator().manual_seed(1)
    experience = Experience(3, 8, 4, (2, 3), (1, 2), torch.device("cpu"))
    rewards = torch.rand(3, 8, generator=generator)
    values = torch.rand(3, 8, generator=generator)
    next_starts = torch.rand(3, 8, generator=generator) < 0.2
    bootstrap = torch.rand(3, generator=generator)
    experience.data[keys.REWARDS].copy_(rewards)
    experience.data[keys.VALUES].copy_(values)
    experience.next_starts.copy_(next_starts)
    experience.compute_advantages(bootstrap, 0.9, 0.8)
    expected = naive_gae(rewards.numpy(), values.numpy(), next_starts.numpy(), bootstrap.numpy(), 0.9, 0.8)
    assert np.allclose(experience.data[keys.ADVANTAGES].numpy(), expected, atol=1e-5)
    assert experience.data[keys.ADVANTAGES][:, -1].abs().sum() > 0, "the last step has a real advantage"
    assert torch.allclose(experience.data[keys.RETURNS], experience.data[keys.ADVANTAGES] + values)


def test_minibatches_cover_every_segment_exactly_once():
    experience = Experience(4, 8, 2, (2, 3), (1, 2), torch.device("cpu"))
    experience.data[keys.REWARDS].copy_(torch.arange(32, dtype=torch.float32).view(4, 8))
    seen = torch.cat([mb[keys.REWARDS][:, 0] for mb in experience.minibatches(3, torch.Generator())])
    assert sorted(seen.tolist()) == list(range(0, 32, 2))
    # segment s = agent * (T / TT) + t // TT
    assert experience.segments()[keys.REWARDS][5].tolist() == [10.0, 11.0]


def test_the_buffer_keeps_the_state_entering_each_segment_and_shows_it_along_the_segment():
    from tensordict import TensorDict

    agents, steps, bptt, state_shape = 3, 8, 4, (2, 5)
    experience = Experience(agents, steps, bptt, (2, 3), state_shape, torch.device("cpu"))
    assert experience.segment_state[keys.LSTM_H].shape == (agents, steps // bptt, *state_shape)
    states = torch.randn(steps, agents, *state_shape)  # what the rollout read at each step
    for t in range(steps):
        experience.store(t, TensorDict({
            keys.ENV_OBS: torch.zeros(agents, 2, 3, dtype=torch.uint8), keys.STARTS: torch.zeros(agents, dtype=torch.bool),
            keys.ACTIONS: torch.zeros(agents, dtype=torch.long), keys.ACT_LOG_PROB: torch.zeros(agents),
            keys.VALUES: torch.zeros(agents), keys.LSTM_H: states[t], keys.LSTM_C: -states[t]}, batch_size=[agents]))
    segments = experience.segments()
    assert segments[keys.LSTM_H].shape == (agents * steps // bptt, bptt, *state_shape)
    for segment in range(agents * steps // bptt):
        agent, first = divmod(segment, steps // bptt)
        for t in range(bptt):
            assert torch.equal(segments[keys.LSTM_H][segment, t], states[first * bptt, agent])
            assert torch.equal(segments[keys.LSTM_C][segment, t], -states[first * bptt, agent])
    picked = torch.tensor([4, 1])
    assert torch.equal(experience.segments(picked)[keys.LSTM_H], segments[keys.LSTM_H][picked])
    twin = Experience(agents, steps, bptt, (2, 3), state_shape, torch.device("cpu"))
    twin.copy_from(experience)
    assert torch.equal(twin.segments()[keys.LSTM_C], segments[keys.LSTM_C])


def test_learning_rate_schedule_is_applied():
    config = build_config([{"trainer": {"lr_schedule": "cosine", "lr_final_ratio": 0.1}}]).trainer
    multiplier = lr_lambda(config, total_epochs=11)
    assert multiplier(0) == 1.0 and math.isclose(multiplier(10), 0.1) and 0.1 < multiplier(5) < 1.0


@pytest.mark.parametrize("agent", ["pytorch/fast", "fast"])
def test_training_keeps_ratio_one_with_in_segment_restarts(small_trainer_layers, agent):
    layers = small_trainer_layers + [{"game": {"max_steps": 40}, "trainer": {"total_agent_steps": 512 * 3},
                                      "agent": {"name": agent}}]
    trainer = Trainer(build_config(layers), run_dir=None, show_progress=False)
    try:
        history = [trainer.run_epoch() for _ in range(3)]
        restarts = trainer.experience.segments()[keys.STARTS][:, 1:].any(dim=1).float().mean()
        assert restarts > 0.3, "most segments should hold a restart"
        assert all(m["ratio_dev_before_update"] <= 1e-4 for m in history), history
        with restarts_ignored(trainer):
            broken = trainer.run_epoch()
        assert broken["ratio_dev_before_update"] > 1e-3
    finally:
        trainer.env.close()


def test_clip_weights_runs_after_every_optimizer_step(small_trainer_layers, monkeypatch):
    trainer = Trainer(build_config(small_trainer_layers + [{"agent": {"clip_range": 0.2}}]), None, False)
    calls = {"step": 0, "clip": 0}
    original_step, original_clip = trainer.optimizer.step, trainer.agent.clip_weights

    def step(*args, **kwargs):
        assert calls["clip"] == calls["step"], "the previous step was not followed by clip_weights()"
        calls["step"] += 1
        return original_step(*args, **kwargs)

    def clip():
        calls["clip"] += 1
        original_clip()

    monkeypatch.setattr(trainer.optimizer, "step", step)
    monkeypatch.setattr(trainer.agent, "clip_weights", clip)
    try:
        trainer.run_epoch()
    finally:
        trainer.env.close()
    assert calls["step"] == 2 and calls["clip"] == 2


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads Linux /proc")
def test_resident_memory_stays_flat_over_a_long_run(small_trainer_layers):
    """220 epochs with episodes of 40 steps (thousands of restarts): no growth with time or resets."""
    layers = small_trainer_layers + [{"game": {"max_steps": 40}, "agent": {"analyze_weights_interval": 50}}]
    trainer = Trainer(build_config(layers), run_dir=None, show_progress=False)
    try:
        resident = []
        for epoch in range(220):
            metrics = trainer.run_epoch()
            trainer.state.history.append(metrics)  # as the trainer's own loop keeps them
            resident.append(_resident_bytes())
    finally:
        trainer.env.close()
    warm = resident[19]  # after 20 epochs: allocator pools and lazily built state are in place
    growth = max(resident[20:]) / warm - 1
    print(f"resident memory: {warm / 2**20:.1f} MiB after 20 epochs, {resident[-1] / 2**20:.1f} MiB after 220, "
          f"largest growth {growth:.2%}")
    assert growth < 0.05, f"resident memory grew {growth:.1%} after warm-up ({warm / 2**20:.0f} MiB)"
