"""The LSTM core and the per-agent recurrent state (docs/design.md, "Recurrent state").

Where the state is reset:
- rollout (``bptt == 1``): each agent's state is kept in ``memory`` at row ``training_env_ids``; it is
  zeroed where this observation starts a new episode, written to ``lstm_h``/``lstm_c`` (the state the step
  started from, for the experience buffer), and stored back detached after the step;
- training (``bptt == TT``): each segment starts from its stored ``lstm_h``/``lstm_c`` at ``t = 0`` and the
  state is zeroed at every in-segment episode start. A minibatch without such restarts is one ``nn.LSTM``
  call; with restarts, on CPU the fused kernel (``fused_lstm.py``) resets rows inside one call, elsewhere
  (CUDA) each episode piece of a segment becomes a row of one ``nn.LSTM`` call.
"""

from contextlib import contextmanager

import torch
from tensordict import TensorDict
from torch import nn

from metta_agent import contract as keys
from metta_agent.blocks import fused_lstm


class RecurrentCore(nn.Module):
    """``nn.LSTM(input -> hidden, num_layers)``; all weights orth(1); biases 0 but the forget gate's, 1.

    The reference set every bias to 1 (each gate at +2). The cell candidate then sits at tanh(2) = 0.96 for
    any input, the cell state climbs to ~7 and tanh(c) is flat, so almost no gradient flows through the
    memory at first (docs/learning.md). A forget-gate bias of 1 keeps memory by default without that.
    """

    def __init__(self, input_size: int = 128, hidden_size: int = 128, num_layers: int = 2):
        super().__init__()
        self.hidden_size, self.num_layers = hidden_size, num_layers
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers=num_layers)
        for name, param in self.lstm.named_parameters():
            if name.startswith("weight"):
                nn.init.orthogonal_(param, 1.0)
            else:
                nn.init.zeros_(param)
                if name.startswith("bias_ih"):
                    # nn.LSTM's gate order is input, forget, cell, output.
                    nn.init.ones_(param[hidden_size:2 * hidden_size])
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
        seq = x.view(batch, bptt, -1)  # batch-major segments
        # The stored state at t = 0 was taken after that step's reset, so only t >= 1 resets it here.
        if not self.reset_inside_segments or not bool(starts[:, 1:].any()):
            # One plain call: no segment restarts inside (or, only to measure it, restarts are ignored).
            out, _, _ = self._run_lstm(seq.transpose(0, 1), h, c)
            return out.transpose(0, 1).reshape(batch * bptt, self.hidden_size)
        if fused_lstm.usable(x):
            keep = ~starts
            keep[:, 0] = True
            out, _, _ = fused_lstm.fused_lstm(self.lstm, seq, h, c, keep)
            return out.reshape(batch * bptt, self.hidden_size)
        return self._train_episode_pieces(seq, h, c, starts)

    def _train_episode_pieces(self, seq: torch.Tensor, h: torch.Tensor, c: torch.Tensor,
                              starts: torch.Tensor) -> torch.Tensor:
        """``nn.LSTM`` once over the episode pieces of all segments (where the fused kernel cannot run).

        Each segment is split at its restarts into pieces; every piece becomes a row of its own, left-aligned
        and padded at the end, starting from the segment's stored state (first piece) or from zero (a piece
        that starts an episode). Padding only follows a piece's last step, so it never reaches an output that
        is kept. One call for the whole minibatch: on a GPU the extra rows cost almost nothing.
        """
        batch, bptt = starts.shape
        piece_starts = starts.clone()
        piece_starts[:, 0] = True
        piece_of_step = piece_starts.long().cumsum(1) - 1  # [B, TT]: which piece of its segment
        pieces_per_segment = piece_of_step[:, -1] + 1
        first_row = pieces_per_segment.cumsum(0) - pieces_per_segment  # row of each segment's first piece
        row = first_row.unsqueeze(1) + piece_of_step
        step = torch.arange(bptt, device=starts.device).expand(batch, bptt)
        offset = step - torch.where(piece_starts, step, torch.zeros_like(step)).cummax(dim=1).values
        rows, longest = torch.stack([pieces_per_segment.sum(), offset.max()]).tolist()  # one device sync
        length = longest + 1
        flat = (offset * rows + row).reshape(-1)  # time-major position of every (segment, step)
        padded = seq.new_zeros(length * rows, seq.shape[-1]).index_copy(0, flat, seq.reshape(batch * bptt, -1))
        h_rows = h.new_zeros(self.num_layers, rows, self.hidden_size).index_copy(1, first_row, h)
        c_rows = c.new_zeros(self.num_layers, rows, self.hidden_size).index_copy(1, first_row, c)
        out, _, _ = self._run_lstm(padded.view(length, rows, -1), h_rows, c_rows)
        return out.reshape(length * rows, self.hidden_size)[flat]

    def _run_lstm(self, seq: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        """``nn.LSTM`` on a time-major sequence, through the op its ``forward`` calls.

        Rollout calls it once per step, where the Python-side checks of ``nn.LSTM.forward`` (~0.2 ms) show.
        The op and arguments are those ``nn.LSTM.forward`` passes for this LSTM (biases, no dropout,
        unidirectional, time-major), so the results are identical (the parity and ratio tests check them).
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
