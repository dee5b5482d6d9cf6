"""The learning curve image of a run: mean episode return (and hearts) against agent steps."""

from __future__ import annotations

import json
from pathlib import Path


def read_metrics(path: Path) -> list[dict]:
    rows = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line:
            rows.append(json.loads(line))
    return rows


def plot_learning_curve(metrics_path: Path, image_path: Path, title: str | None = None) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in read_metrics(metrics_path) if row.get("episode_return") is not None]
    if not rows:
        return None
    steps = [row["agent_steps"] for row in rows]
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot(steps, [row["episode_return"] for row in rows], label="episode return per agent")
    if any(row.get("hearts") is not None for row in rows):
        axis.plot(steps, [row.get("hearts") for row in rows], label="hearts per agent per episode")
    axis.set_xlabel("agent steps")
    axis.set_title(title or Path(metrics_path).parent.name)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(image_path, dpi=100)
    plt.close(figure)
    return Path(image_path)
