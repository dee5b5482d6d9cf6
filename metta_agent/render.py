"""ASCII rendering of a running episode, read from the C++ engine's grid objects.

mettagrid's own text renderer (miniscope) is an interactive full-screen program that draws emoji and takes
over the keyboard; evaluation needs frames it can print while the policy plays, in any terminal or log
file, so we draw plain ASCII ourselves: ``#`` walls, ``.`` empty cells, agents by id (``0``-``9`` then
``a``-``z``, ``@`` beyond), every other object type by an upper-case letter listed in the legend.
On a terminal each frame replaces the previous one (paced to ``fps``); otherwise frames are printed one
after another.
"""

from __future__ import annotations

import string
import sys
import time
from typing import Any, TextIO

import numpy as np

from metta_agent.env.vecenv import VecEnv

WALL, EMPTY, AGENT_OVERFLOW = "#", ".", "@"
AGENT_SYMBOLS = string.digits + string.ascii_lowercase
CLEAR_SCREEN = "\x1b[H\x1b[2J"


def agent_symbol(agent_id: int) -> str:
    return AGENT_SYMBOLS[agent_id] if 0 <= agent_id < len(AGENT_SYMBOLS) else AGENT_OVERFLOW


def object_symbols(type_names: list[str]) -> dict[str, str]:
    """One distinct upper-case letter per object type (its initial when free), ``#`` for walls."""
    symbols = {"wall": WALL}
    used = {WALL}
    for name in type_names:
        if not name or name in symbols or name == "agent":
            continue
        candidates = [c.upper() for c in name if c.isalpha()] + list(string.ascii_uppercase)
        symbol = next((c for c in candidates if c not in used), "?")
        symbols[name] = symbol
        used.add(symbol)
    return symbols


def render_grid(grid_objects: dict[int, dict], height: int, width: int, symbols: dict[str, str]) -> list[str]:
    """The map as ``height`` strings of ``width`` characters; an agent is drawn over anything it shares a
    cell with."""
    rows = [[EMPTY] * width for _ in range(height)]
    for obj in grid_objects.values():
        if "agent_id" not in obj:
            rows[obj["r"]][obj["c"]] = symbols.get(obj["type_name"], "?")
    for obj in grid_objects.values():
        if "agent_id" in obj:
            rows[obj["r"]][obj["c"]] = agent_symbol(int(obj["agent_id"]))
    return ["".join(row) for row in rows]


class AsciiRenderer:
    """Prints one env's map after every ``every``-th step of its first episode (an evaluation observer)."""

    def __init__(self, stream: TextIO | None = None, env_index: int = 0, every: int = 1, fps: float = 10.0):
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        self.stream = stream if stream is not None else sys.stdout
        self.env_index = env_index
        self.every = every
        self.frame_seconds = 1.0 / fps if fps > 0 else 0.0
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self.frames = 0
        self._engine: Any = None
        self._rows = slice(0, 0)
        self._episode_return: np.ndarray | None = None
        self._max_steps = 0
        self._last_frame_time = 0.0

    def start(self, env: VecEnv) -> None:
        self._engine = env.engine(self.env_index)
        agents = env.agents_per_env
        self._rows = slice(self.env_index * agents, (self.env_index + 1) * agents)
        self._episode_return = np.zeros(agents)
        self._max_steps = env.max_steps
        self._symbols = object_symbols(list(self._engine.object_type_names))
        last_agent = agent_symbol(agents - 1)
        legend = [f"{symbol} {name}" for name, symbol in self._symbols.items()]
        self._legend = "  ".join([f"0-{last_agent} agents" if agents > 1 else "0 agent", *legend, f"{EMPTY} empty"])
        self._draw()

    def after_step(self, actions: np.ndarray, rewards: np.ndarray, ended: np.ndarray) -> None:
        if self._engine is None:
            return
        self._episode_return += rewards[self._rows]
        step = int(self._engine.current_step)
        if ended[self.env_index] or step % self.every == 0:
            self._draw()
        if ended[self.env_index]:
            self._engine = None  # the env has moved on to its next episode: follow only the first

    def _draw(self) -> None:
        engine = self._engine
        lines = render_grid(engine.grid_objects(-1, -1, -1, -1, []), engine.map_height, engine.map_width,
                            self._symbols)
        header = (f"step {engine.current_step}/{self._max_steps}  env {self.env_index}  "
                  f"mean return {float(self._episode_return.mean()):.2f}")
        frame = "\n".join([header, *lines, self._legend])
        if self.interactive:
            wait = self._last_frame_time + self.frame_seconds - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self.stream.write(CLEAR_SCREEN + frame + "\n")
            self._last_frame_time = time.monotonic()
        else:
            self.stream.write(frame + "\n\n")
        self.stream.flush()
        self.frames += 1
