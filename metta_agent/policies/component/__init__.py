"""Component policies: a graph of named building blocks declared in YAML (see ``graph.py``)."""
