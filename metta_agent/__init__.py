"""metta-agent: train recurrent agents on MettaGrid, in two provably identical policy forms.

Python API::

    import metta_agent
    game = metta_agent.make_game("heart")                 # a MettaGridConfig
    agent = metta_agent.make_agent("pytorch/fast", game="heart", seed=0)
    agent = metta_agent.load_agent("runs/my-run")         # a run directory or a checkpoint file
    summary = metta_agent.train({"trainer": {"total_agent_steps": 200_000}}, game=my_mettagrid_config)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from mettagrid.config.mettagrid_config import MettaGridConfig

    from metta_agent.agent.metta_agent import MettaAgent


def make_game(name: str, max_steps: int | None = None) -> "MettaGridConfig":
    """A game as a mettagrid config: a built-in name (``arena``, ``heart``...), ``FILE.py:FUNCTION``,
    ``MODULE:FUNCTION`` or a ``.yaml``/``.json`` MettaGridConfig file (loading a Python file runs its code)."""
    from metta_agent.game_source import load_game

    return load_game(name, max_steps=max_steps)


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


def train(config: "dict[str, Any] | str | Path | None" = None, game: "str | MettaGridConfig | None" = None,
          run_dir: "str | Path | None" = None, show_progress: bool = True) -> dict[str, Any]:
    """Train an agent and return the run's summary (``run_dir``, the final ``eval``, ``baselines``), as
    ``metta-agent train --json`` prints it.

    ``config`` is a mapping with sections ``agent``, ``game``, ``trainer`` (unset keys keep their defaults) or
    the path of such a YAML file. ``game`` is a game source (as ``--game`` takes) or a ``MettaGridConfig``
    object; the run records the game it played, so resume and eval need neither. ``run_dir`` defaults to
    ``runs/<agent>-<game>-<time>`` and must be new or empty.
    """
    import time

    from metta_agent.cli import _check_run_dir_free, config_label, run_summary
    from metta_agent.config import build_config, load_yaml
    from metta_agent.game_source import object_entry
    from metta_agent.trainer.trainer import Trainer

    layers = [load_yaml(config)] if isinstance(config, (str, Path)) else [dict(config or {})]
    games = None
    if isinstance(game, str):
        layers.append({"game": {"name": game}})
    settings = build_config(layers)
    if game is not None and not isinstance(game, str):
        games = [object_entry(game, settings.game.max_steps)]
        settings.game.name = games[0].source
    if run_dir is None:
        label = games[0].label if games else config_label(settings.game)
        run_dir = Path("runs") / f"{settings.agent.name.replace('/', '-')}-{label}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(run_dir)
    _check_run_dir_free(run_dir)
    trainer = Trainer(settings, run_dir, show_progress=show_progress, games=games)
    state = trainer.train()
    return run_summary(run_dir, settings, state, 1, trainer.games)


__all__ = ["make_game", "make_agent", "load_agent", "train", "__version__"]
