"""The CUDA path: skipped on machines without a GPU (CI has none); run by hand on one."""

import json
import subprocess
import sys

import pytest
import torch

from metta_agent.bench import restarts_ignored
from metta_agent.blocks import fused_lstm
from metta_agent.blocks.recurrent import RecurrentCore
from metta_agent.config import build_config
from metta_agent.trainer.trainer import Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def segments(batch=12, bptt=16, seed=0):
    """Training segments ``[B, TT, 128]`` with restarts at random steps, from a random entering state."""
    generator = torch.Generator().manual_seed(seed)
    starts = torch.rand(batch, bptt, generator=generator) < 0.1
    state = (torch.randn(2, batch, 128, generator=generator), torch.randn(2, batch, 128, generator=generator))
    return torch.randn(batch, bptt, 128, generator=generator), state, starts


def test_cuda_lstm_cut_at_restarts_matches_the_cpu_core():
    torch.manual_seed(0)
    core = RecurrentCore()
    x, state, starts = segments()
    x.requires_grad_(True)
    out_cpu, final_cpu = core(x, state, starts)
    grads_cpu = torch.autograd.grad(out_cpu.square().sum(), [x, *core.parameters()])

    core_cuda = RecurrentCore().cuda()
    core_cuda.load_state_dict(core.state_dict())
    x_cuda = x.detach().cuda().requires_grad_(True)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # full float32 products, as on the CPU
        out_cuda, final_cuda = core_cuda(x_cuda, tuple(s.cuda() for s in state), starts.cuda())
        grads_cuda = torch.autograd.grad(out_cuda.square().sum(), [x_cuda, *core_cuda.parameters()])
    assert (out_cuda.cpu() - out_cpu).abs().max() < 1e-4
    for cpu, cuda in zip(final_cpu, final_cuda):
        assert (cuda.cpu() - cpu).abs().max() < 1e-4
    for cpu, cuda in zip(grads_cpu, grads_cuda):
        assert (cuda.cpu() - cpu).abs().max() <= 1e-4 * cpu.abs().max().clamp_min(1.0)
    assert not fused_lstm.usable(x_cuda), "CUDA runs nn.LSTM over episode pieces, not the CPU kernel"


def test_cuda_training_keeps_ratio_one_with_in_segment_restarts(small_trainer_layers):
    layers = small_trainer_layers + [{"game": {"max_steps": 40},
                                      "trainer": {"total_agent_steps": 512 * 3, "device": "cuda"}}]
    trainer = Trainer(build_config(layers), run_dir=None, show_progress=False)
    try:
        assert next(trainer.agent.parameters()).device.type == "cuda"
        history = [trainer.run_epoch() for _ in range(3)]
        assert all(m["ratio_dev_before_update"] <= 1e-4 for m in history), history
        with restarts_ignored(trainer):
            assert trainer.run_epoch()["ratio_dev_before_update"] > 1e-3
    finally:
        trainer.env.close()


def test_cuda_train_then_evaluate_from_the_command_line(tmp_path):
    run_dir = tmp_path / "run"
    train = subprocess.run([sys.executable, "-m", "metta_agent.cli", "train", "--game", "arena", "--device", "cuda",
                            "--steps", "30000", "--run-dir", str(run_dir)], capture_output=True, text=True,
                           timeout=600)
    assert train.returncode == 0, train.stderr[-2000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(row["ratio_dev_before_update"] <= 1e-4 for row in rows)
    assert any((run_dir / "checkpoints").iterdir())
    evaluate = subprocess.run([sys.executable, "-m", "metta_agent.cli", "eval", str(run_dir), "--episodes", "2",
                               "--json"], capture_output=True, text=True, timeout=600)
    assert evaluate.returncode == 0, evaluate.stderr[-2000:]  # a checkpoint trained on CUDA, evaluated on CPU
