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


class EpisodeFollower:
    """Follows one env's first episode of an evaluation (an observer) and draws it every ``every``-th step and
    at its end; subclasses say how a frame is drawn."""

    def __init__(self, env_index: int = 0, every: int = 1):
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        self.env_index = env_index
        self.every = every
        self.frames = 0
        self._engine: Any = None
        self._rows = slice(0, 0)
        self._episode_return: np.ndarray | None = None
        self._max_steps = 0

    def start(self, env: VecEnv) -> None:
        self._engine = env.engine(self.env_index)
        agents = env.agents_per_env
        self.agents = agents
        self._rows = slice(self.env_index * agents, (self.env_index + 1) * agents)
        self._episode_return = np.zeros(agents)
        self._max_steps = env.max_steps
        self._symbols = object_symbols(list(self._engine.object_type_names))
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
            self.finish()

    def header(self) -> str:
        return (f"step {self._engine.current_step}/{self._max_steps}  env {self.env_index}  "
                f"mean return {float(self._episode_return.mean()):.2f}")

    def grid_objects(self) -> dict[int, dict]:
        return self._engine.grid_objects(-1, -1, -1, -1, [])

    def _draw(self) -> None:
        self.draw()
        self.frames += 1

    def draw(self) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """Called once the followed episode has ended."""


class AsciiRenderer(EpisodeFollower):
    """Prints one env's map after every ``every``-th step of its first episode (an evaluation observer)."""

    def __init__(self, stream: TextIO | None = None, env_index: int = 0, every: int = 1, fps: float = 10.0):
        super().__init__(env_index, every)
        self.stream = stream if stream is not None else sys.stdout
        self.frame_seconds = 1.0 / fps if fps > 0 else 0.0
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_frame_time = 0.0

    def start(self, env: VecEnv) -> None:
        symbols = object_symbols(list(env.engine(self.env_index).object_type_names))
        last_agent = agent_symbol(env.agents_per_env - 1)
        legend = [f"{symbol} {name}" for name, symbol in symbols.items()]
        self._legend = "  ".join([f"0-{last_agent} agents" if env.agents_per_env > 1 else "0 agent", *legend,
                                  f"{EMPTY} empty"])
        super().start(env)

    def draw(self) -> None:
        engine = self._engine
        lines = render_grid(self.grid_objects(), engine.map_height, engine.map_width, self._symbols)
        frame = "\n".join([self.header(), *lines, self._legend])
        if self.interactive:
            wait = self._last_frame_time + self.frame_seconds - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self.stream.write(CLEAR_SCREEN + frame + "\n")
            self._last_frame_time = time.monotonic()
        else:
            self.stream.write(frame + "\n\n")
        self.stream.flush()


# ---- pictures -------------------------------------------------------------------------------------------------

_WALL_RGB, _EMPTY_RGB, _INK = (64, 64, 64), (238, 236, 228), (20, 20, 20)
# Distinct colours (matplotlib's tab10 and tab20 orders) for agents by id and for object types.
_AGENT_RGB = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
              (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
_OBJECT_RGB = [(174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
               (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229)]
STRIP_FRAMES = 8  # frames in a PNG strip, spread over the episode


class EpisodeImage(EpisodeFollower):
    """Draws one env's first episode into an animated GIF (``.gif``) or a strip of frames (``.png``), each
    frame with a header (step, mean return) and a legend of colours."""

    def __init__(self, path, env_index: int = 0, every: int = 1, cell: int = 10, fps: float = 10.0):
        super().__init__(env_index, every)
        from pathlib import Path

        self.path = Path(path)
        if self.path.suffix.lower() not in (".gif", ".png"):
            raise ValueError(f"an episode picture is a .gif or a .png strip, got '{self.path.name}'")
        self.cell = int(cell)
        self.frame_ms = int(1000 / fps) if fps > 0 else 100
        self.images: list[Any] = []

    def start(self, env: VecEnv) -> None:
        names = [name for name in env.engine(self.env_index).object_type_names
                 if name and name not in ("agent", "wall")]
        self._colours = {name: _OBJECT_RGB[k % len(_OBJECT_RGB)] for k, name in enumerate(dict.fromkeys(names))}
        super().start(env)

    def draw(self) -> None:
        from PIL import Image, ImageDraw

        engine, cell = self._engine, self.cell
        height, width = int(engine.map_height), int(engine.map_width)
        header, line = 16, 14
        legend = [("agents (colour by id)", _AGENT_RGB[0]), ("wall", _WALL_RGB), *self._colours.items()]
        image = Image.new("RGB", (max(width * cell, 240), header + height * cell + line * len(legend) + 4), "white")
        pen = ImageDraw.Draw(image)
        pen.text((2, 2), self.header(), fill=_INK)
        pen.rectangle([0, header, width * cell - 1, header + height * cell - 1], fill=_EMPTY_RGB)
        agents = []
        for obj in self.grid_objects().values():
            x, y = obj["c"] * cell, header + obj["r"] * cell
            if "agent_id" in obj:
                agents.append((x, y, int(obj["agent_id"])))
                continue
            colour = _WALL_RGB if obj["type_name"] == "wall" else self._colours.get(obj["type_name"], (0, 0, 0))
            pen.rectangle([x, y, x + cell - 1, y + cell - 1], fill=colour)
        for x, y, agent_id in agents:  # over whatever shares their cell
            pen.ellipse([x + 1, y + 1, x + cell - 2, y + cell - 2], fill=_AGENT_RGB[agent_id % len(_AGENT_RGB)],
                        outline=_INK)
        top = header + height * cell + 2
        for k, (name, colour) in enumerate(legend):
            pen.rectangle([2, top + k * line + 2, 11, top + k * line + 11], fill=colour, outline=_INK)
            pen.text((16, top + k * line), name, fill=_INK)
        self.images.append(image)

    def finish(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.suffix.lower() == ".gif":
            first, *rest = self.images
            first.save(self.path, save_all=True, append_images=rest, duration=self.frame_ms, loop=0)
            return
        from PIL import Image

        picks = np.unique(np.linspace(0, len(self.images) - 1, min(STRIP_FRAMES, len(self.images))).round().astype(int))
        frames = [self.images[i] for i in picks]
        strip = Image.new("RGB", (sum(f.width for f in frames) + 4 * (len(frames) - 1), max(f.height for f in frames)),
                          "white")
        x = 0
        for frame in frames:
            strip.paste(frame, (x, 0))
            x += frame.width + 4
        strip.save(self.path)
