"""The LSTM core: a function of (input, entering state, episode starts) -> (output, final state)
(docs/design.md, "Recurrent state"). It holds no agent's state; ``agent/memory.py`` does.

A rollout step is a segment of length 1. In a training segment the state is zeroed before every step whose
observation starts an episode, including step 0 (the state entering a segment is the agent's memory as the
rollout read it, before any reset). A segment without restarts after step 0 is one ``nn.LSTM`` call; with
restarts, on CPU the fused kernel (``fused_lstm.py``) resets rows inside one call, elsewhere (CUDA) each
episode piece of a segment becomes a row of one packed ``nn.LSTM`` call.
"""

import torch
from torch import nn

from metta_agent.blocks import fused_lstm

LSTMState = tuple[torch.Tensor, torch.Tensor]  # (h, c), each [num_layers, rows, hidden]


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

    # Never traced by torch.compile: the core branches on the data (restarts inside the segments or not) and
    # runs a C++ extension or a piece layout whose shape is read back to the host, so a compiled policy is
    # two graphs, the encoder before the core and the heads after it (trainer/compiled.py).
    @torch.compiler.disable(recursive=True)
    def forward(self, x: torch.Tensor, state: LSTMState, starts: torch.Tensor) -> tuple[torch.Tensor, LSTMState]:
        """``x [B, TT, input]`` batch-major segments, ``state`` entering step 0, ``starts [B, TT]`` bool; returns
        ``[B, TT, hidden]`` and the state after step TT - 1."""
        batch, bptt = starts.shape
        keep = (~starts[:, 0]).to(x.dtype).view(1, batch, 1)
        h, c = state[0] * keep, state[1] * keep
        if bptt == 1 or not bool(starts[:, 1:].any()):
            out, h, c = self._run_lstm(x.transpose(0, 1), h, c)
            return out.transpose(0, 1), (h, c)
        if fused_lstm.usable(x):
            inside = ~starts
            inside[:, 0] = True  # step 0's reset is done above
            out, h, c = fused_lstm.fused_lstm(self.lstm, x, h, c, inside)
            return out, (h, c)
        return self._train_episode_pieces(x, h, c, starts)

    def _train_episode_pieces(self, seq: torch.Tensor, h: torch.Tensor, c: torch.Tensor,
                              starts: torch.Tensor) -> tuple[torch.Tensor, LSTMState]:
        """``nn.LSTM`` once over the episode pieces of all segments (where the fused kernel cannot run).

        Each segment is split at its restarts into pieces; every piece becomes a row of its own, left-aligned
        and padded at the end, starting from the segment's state (first piece) or from zero (a piece that
        starts an episode). The rows are packed by length, so each row's final state is the one after its
        own last step: a segment's final state is its last piece's. One call for the whole minibatch: on a
        GPU the extra rows cost almost nothing.
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
        rows = int(pieces_per_segment.sum())
        lengths = torch.bincount(row.reshape(-1), minlength=rows).cpu()  # one device sync
        length = int(lengths.max())
        flat = (offset * rows + row).reshape(-1)  # time-major position of every (segment, step)
        padded = seq.new_zeros(length * rows, seq.shape[-1]).index_copy(0, flat, seq.reshape(batch * bptt, -1))
        h_rows = h.new_zeros(self.num_layers, rows, self.hidden_size).index_copy(1, first_row, h)
        c_rows = c.new_zeros(self.num_layers, rows, self.hidden_size).index_copy(1, first_row, c)
        packed = nn.utils.rnn.pack_padded_sequence(padded.view(length, rows, -1), lengths, enforce_sorted=False)
        out, (h_n, c_n) = self.lstm(packed, (h_rows, c_rows))
        out, _ = nn.utils.rnn.pad_packed_sequence(out, total_length=length)
        last_row = first_row + pieces_per_segment - 1
        out = out.reshape(length * rows, self.hidden_size)[flat].view(batch, bptt, self.hidden_size)
        return out, (h_n[:, last_row], c_n[:, last_row])

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
