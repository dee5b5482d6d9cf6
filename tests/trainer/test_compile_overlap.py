"""trainer.compile (the policy compiled, the LSTM core eager) and trainer.overlap (double-buffered rollout)."""

from __future__ import annotations

import copy

import pytest
import torch

from metta_agent import contract as keys
from metta_agent.config import build_config
from metta_agent.errors import UsageError
from metta_agent.trainer.compiled import compile_policy
from metta_agent.trainer.trainer import Trainer

TRAIN_INPUTS = (keys.ENV_OBS, keys.STARTS, keys.ACTIONS, keys.LSTM_H, keys.LSTM_C)


def tiny_config(**trainer):
    values = {"num_envs": 4, "batch_size": 512, "minibatch_size": 256, "bptt_horizon": 16, "update_epochs": 1}
    values.update(trainer)
    return build_config([{"game": {"name": "heart", "max_steps": 40}, "trainer": values}])


@pytest.mark.parametrize("agent_name", ["pytorch/fast", "latent_attn_tiny"])
def test_compiled_policy_matches_eager(agent_name):
    """aot_eager (cheap to compile) runs the same graphs dynamo captures for inductor: outputs, memory and
    gradients match eager within 1e-5."""
    config = tiny_config()
    config.agent.name = agent_name
    trainer = Trainer(config, run_dir=None, show_progress=False)
    try:
        trainer.rollout()  # real observations, restarts and segment-start states in the buffer
        data = trainer.experience.data
        eager = trainer.agent
        eager.reset_memory()
        compiled = copy.deepcopy(eager)
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        graphs = []

        def recording_aot_eager(graph_module, example_inputs):
            graphs.append(graph_module)
            return torch._dynamo.lookup_backend("aot_eager")(graph_module, example_inputs)

        compile_policy(compiled, backend=recording_aot_eager)

        with torch.inference_mode():  # rollout: 3 steps, memory carried inside each agent
            for t in range(3):
                outputs = []
                for agent in (eager, compiled):
                    torch.manual_seed(t)
                    td = data[:, t].select(keys.ENV_OBS, keys.STARTS).clone()
                    outputs.append(agent(td))
                for key in (keys.ACT_LOG_PROB, keys.VALUES, keys.LSTM_H, keys.FULL_LOG_PROBS):
                    torch.testing.assert_close(outputs[1][key], outputs[0][key], atol=1e-5, rtol=1e-5)
                assert torch.equal(outputs[1][keys.ACTIONS], outputs[0][keys.ACTIONS])

        # Dynamo did capture graphs (the encoder before the core, the heads after it), not just fall back.
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 2
        # ...and none of them holds any of the core: only the core reads the episode starts (traced, its
        # zeroing of the entering state shows up as a graph taking them).
        assert graphs and not any("lstm" in graph.code.lower() or "starts" in graph.code for graph in graphs)

        segments = trainer.experience.segments()[:8].select(*TRAIN_INPUTS)
        grads = []
        scored = []
        for agent in (eager, compiled):
            out = agent(segments.clone())
            (out[keys.ACT_LOG_PROB].sum() + out[keys.VALUES].pow(2).mean() - out[keys.ENTROPY].mean()).backward()
            scored.append(out)
            grads.append({name: p.grad.clone() for name, p in agent.named_parameters() if p.grad is not None})
        for key in (keys.ACT_LOG_PROB, keys.VALUES, keys.ENTROPY):
            torch.testing.assert_close(scored[1][key], scored[0][key], atol=1e-5, rtol=1e-5)
        assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
        for name in grads[0]:
            torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4, msg=name)
        # Compiling in place keeps the state-dict keys: checkpoints are the same either way.
        assert compiled.state_dict().keys() == eager.state_dict().keys()
    finally:
        trainer.env.close()


def test_trainer_with_compile_keeps_ratio_one():
    trainer = Trainer(tiny_config(compile=True, compile_backend="aot_eager"), run_dir=None, show_progress=False)
    try:
        metrics = trainer.run_epoch()
        assert metrics["ratio_dev_before_update"] <= 1e-4
    finally:
        trainer.env.close()


def test_overlapped_rollout_keeps_per_agent_memory_right():
    """Two halves of the envs stepped by their own workers while the policy acts for the other half. The
    policy sees half batches, so its per-agent memory (keyed by training_env_ids) must still follow each
    agent: then re-scoring the buffer before the update reproduces the rollout (ratio 1), restarts included."""
    trainer = Trainer(tiny_config(env_workers=2, overlap=True), run_dir=None, show_progress=False)
    try:
        assert trainer.row_groups == [slice(0, 8), slice(8, 16)]
        calls = []
        original = trainer.env.step_async
        trainer.env.step_async = lambda actions, rows: (calls.append(rows), original(actions, rows))[1]
        history = [trainer.run_epoch() for _ in range(3)]
        assert calls[:4] == [slice(0, 8), slice(8, 16)] * 2
        restarts = trainer.experience.segments()[keys.STARTS][:, 1:].any(dim=1).float().mean()
        assert restarts > 0.3
        assert all(m["ratio_dev_before_update"] <= 1e-4 for m in history), history
        assert sum(m["episodes"] for m in history) > 0
    finally:
        trainer.env.close()


def test_overlap_and_compile_settings_are_checked():
    with pytest.raises(UsageError, match="env_workers >= 2"):
        Trainer(tiny_config(overlap=True), run_dir=None, show_progress=False)
    with pytest.raises(UsageError, match="compile_mode"):
        tiny_config(compile_mode="fastest").validate(4)
