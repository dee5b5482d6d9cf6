"""Building blocks shared by both policy forms (docs/design.md, "Building blocks").

The split follows encoder -> recurrent core -> heads: ``observation`` and ``attention`` hold encoders,
``recurrent`` the LSTM core with its per-agent state, ``heads`` the critic and the actor. The component
form wraps these modules as named graph nodes; the PyTorch form calls them directly.
"""
