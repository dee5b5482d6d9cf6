"""The LSTM over segments with restarts: the fused CPU kernel and the episode-piece path (CUDA, no compiler)
against nn.LSTM stepped with resets: same outputs, same gradients, same final state."""

import pytest
import torch

from metta_agent.blocks import fused_lstm
from metta_agent.blocks.recurrent import RecurrentCore

needs_kernel = pytest.mark.skipif(fused_lstm.load() is None, reason=f"fused kernel unavailable: {fused_lstm.failure()}")


def reference(lstm: torch.nn.LSTM, x, h0, c0, keep):
    """nn.LSTM step by step (batch-major in and out), the state multiplied by keep[:, t] before step t."""
    h, c, outputs = h0, c0, []
    for t in range(x.shape[1]):
        k = keep[:, t].to(x.dtype).view(1, -1, 1)
        out, (h, c) = lstm(x[:, t].unsqueeze(0), (h * k, c * k))
        outputs.append(out[0])
    return torch.stack(outputs, dim=1), h, c


def random_case(batch, steps, input_size, hidden, layers, dtype, seed=0):
    torch.manual_seed(seed)
    lstm = torch.nn.LSTM(input_size, hidden, num_layers=layers).to(dtype)
    x = torch.randn(batch, steps, input_size, dtype=dtype, requires_grad=True)
    h0 = torch.randn(layers, batch, hidden, dtype=dtype, requires_grad=True)
    c0 = torch.randn(layers, batch, hidden, dtype=dtype, requires_grad=True)
    keep = torch.rand(batch, steps) > 0.15  # restarts at arbitrary steps, t = 0 included
    return lstm, x, h0, c0, keep


@needs_kernel
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-11), (torch.float32, 2e-5)])
@pytest.mark.parametrize("shape", [(16, 64, 128, 128, 2), (5, 9, 7, 13, 1), (3, 1, 4, 20, 3)])
def test_outputs_and_gradients_match_nn_lstm_with_resets(dtype, tol, shape):
    lstm, x, h0, c0, keep = random_case(*shape, dtype=dtype)
    inputs = [x, h0, c0, *lstm.parameters()]
    y, h_n, c_n = fused_lstm.fused_lstm(lstm, x, h0, c0, keep)
    y_ref, h_ref, c_ref = reference(lstm, x, h0, c0, keep)
    for got, want in ((y, y_ref), (h_n, h_ref), (c_n, c_ref)):
        assert (got - want).abs().max().item() <= tol
    weights = [torch.randn_like(t) for t in (y, h_n, c_n)]  # every output gets a gradient
    loss = sum((w * t).sum() for w, t in zip(weights, (y, h_n, c_n)))
    loss_ref = sum((w * t).sum() for w, t in zip(weights, (y_ref, h_ref, c_ref)))
    grads = torch.autograd.grad(loss, inputs)
    grads_ref = torch.autograd.grad(loss_ref, inputs)
    for name, got, want in zip(["x", "h0", "c0", *(n for n, _ in lstm.named_parameters())], grads, grads_ref):
        scale = want.abs().max().clamp_min(1.0)
        assert (got - want).abs().max().item() <= tol * scale, name


@needs_kernel
def test_gradcheck_float64():
    lstm, x, h0, c0, keep = random_case(3, 5, 4, 6, 2, torch.float64, seed=1)

    def run(x, h0, c0, *weights):
        for param, value in zip(lstm._flat_weights, weights):
            param.data = value.detach()
        return fused_lstm._FusedLSTM.apply(x, h0, c0, keep.double(), *weights)

    assert torch.autograd.gradcheck(run, (x, h0, c0, *[w.detach().requires_grad_() for w in lstm._flat_weights]))


@needs_kernel
def test_keep_all_ones_is_one_plain_lstm_call_and_no_grad_path_agrees():
    lstm, x, h0, c0, _ = random_case(4, 12, 8, 16, 2, torch.float32)
    keep = torch.ones(4, 12, dtype=torch.bool)
    y, h_n, c_n = fused_lstm.fused_lstm(lstm, x, h0, c0, keep)
    plain, (h_ref, c_ref) = lstm(x.transpose(0, 1), (h0, c0))
    assert torch.allclose(y, plain.transpose(0, 1), atol=2e-6)
    assert torch.allclose(h_n, h_ref, atol=2e-6) and torch.allclose(c_n, c_ref, atol=2e-6)
    with torch.no_grad():
        y_no_grad, _, _ = fused_lstm.fused_lstm(lstm, x, h0, c0, keep)
    assert torch.equal(y_no_grad, y.detach())


@needs_kernel
def test_reset_row_ignores_its_past():
    """A row reset at step t gives from t on exactly what a fresh zero-state sequence gives."""
    lstm, x, h0, c0, _ = random_case(2, 10, 8, 16, 2, torch.float64)
    keep = torch.ones(2, 10, dtype=torch.bool)
    keep[1, 6] = False
    with torch.no_grad():
        y, _, _ = fused_lstm.fused_lstm(lstm, x, h0, c0, keep)
        fresh, _ = lstm(x[1:, 6:].transpose(0, 1))
    assert torch.allclose(y[1, 6:], fresh[:, 0], atol=1e-12, rtol=0)
    assert not torch.allclose(y[0, 6:], fresh[:, 0])


@needs_kernel
def test_rejects_unsupported_lstms_and_bad_shapes():
    with pytest.raises(ValueError, match="unidirectional"):
        fused_lstm.fused_lstm(torch.nn.LSTM(4, 4, bidirectional=True), torch.zeros(1, 2, 4), torch.zeros(2, 1, 4),
                              torch.zeros(2, 1, 4), torch.ones(1, 2))
    lstm = torch.nn.LSTM(4, 4)
    with pytest.raises(RuntimeError, match="sizes disagree"):
        fused_lstm.fused_lstm(lstm, torch.zeros(2, 3, 4), torch.zeros(1, 2, 4), torch.zeros(1, 2, 4),
                              torch.ones(2, 5))


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-11), (torch.float32, 2e-5)])
def test_episode_pieces_match_nn_lstm_with_resets(dtype, tol):
    """The path CUDA takes: one nn.LSTM call over every segment's episode pieces, padded at their ends."""
    core = RecurrentCore(input_size=12, hidden_size=16, num_layers=2).to(dtype)
    _, x, h0, c0, keep = random_case(6, 20, 12, 16, 2, dtype, seed=2)
    keep[:, 0] = True  # the stored state is the state after the first step's reset
    keep[0] = True  # a segment with no restart: a single piece
    keep[1, 1:] = False  # one with a restart at every step: pieces of length 1
    y, (h_n, c_n) = core._train_episode_pieces(x, h0, c0, ~keep)
    y_ref, h_ref, c_ref = reference(core.lstm, x, h0, c0, keep)
    assert (y.view_as(y_ref) - y_ref).abs().max().item() <= tol
    assert (h_n - h_ref).abs().max().item() <= tol and (c_n - c_ref).abs().max().item() <= tol, "final states"
    inputs = [x, h0, c0, *core.parameters()]
    grads = torch.autograd.grad(y.square().sum(), inputs)
    grads_ref = torch.autograd.grad(y_ref.square().sum(), inputs)
    for got, want in zip(grads, grads_ref):
        assert (got - want).abs().max().item() <= tol * want.abs().max().clamp_min(1.0)


@pytest.mark.parametrize("path", ["fused", "pieces"])
def test_the_core_is_a_function_of_input_state_and_starts(path, monkeypatch):
    """``core(x, state, starts) -> (out, final state)``, starts at step 0 included; stepping it one step at a
    time (what the rollout does) gives the same outputs and final state."""
    if path == "fused" and fused_lstm.load() is None:
        pytest.skip("the fused kernel is unavailable here")
    if path == "pieces":
        monkeypatch.setattr(fused_lstm, "usable", lambda x: False)
    core = RecurrentCore(input_size=12, hidden_size=16, num_layers=2).to(torch.float64)
    _, x, h0, c0, keep = random_case(6, 20, 12, 16, 2, torch.float64, seed=3)
    out, (h_n, c_n) = core(x, (h0, c0), ~keep)
    y_ref, h_ref, c_ref = reference(core.lstm, x, h0, c0, keep)
    for got, want in ((out, y_ref), (h_n, h_ref), (c_n, c_ref)):
        assert (got - want).abs().max().item() <= 1e-11
    state, steps = (h0, c0), []
    for t in range(x.shape[1]):
        step, state = core(x[:, t:t + 1], state, ~keep[:, t:t + 1])
        steps.append(step)
    assert (torch.cat(steps, 1) - out).abs().max().item() <= 1e-11
    assert all((got - want).abs().max().item() <= 1e-11 for got, want in zip(state, (h_n, c_n)))
