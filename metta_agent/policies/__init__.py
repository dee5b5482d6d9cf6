"""The two policy forms: ``pytorch`` (hand-written modules) and ``component`` (graphs declared in YAML).

Every policy maps a flat TensorDict batch ``[B*TT]`` to ``(logits [B*TT, A], values [B*TT])`` and names its
clipped layers; ``MettaAgent`` does everything else (sampling, state bookkeeping, weight management).
"""
