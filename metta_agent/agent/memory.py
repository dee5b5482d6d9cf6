"""``AgentMemory``: each agent's recurrent state between rollout steps, the one place it lives
(docs/design.md, "Recurrent state").

``MettaAgent`` reads an agent's state before the policy runs and writes the policy's final state back after
it, unless the memory is frozen (the bootstrap value after a rollout must not advance anyone's memory). The
state is kept by agent row, grown to the largest row seen. It is a plain object, not a module: DDP does not
broadcast it and checkpoints do not hold it (a resumed run's environments start new episodes anyway).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from metta_agent.blocks.recurrent import LSTMState


class AgentMemory:
    def __init__(self, num_layers: int, hidden_size: int):
        self.num_layers, self.hidden_size = num_layers, hidden_size
        self._h: torch.Tensor | None = None
        self._c: torch.Tensor | None = None
        self._frozen = False

    def reset(self) -> None:
        """Forget every agent's state (a new set of episodes)."""
        self._h = self._c = None

    @contextmanager
    def frozen(self):
        """Run steps that read the memory but do not store their new state."""
        self._frozen = True
        try:
            yield
        finally:
            self._frozen = False

    def read(self, rows: torch.Tensor, like: torch.Tensor) -> LSTMState:
        """The state of agent ``rows`` (zeros for rows never written), ``[num_layers, len(rows), hidden]``, in
        ``like``'s dtype and device."""
        self._grow(int(rows.max()) + 1 if rows.numel() else 0, like)
        return self._h[:, rows], self._c[:, rows]

    def write(self, rows: torch.Tensor, state: LSTMState) -> None:
        if self._frozen:
            return
        self._h[:, rows] = state[0].detach()
        self._c[:, rows] = state[1].detach()

    def _grow(self, needed: int, like: torch.Tensor) -> None:
        if self._h is not None and self._h.shape[1] >= needed and self._h.device == like.device:
            return
        shape = (self.num_layers, max(needed, 1), self.hidden_size)
        grown_h = torch.zeros(shape, dtype=like.dtype, device=like.device)
        grown_c = torch.zeros_like(grown_h)
        if self._h is not None and self._h.device == like.device:
            kept = self._h.shape[1]
            grown_h[:, :kept] = self._h
            grown_c[:, :kept] = self._c
        self._h, self._c = grown_h, grown_c
