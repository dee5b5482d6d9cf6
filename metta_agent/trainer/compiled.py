"""``torch.compile`` for the policy (``trainer.compile=true``): the encoder and heads compile, the LSTM core
stays eager.

The recurrent core branches on the data (whether a minibatch holds in-segment restarts) and runs a C++
extension (the fused LSTM) or a piece layout whose shape is read back to the host; traced, it would break
the graph anyway or recompile on every batch. Its ``forward`` is declared never compiled
(``blocks/recurrent.py``), so the policy's forward becomes two compiled graphs, the observation encoder
before the core and the heads after it. The policy is compiled in place (``nn.Module.compile``), so
state-dict keys, checkpoints and the DDP wrapper see the same module as without compiling.
"""

from __future__ import annotations


def compile_policy(agent, backend: str = "inductor", mode: str = "default") -> None:
    """Compile ``agent.policy`` in place with ``torch.compile(backend=..., mode=...)``; its core stays eager."""
    options = {"backend": backend}
    if backend == "inductor" and mode != "default":
        options["mode"] = mode
    agent.policy.compile(**options)
