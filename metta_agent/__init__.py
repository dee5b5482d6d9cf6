"""metta-agent: train recurrent agents on MettaGrid, in two provably identical policy forms.

Python API::

    import metta_agent
    game = metta_agent.make_game("heart")                 # a MettaGridConfig
    agent = metta_agent.make_agent("pytorch/fast", game="heart", seed=0)
    agent = metta_agent.load_agent("runs/my-run")         # a run directory or a checkpoint file
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from mettagrid.config.mettagrid_config import MettaGridConfig

    from metta_agent.agent.metta_agent import MettaAgent


def make_game(name: str, max_steps: int | None = None) -> "MettaGridConfig":
    """A shipped game (``arena`` or ``heart``) as a mettagrid config."""
    from metta_agent.games import make_game as _make_game

    return _make_game(name, max_steps=max_steps)


def make_agent(name: str = "pytorch/fast", game: "str | MettaGridConfig" = "arena", seed: int = 0,
               **params: Any) -> "MettaAgent":
    """Build architecture ``name`` initialised to ``game``'s features and actions.

    ``params`` are agent settings (``clip_range``, ``analyze_weights_interval``, ``l2_init_scale``) and the
    architecture's own keyword arguments; an unknown one is an error that lists the accepted ones.
    """
    import torch

    from metta_agent.agent.registry import build_agent
    from metta_agent.config import build_config
    from metta_agent.env.info import EnvInfo

    game_config = make_game(game) if isinstance(game, str) else game
    settings = build_config([{"agent": {"name": name, **params}}]).agent
    torch.manual_seed(seed)
    return build_agent(settings, EnvInfo.from_game(game_config))


def load_agent(path: str, game: "str | MettaGridConfig | None" = None, as_agent: str | None = None) -> "MettaAgent":
    """Load the agent of a run directory (its newest checkpoint) or of a checkpoint file.

    With ``game``, the agent is re-initialised to that game: features are matched by name and action
    embeddings by action name. With ``as_agent``, a checkpoint of one form loads as the other form of the
    same architecture (``as_agent="pytorch/fast"`` for a ``fast`` checkpoint, and back).
    """
    from metta_agent.agent.loading import load_agent as _load_agent

    return _load_agent(path, game, as_agent)


__all__ = ["make_game", "make_agent", "load_agent", "__version__"]
