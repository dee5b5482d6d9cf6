"""Progress display: a rich progress bar on a terminal, a plain line every few seconds otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

PLAIN_INTERVAL_SECONDS = 10.0


class _Remaining(TimeRemainingColumn):
    """rich's time remaining, which needs a speed: until the first epoch has ended it says so instead of
    showing ``-:--:--``."""

    def render(self, task):
        if task.speed is None and not task.finished:
            from rich.text import Text

            return Text("after the first epoch", style="progress.remaining")
        return super().render(task)


class Progress:
    def __init__(self, total_steps: int, enabled: bool = True):
        self.total_steps = total_steps
        self.enabled = enabled
        self.console = Console(stderr=True)
        self.interactive = enabled and self.console.is_terminal
        self._bar: RichProgress | None = None
        self._task = None
        self._last_plain = 0.0

    def __enter__(self) -> "Progress":
        if self.interactive:
            self._bar = RichProgress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                _Remaining(),
                console=self.console,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task("train", total=self.total_steps, stats="")
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def update(self, steps: int, metrics: dict[str, Any] | None) -> None:
        if not self.enabled:
            return
        stats = describe(metrics) if metrics else ""
        if self._bar is not None:
            self._bar.update(self._task, completed=min(steps, self.total_steps), stats=stats)
            return
        now = time.monotonic()
        if metrics and (now - self._last_plain >= PLAIN_INTERVAL_SECONDS or steps >= self.total_steps):
            self._last_plain = now
            print(f"[{steps:,}/{self.total_steps:,} steps] {stats}", file=sys.stderr, flush=True)

    def note(self, message: str) -> None:
        if self.enabled:
            self.console.print(message)


def describe(metrics: dict[str, Any]) -> str:
    episode_return = metrics.get("episode_return")
    returned = "-" if episode_return is None else f"{episode_return:.2f}"
    text = f"epoch {metrics['epoch']} | {metrics['sps']:,.0f} SPS | return {returned}"
    if metrics.get("hearts") is not None:
        text += f" | hearts {metrics['hearts']:.2f}"
    return text
