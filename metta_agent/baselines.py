"""Each game's random and scripted figures, measured once and shipped with the package.

``metta-agent games``, the end-of-run summary and the learning-curve pictures show them without playing a
single episode. They are measured with the same code as ``metta-agent eval`` (the same evaluation maps),
by the command stored beside them::

    python -m metta_agent.baselines --episodes 16 --seed 0

which rewrites ``metta_agent/baselines.json``. A game without stored figures has none to show (measure
them with ``metta-agent eval``, which always plays the baselines).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

BASELINES_FILE = Path(__file__).with_name("baselines.json")


def stored_baselines(game: str | None = None) -> dict[str, Any]:
    """All stored figures (``{game: {...}}``), or those of ``game`` (empty when there are none).

    One game's entry: ``episodes``, ``seed``, ``command``, ``measured`` and, per baseline (``random``,
    ``scripted``), ``{"mean_hearts": ..., "mean_hearts_stderr": ..., "mean_return": ..., ...}``.
    """
    try:
        data = json.loads(BASELINES_FILE.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {}
    if game is None:
        return data
    entry = data.get(game)
    return entry if isinstance(entry, dict) else {}


def measure(game_name: str, episodes: int, seed: int) -> dict[str, Any]:
    """Play ``episodes`` episodes of each baseline on ``game_name``'s evaluation maps."""
    from metta_agent.env.info import EnvInfo
    from metta_agent.evaluate import BASELINES, baseline_actor, run_episodes, summarize
    from metta_agent.games import make_game

    game = make_game(game_name)
    agents = EnvInfo.from_game(game).agents_per_env * episodes
    entry: dict[str, Any] = {"episodes": episodes, "seed": seed}
    for name in BASELINES:
        entry[name] = summarize(run_episodes(game, episodes, seed, baseline_actor(name, game, agents, seed)))
    return entry


def main(argv: list[str] | None = None) -> int:
    from metta_agent.games import GAME_NAMES

    parser = argparse.ArgumentParser(prog="python -m metta_agent.baselines",
                                     description="Measure the random and scripted baselines and store them.")
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--games", nargs="*", default=list(GAME_NAMES), choices=list(GAME_NAMES))
    args = parser.parse_args(argv)
    data = stored_baselines()
    command = f"python -m metta_agent.baselines --episodes {args.episodes} --seed {args.seed}"
    for game in args.games:
        start = time.perf_counter()
        entry = measure(game, args.episodes, args.seed)
        entry["command"] = command + f" --games {game}"
        entry["measured"] = time.strftime("%Y-%m-%d")
        data[game] = entry
        print(f"{game}: random hearts {entry['random'].get('mean_hearts', float('nan')):.2f}, "
              f"scripted hearts {entry['scripted'].get('mean_hearts', float('nan')):.2f} "
              f"({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    BASELINES_FILE.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
