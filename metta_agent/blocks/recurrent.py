"""The LSTM core and the per-agent recurrent state (SPEC section 7).

Where the state is reset:
- rollout (``bptt == 1``): each agent's state is kept in ``memory`` at row ``training_env_ids``; it is
  zeroed where this observation starts a new episode, written to ``lstm_h``/``lstm_c`` (the state the step
  started from, for the experience buffer), and stored back detached after the step;
- training (``bptt == TT``): each segment starts from its stored ``lstm_h``/``lstm_c`` at ``t = 0`` and the
  state is zeroed at every in-segment episode start. On CPU the fused kernel (``fused_lstm.py``) does that
  inside one call; elsewhere the sequence is run in ``nn.LSTM`` chunks split at the steps where some row
  restarts.
"""

from contextlib import contextmanager

import torch
from tensordict import TensorDict
from torch import nn

from metta_agent import contract as keys
from metta_agent.blocks import fused_lstm


class RecurrentCore(nn.Module):
    """``nn.LSTM(input -> hidden, num_layers)``; all weights orth(1), all biases 1 (every gate starts at +2)."""

    def __init__(self, input_size: int = 128, hidden_size: int = 128, num_layers: int = 2):
        super().__init__()
        self.hidden_size, self.num_layers = hidden_size, num_layers
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers=num_layers)
        for name, param in self.lstm.named_parameters():
            if name.startswith("weight"):
                nn.init.orthogonal_(param, 1.0)
            else:
                nn.init.constant_(param, 1.0)
        # Per-agent rollout state [num_layers, agents, hidden]; not a parameter, not checkpointed.
        self._memory_h: torch.Tensor | None = None
        self._memory_c: torch.Tensor | None = None
        self._commit_memory = True
        # Off only to measure what ignoring in-segment restarts would cost (and that it breaks the ratio).
        self.reset_inside_segments = True

    def reset_memory(self) -> None:
        self._memory_h = self._memory_c = None

    @contextmanager
    def memory_frozen(self):
        """Run rollout steps without storing the new state (e.g. the bootstrap value after a rollout)."""
        self._commit_memory = False
        try:
            yield
        finally:
            self._commit_memory = True

    def forward(self, x: torch.Tensor, td: TensorDict) -> torch.Tensor:
        """``x``: ``[B*TT, input]`` features; returns ``[B*TT, hidden]``."""
        bptt = int(td[keys.BPTT][0])
        starts = _episode_starts(td)
        if bptt == 1:
            return self._rollout_step(x, td, starts)
        return self._train_segments(x, td, starts, bptt)

    def _agent_memory(self, agent_ids: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        needed = int(agent_ids.max()) + 1 if agent_ids.numel() else 0
        if self._memory_h is None or self._memory_h.shape[1] < needed or self._memory_h.device != like.device:
            shape = (self.num_layers, max(needed, 1), self.hidden_size)
            grown_h = torch.zeros(shape, dtype=like.dtype, device=like.device)
            grown_c = torch.zeros_like(grown_h)
            if self._memory_h is not None and self._memory_h.device == like.device:
                kept = self._memory_h.shape[1]
                grown_h[:, :kept] = self._memory_h
                grown_c[:, :kept] = self._memory_c
            self._memory_h, self._memory_c = grown_h, grown_c
        return self._memory_h, self._memory_c

    def _rollout_step(self, x: torch.Tensor, td: TensorDict, starts: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if keys.TRAINING_ENV_IDS in td.keys():
            agent_ids = td[keys.TRAINING_ENV_IDS].long()
        else:
            agent_ids = torch.arange(n, device=x.device)
        memory_h, memory_c = self._agent_memory(agent_ids, x)
        keep = (~starts).to(x.dtype).view(1, n, 1)
        h = memory_h[:, agent_ids] * keep
        c = memory_c[:, agent_ids] * keep
        td[keys.LSTM_H] = h.transpose(0, 1)
        td[keys.LSTM_C] = c.transpose(0, 1)
        out, h, c = self._run_lstm(x.unsqueeze(0), h, c)
        if self._commit_memory:
            memory_h[:, agent_ids] = h.detach()
            memory_c[:, agent_ids] = c.detach()
        return out.squeeze(0)

    def _train_segments(self, x: torch.Tensor, td: TensorDict, starts: torch.Tensor, bptt: int) -> torch.Tensor:
        batch = x.shape[0] // bptt
        h = td[keys.LSTM_H].view(batch, bptt, self.num_layers, self.hidden_size)[:, 0].transpose(0, 1).contiguous()
        c = td[keys.LSTM_C].view(batch, bptt, self.num_layers, self.hidden_size)[:, 0].transpose(0, 1).contiguous()
        starts = starts.view(batch, bptt)
        if self.reset_inside_segments and fused_lstm.usable(x):
            # The stored state at t = 0 was taken after that step's reset, so only t >= 1 resets it here.
            keep = ~starts
            keep[:, 0] = True
            out, _, _ = fused_lstm.fused_lstm(self.lstm, x.view(batch, bptt, -1), h, c, keep)
            return out.reshape(batch * bptt, self.hidden_size)
        return self._train_segments_in_chunks(x.view(batch, bptt, -1).transpose(0, 1), h, c, starts)

    def _train_segments_in_chunks(self, seq: torch.Tensor, h: torch.Tensor, c: torch.Tensor,
                                  starts: torch.Tensor) -> torch.Tensor:
        """``nn.LSTM`` cut at every step where some row restarts (where the fused kernel cannot run), or one
        call when in-segment restarts are ignored (only to measure what that would cost, or break)."""
        bptt, batch = seq.shape[0], seq.shape[1]
        if self.reset_inside_segments:
            restart_steps = starts[:, 1:].any(dim=0).nonzero().flatten().add(1).tolist()
        else:
            restart_steps = []
        bounds = [0, *restart_steps, bptt]
        outputs = []
        for begin, end in zip(bounds[:-1], bounds[1:]):
            if begin > 0:
                keep = (~starts[:, begin]).to(seq.dtype).view(1, batch, 1)
                h, c = h * keep, c * keep
            out, h, c = self._run_lstm(seq[begin:end], h, c)
            outputs.append(out)
        out = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=0)
        return out.transpose(0, 1).reshape(batch * bptt, self.hidden_size)

    def _run_lstm(self, seq: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        """``nn.LSTM`` on a time-major sequence, through the op its ``forward`` calls.

        Segments are cut at every in-segment restart, so a minibatch may run the LSTM several times; the
        Python-side checks of ``nn.LSTM.forward`` then become a visible part of the restart overhead. The op
        and arguments are those ``nn.LSTM.forward`` passes for this LSTM (biases, no dropout, unidirectional,
        time-major), so the results are identical (the parity and ratio tests check them).
        """
        lstm = self.lstm
        if seq.dim() != 3 or seq.shape[-1] != lstm.input_size:  # the check nn.LSTM.forward would have made
            raise RuntimeError(f"the LSTM takes [time, batch, {lstm.input_size}] inputs, got {tuple(seq.shape)}")
        return torch._VF.lstm(seq, (h, c), lstm._flat_weights, lstm.bias, lstm.num_layers, 0.0, self.training,
                              False, False)


def _episode_starts(td: TensorDict) -> torch.Tensor:
    """Rows whose observation is the first of a new episode (``dones`` or ``truncateds`` set), flat bool."""
    starts = td[keys.DONES].reshape(-1) != 0
    if keys.TRUNCATEDS in td.keys():
        starts = starts | (td[keys.TRUNCATEDS].reshape(-1) != 0)
    return starts
