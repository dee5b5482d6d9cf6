"""Pictures of training runs: one run's learning curve (``curve.png``) and several runs compared
(``metta-agent plot``).

The eval points (``eval/<stat>`` rows of ``metrics.jsonl``: the policy played on fresh maps, full-length
episodes, with standard errors) are the honest measure of a run, so they are the dominant series. The
training figures per epoch are drawn faintly: early epochs only see short episodes (each env's first episode
is cut at a random step so that the envs do not reset together), so return per episode rises there just
because episodes get longer. Those epochs are shaded. The stored random and scripted baselines of the game
(:func:`metta_agent.baselines.stored_baselines`) are horizontal reference lines.

Runs whose ``config.yaml`` differ only in ``trainer.seed`` form a group, drawn as the mean over seeds with a
min-max band over the eval steps they share.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from metta_agent.errors import UsageError

FIGURE_SIZE = (8.0, 5.0)
FIGURE_DPI = 100
BASELINE_STYLES = {"random": ("0.4", "--"), "scripted": ("tab:green", "-.")}
# Legend entries that mark references rather than measurements: listed after the measured series.
REFERENCE_LABELS = ("training episodes cut short", "random policy", "scripted policy")
# Baselines measured with episodes of another length than the run's are not comparable; this much is noise.
LENGTH_TOLERANCE = 0.01


# ---- reading runs ---------------------------------------------------------------------------------------


def read_metrics(path: Path) -> list[dict]:
    """The rows of a ``metrics.jsonl``; a last line cut off by a killed run is skipped."""
    lines = [line.strip() for line in Path(path).read_text().splitlines()]
    lines = [line for line in lines if line]
    rows = []
    for index, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except ValueError:
            if index < len(lines) - 1:
                raise
    return rows


def read_config(run_dir: Path) -> dict[str, Any]:
    """The run's ``config.yaml`` as a dict (empty when there is none)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return {}
    loaded = yaml.safe_load(path.read_text())
    return loaded if isinstance(loaded, dict) else {}


def _number(value: Any) -> float | None:
    """``value`` as a finite float, else None (metrics hold null, and NaN where nothing was measured)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


@dataclass
class Run:
    """One run directory: its name, config and metrics rows."""

    path: Path
    config: dict[str, Any]
    rows: list[dict]

    @property
    def name(self) -> str:
        return self.path.resolve().name

    @property
    def game(self) -> str | None:
        return config_game(self.config)

    @property
    def seed(self) -> int | None:
        return (self.config.get("trainer") or {}).get("seed")

    def config_without_seed(self) -> dict[str, str]:
        """The config flattened to ``section.key -> value``, without ``trainer.seed``: what makes runs one group."""
        flat = _flatten(self.config)
        flat.pop("trainer.seed", None)
        return flat

    def eval_series(self, stat: str) -> Series:
        return _eval_series(self.rows, stat)

    def final_training_return(self) -> float | None:
        values = [_number(row.get("episode_return")) for row in self.rows]
        values = [value for value in values if value is not None]
        return values[-1] if values else None


def load_run(path: Path) -> Run:
    path = Path(path)
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise UsageError(f"'{path}' is not a run directory: it has no metrics.jsonl")
    return Run(path=path, config=read_config(path), rows=read_metrics(metrics))


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = json.dumps(value, sort_keys=True)
    return flat


# ---- series ---------------------------------------------------------------------------------------------


@dataclass
class Series:
    """Points against agent steps; ``stderr`` is empty when the points have none."""

    steps: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    stderr: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.steps)


@dataclass
class Baseline:
    """A stored baseline policy's figure: ``name`` is ``random`` or ``scripted``."""

    name: str
    value: float
    stderr: float


def _eval_series(rows: list[dict], stat: str) -> Series:
    series = Series()
    for row in rows:
        value = _number(row.get(f"eval/{stat}"))
        if value is None or _number(row.get("agent_steps")) is None:
            continue
        series.steps.append(row["agent_steps"])
        series.values.append(value)
        series.stderr.append(_number(row.get(f"eval/{stat}_stderr")) or 0.0)
    return series


def _training_series(rows: list[dict], stat: str) -> Series:
    key = "episode_return" if stat == "return" else "episode_length" if stat == "length" else stat
    series = Series()
    for row in rows:
        value = _number(row.get(key))
        if value is not None and _number(row.get("agent_steps")) is not None:
            series.steps.append(row["agent_steps"])
            series.values.append(value)
    return series


def stat_label(stat: str) -> str:
    """The y-axis label of a stat: what one number of it is."""
    if stat == "length":
        return "episode length (steps)"
    return f"{stat} per agent per episode"


def full_episode_length(rows: list[dict], config: dict[str, Any]) -> float | None:
    """How long an episode runs when nothing cuts it: ``game.max_steps`` when set, else the longest episode
    seen (eval episodes are always full length, and late training episodes are)."""
    configured = _number((config.get("game") or {}).get("max_steps"))
    if configured is not None:
        return configured
    lengths = [_number(row.get(key)) for row in rows for key in ("eval/length", "episode_length")]
    lengths = [length for length in lengths if length is not None]
    return max(lengths) if lengths else None


def cut_short_spans(rows: list[dict], full_length: float | None) -> list[tuple[float, float]]:
    """Agent-step intervals of the epochs whose finished training episodes were, on average, shorter than a
    full episode (the start of a run, and again after a resume: envs start on new maps)."""
    if full_length is None:
        return []
    spans: list[tuple[float, float]] = []
    previous_end: float | None = None
    for row in rows:
        end = _number(row.get("agent_steps"))
        if end is None:
            continue
        epoch = _number(row.get("epoch")) or 1.0
        start = previous_end if previous_end is not None else end * (epoch - 1) / epoch
        previous_end = end
        length = _number(row.get("episode_length"))
        if length is None or length >= full_length * (1 - 1e-6):
            continue
        if spans and spans[-1][1] == start:
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((start, end))
    return spans


def game_baselines(game: str | None, stat: str, full_length: float | None) -> list[Baseline]:
    """The stored random and scripted figures of ``stat`` on ``game``, if they were measured on episodes as
    long as the run's (a run with a shorter ``game.max_steps`` cannot be compared with them)."""
    from metta_agent.baselines import stored_baselines

    if not game:
        return []
    baselines = []
    for name, entry in (stored_baselines(game) or {}).items():
        if not isinstance(entry, dict):
            continue
        value = _number(entry.get(f"mean_{stat}"))
        if value is None:
            continue
        length = _number(entry.get("mean_length"))
        if full_length and length and abs(length - full_length) > LENGTH_TOLERANCE * full_length:
            continue
        baselines.append(Baseline(name, value, _number(entry.get(f"mean_{stat}_stderr")) or 0.0))
    order = list(BASELINE_STYLES)
    return sorted(baselines, key=lambda b: order.index(b.name) if b.name in order else len(order))


# ---- one run: curve.png ---------------------------------------------------------------------------------


@dataclass
class Panel:
    """One stat of a run: eval points, training figures per epoch and baselines."""

    stat: str
    eval: Series
    training: Series
    baselines: list[Baseline]

    @property
    def ylabel(self) -> str:
        return stat_label(self.stat)


@dataclass
class LearningCurve:
    """What ``curve.png`` shows, before drawing."""

    title: str
    panels: list[Panel]
    cut_short: list[tuple[float, float]]
    full_length: float | None
    eval_episodes: int | None


def _same_values(first: Series, second: Series) -> bool:
    if first.steps != second.steps:
        return False
    return all(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9) for a, b in zip(first.values, second.values))


def config_game(config: dict[str, Any]) -> str | None:
    """The game a run's config names: its source, or ``mixture``."""
    game = config.get("game") or {}
    return "mixture" if game.get("mixture") else game.get("name")


def _primary_stat(rows: list[dict]) -> str | None:
    """The stat a curve leads with: hearts when the game has them, else the game's first own stat (a custom
    game's resource, e.g. ``gem``), else none (return only)."""
    if any(_number(row.get("hearts")) is not None or _number(row.get("eval/hearts")) is not None for row in rows):
        return "hearts"
    for row in rows:
        for key in row:
            name = key.removeprefix("eval/")
            if (key.startswith("eval/") and "/" not in name and not name.endswith("_stderr")
                    and name not in ("return", "length", "seconds") and _number(row[key]) is not None):
                return name
    return None


def learning_curve(rows: list[dict], config: dict[str, Any], run_name: str) -> LearningCurve:
    """The panels of a run's learning curve: the primary stat (hearts when the game has them, else return),
    and return in a second panel only when it differs from hearts (on the heart game they are the same)."""
    game = config_game(config)
    full_length = full_episode_length(rows, config)
    primary = _primary_stat(rows)
    stats = [primary, "return"] if primary else ["return"]
    panels = [Panel(stat, _eval_series(rows, stat), _training_series(rows, stat),
                    game_baselines(game, stat, full_length)) for stat in stats]
    if len(panels) == 2:
        first, returns = panels
        if _same_values(first.eval, returns.eval) and _same_values(first.training, returns.training):
            panels = [first]
    eval_episodes = (config.get("trainer") or {}).get("eval_episodes")
    title = f"{run_name} - {game}" if game else run_name
    return LearningCurve(title, panels, cut_short_spans(rows, full_length), full_length, eval_episodes)


def plot_learning_curve(metrics_path: Path, image_path: Path, title: str | None = None) -> Path | None:
    """Draw the learning curve of the run whose ``metrics.jsonl`` is ``metrics_path`` into ``image_path``;
    the path, or None when there is nothing to draw yet."""
    metrics_path = Path(metrics_path)
    if not metrics_path.is_file():  # a run stopped before its first epoch
        return None
    run_dir = metrics_path.parent
    curve = learning_curve(read_metrics(metrics_path), read_config(run_dir), run_dir.resolve().name)
    if title:
        curve.title = title
    if not any(len(panel.eval) or len(panel.training) for panel in curve.panels):
        return None
    figure = _new_figure(rows=len(curve.panels))
    axes = figure.subplots(len(curve.panels), 1, sharex=True, squeeze=False)[:, 0]
    for axis, panel in zip(axes, curve.panels):
        _draw_panel(axis, panel, curve)
    axes[-1].set_xlabel("agent steps")
    _legend_below(figure, axes[0])
    figure.suptitle(curve.title)
    figure.savefig(image_path, dpi=FIGURE_DPI)
    return Path(image_path)


def _draw_panel(axis, panel: Panel, curve: LearningCurve) -> None:
    color = "tab:blue"
    for index, (start, end) in enumerate(curve.cut_short):
        label = f"training episodes cut short (mean length < {curve.full_length:g})" if index == 0 else None
        axis.axvspan(start, end, color="0.9", zorder=0, lw=0, label=label)
    if len(panel.eval):
        episodes = f"{curve.eval_episodes} episodes, " if curve.eval_episodes else ""
        axis.errorbar(panel.eval.steps, panel.eval.values, yerr=panel.eval.stderr, fmt="o-", color=color, lw=2,
                      ms=5, capsize=3, zorder=4, label=f"eval on fresh maps ({episodes}mean ± stderr)")
    if len(panel.training):
        axis.plot(panel.training.steps, panel.training.values, color=color, alpha=0.35, lw=1.2, zorder=2,
                  label="training (episodes that ended in the epoch)")
    _draw_baselines(axis, panel.baselines)
    _finish_axis(axis, panel.ylabel)


# ---- several runs: metta-agent plot ---------------------------------------------------------------------


@dataclass
class RunGroup:
    """Runs whose configs differ only in the seed; ``mean``/``low``/``high`` over the eval steps they share."""

    runs: list[Run]
    label: str = ""
    mean: Series = field(default_factory=Series)
    low: list[float] = field(default_factory=list)
    high: list[float] = field(default_factory=list)


def group_runs(runs: list[Run], stat: str) -> list[RunGroup]:
    """Runs grouped by config without ``trainer.seed``, in the order they were given, with the mean and
    min-max of ``stat`` over the seeds at the eval steps all of a group's runs have."""
    groups: list[RunGroup] = []
    keys: list[dict[str, str]] = []
    for run in runs:
        config = run.config_without_seed()
        # A run without config.yaml cannot be shown to share anything: it stays alone.
        if config and config in keys:
            groups[keys.index(config)].runs.append(run)
        else:
            keys.append(config)
            groups.append(RunGroup([run]))
    varying = sorted({key for config in keys for key in config if len({c.get(key) for c in keys}) > 1})
    for group, config in zip(groups, keys):
        group.label = _group_label(group, config, varying)
        if len(group.runs) > 1:
            _fill_band(group, stat)
    return groups


def _group_label(group: RunGroup, config: dict[str, str], varying: list[str]) -> str:
    names = [run.name for run in group.runs]
    if len(group.runs) == 1:
        return names[0]
    shown = [f"{key}={json.loads(config[key]) if key in config else '-'}" for key in varying[:3]]
    if len(varying) > 3:
        shown.append("...")
    # Without a config difference to show: the runs' shared name less its seed part (heart-s0, heart-s1: heart).
    name = ", ".join(shown) if shown else re.sub(r"([-_.](seed|s)?)?\d*$", "", _common_prefix(names)) or names[0]
    seeds = ", ".join(str(run.seed) for run in group.runs)
    return f"{name} (seeds {seeds})"


def _common_prefix(names: list[str]) -> str:
    prefix = names[0]
    for name in names[1:]:
        while not name.startswith(prefix):
            prefix = prefix[:-1]
    return prefix


def _fill_band(group: RunGroup, stat: str) -> None:
    per_run = [dict(zip(series.steps, series.values)) for series in (run.eval_series(stat) for run in group.runs)]
    common = sorted(set.intersection(*(set(points) for points in per_run)))
    for step in common:
        values = [points[step] for points in per_run]
        group.mean.steps.append(step)
        group.mean.values.append(statistics.fmean(values))
        group.mean.stderr.append(_stderr(values))
        group.low.append(min(values))
        group.high.append(max(values))


def _stderr(values: list[float]) -> float:
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0


def load_runs(paths: list[Path], metric: str | None) -> tuple[list[Run], str]:
    """The runs and the metric to compare them on (hearts when every run has it, else return); every error
    is a :class:`UsageError` that says what to do."""
    runs = [load_run(path) for path in dict.fromkeys(Path(p) for p in paths)]
    for run in runs:
        if not any(key.startswith("eval/") for row in run.rows for key in row):
            raise UsageError(f"run '{run.path}' has no eval points (no eval/ keys in its metrics.jsonl); train with "
                             f"--set trainer.eval_interval=N to evaluate every N epochs")
    chosen = metric or ("hearts" if all(len(run.eval_series("hearts")) for run in runs) else "return")
    missing = [run for run in runs if not len(run.eval_series(chosen))]
    if missing:
        games = sorted({str(run.game) for run in runs})
        available = sorted({key.removeprefix("eval/") for run in missing for row in run.rows for key in row
                            if key.startswith("eval/") and not key.endswith("_stderr")})
        where = f"runs of different games ({', '.join(games)}): " if len(games) > 1 else ""
        raise UsageError(f"{where}metric '{chosen}' has no eval points in run '{missing[0].path}'"
                         f" ({missing[0].game}); choose --metric from: {', '.join(available)}")
    return runs, chosen


def compare_runs(paths: list[Path], out: Path, metric: str | None = None) -> dict[str, Any]:
    """Draw the eval points of the runs at ``paths`` on one picture ``out`` and return the final figures:
    per run and per group of seeds, the last eval point and the training return at the end, and the
    game's baselines."""
    out = Path(out)
    _check_output(out)
    runs, stat = load_runs(paths, metric)
    groups = group_runs(runs, stat)
    games = sorted({run.game for run in runs if run.game})
    game = games[0] if len(games) == 1 and all(run.game for run in runs) else None
    baselines, note = _comparable_baselines(runs, game, stat)
    _draw_comparison(groups, stat, baselines, games, out)
    summary = _final_figures(groups, stat, game, games, baselines, out)
    summary["baselines_note"] = note
    return summary


def _comparable_baselines(runs: list[Run], game: str | None, stat: str) -> tuple[list[Baseline], str | None]:
    """The baselines to draw beside ``runs``, and why there are none when there are none."""
    from metta_agent.baselines import stored_baselines

    if game is None:
        return [], "no baselines: the runs are not all of one game"
    if not stored_baselines(game):
        return [], f"no stored baselines for {game} (python -m metta_agent.baselines measures them)"
    lengths = {full_episode_length(run.rows, run.config) for run in runs}
    if len(lengths) > 1:
        return [], "no baselines: the runs' episodes are of different lengths"
    baselines = game_baselines(game, stat, lengths.pop())
    if not baselines:
        return [], f"no stored baselines of {stat} on {game} with episodes as long as the runs'"
    return baselines, None


def _check_output(out: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not out.parent.is_dir():
        raise UsageError(f"cannot write '{out}': directory '{out.parent}' does not exist")
    if out.is_dir():
        raise UsageError(f"cannot write '{out}': it is a directory; give a file name such as {out}/compare.png")
    formats = FigureCanvasAgg(Figure()).get_supported_filetypes()
    if out.suffix.lstrip(".").lower() not in formats:
        raise UsageError(f"cannot write '{out}': unknown image type '{out.suffix}'; use .png, .svg or .pdf")


def _draw_comparison(groups: list[RunGroup], stat: str, baselines: list[Baseline], games: list[str],
                     out: Path) -> None:
    figure = _new_figure(rows=1)
    axis = figure.subplots()
    for index, group in enumerate(groups):
        color = f"C{index % 10}"
        if len(group.runs) == 1:
            series = group.runs[0].eval_series(stat)
            axis.errorbar(series.steps, series.values, yerr=series.stderr, fmt="o-", color=color, lw=2, ms=5,
                          capsize=3, zorder=4, label=f"{group.label} (± stderr)")
            continue
        for run in group.runs:  # each seed faintly, so a seed far from the others shows
            series = run.eval_series(stat)
            axis.plot(series.steps, series.values, "o", color=color, ms=3, alpha=0.45, zorder=3)
        if len(group.mean):
            axis.fill_between(group.mean.steps, group.low, group.high, color=color, alpha=0.18, lw=0, zorder=2)
            axis.plot(group.mean.steps, group.mean.values, "-", color=color, lw=2.2, zorder=4,
                      label=f"{group.label}: mean, band min-max")
        else:
            axis.plot([], [], "o", color=color, label=f"{group.label}: no eval step shared by all seeds")
    _draw_baselines(axis, baselines)
    _finish_axis(axis, f"eval: {stat_label(stat)}")
    axis.set_xlabel("agent steps")
    _legend_below(figure, axis)
    axis.set_title(f"{stat} at the eval points ({', '.join(games) or 'unknown game'})")
    figure.savefig(out, dpi=FIGURE_DPI)


def _final_figures(groups: list[RunGroup], stat: str, game: str | None, games: list[str],
                   baselines: list[Baseline], out: Path) -> dict[str, Any]:
    runs_out, groups_out = [], []
    for group in groups:
        finals = []
        for run in group.runs:
            series = run.eval_series(stat)
            final = {"run": run.name, "path": str(run.path), "game": run.game, "seed": run.seed,
                     "group": group.label, "value": series.values[-1], "stderr": series.stderr[-1],
                     "agent_steps": series.steps[-1], "eval_points": len(series),
                     "training_return": run.final_training_return()}
            runs_out.append(final)
            finals.append(final)
        if len(group.runs) > 1:
            values = [final["value"] for final in finals]
            training = [final["training_return"] for final in finals if final["training_return"] is not None]
            groups_out.append({
                "group": group.label, "runs": [run.name for run in group.runs],
                "seeds": [run.seed for run in group.runs],
                "value": statistics.fmean(values), "stderr": _stderr(values),
                "min": min(values), "max": max(values),
                "agent_steps": sorted({final["agent_steps"] for final in finals}),
                "training_return": statistics.fmean(training) if training else None,
                "shared_eval_points": len(group.mean),
            })
    return {"metric": stat, "game": game, "games": games, "out": str(out), "runs": runs_out, "groups": groups_out,
            "baselines": {b.name: {"value": b.value, "stderr": b.stderr} for b in baselines}}


def format_final_figures(summary: dict[str, Any]) -> str:
    """The table printed by ``metta-agent plot``."""
    stat = summary["metric"]
    names = [row["run"] for row in summary["runs"]] + [group["group"] for group in summary["groups"]]
    width = max(12, *(len(name) for name in names))
    header = f"{'':<{width}}  {'seed':>4}  {stat:>17}  {'agent steps':>12}  {'training return':>15}"
    lines = [f"{stat} at the last eval point (± stderr over its eval episodes)", header.replace(" " * 3, "run", 1)]
    for row in summary["runs"]:
        lines.append(f"{row['run']:<{width}}  {_text(row['seed']):>4}  {_pm(row['value'], row['stderr']):>17}  "
                     f"{row['agent_steps']:>12,}  {_text(row['training_return']):>15}")
    if summary["groups"]:
        lines.append("groups of seeds: mean of the runs' last eval points (± stderr over seeds)")
        for group in summary["groups"]:
            steps = "/".join(f"{s:,}" for s in group["agent_steps"])
            lines.append(f"{group['group']:<{width}}  {'':>4}  {_pm(group['value'], group['stderr']):>17}  "
                         f"{steps:>12}  {_text(group['training_return']):>15}")
    if summary["baselines"]:
        shown = ", ".join(f"{name} {_pm(b['value'], b['stderr'])}" for name, b in summary["baselines"].items())
        lines.append(f"baselines on {summary['game']} (stored): {shown}")
    elif summary.get("baselines_note"):
        lines.append(summary["baselines_note"])
    return "\n".join(lines)


def _pm(value: float, stderr: float) -> str:
    return f"{value:.3f} ± {stderr:.3f}"


def _text(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


# ---- drawing helpers ------------------------------------------------------------------------------------


def _new_figure(rows: int):
    # A bare Figure with the Agg canvas: no pyplot, so no global backend switch and nothing left open.
    from matplotlib.figure import Figure

    width, height = FIGURE_SIZE
    return Figure(figsize=(width, height + 1.6 * (rows - 1)), layout="constrained")


def _legend_below(figure, axis) -> None:
    # Below the axes, so that it covers neither data nor a baseline; the panels share their legend. The
    # measured series come first, in the order they were drawn, the reference marks (shading, baselines) last.
    handles, labels = axis.get_legend_handles_labels()
    order = sorted(range(len(handles)),
                   key=lambda i: (labels[i].startswith(REFERENCE_LABELS), _drawn_order(axis, handles[i])))
    if handles:
        figure.legend([handles[i] for i in order], [labels[i] for i in order], loc="outside lower center", ncols=2,
                      fontsize=8, frameon=False)


def _drawn_order(axis, handle) -> int:
    artist = handle.lines[0] if hasattr(handle, "lines") else handle  # an errorbar container: its data line
    children = axis.get_children()
    return children.index(artist) if artist in children else len(children)


def _draw_baselines(axis, baselines: list[Baseline]) -> None:
    from matplotlib.transforms import blended_transform_factory

    on_right = blended_transform_factory(axis.transAxes, axis.transData)
    for baseline in baselines:
        color, style = BASELINE_STYLES.get(baseline.name, ("0.3", ":"))
        axis.axhline(baseline.value, color=color, ls=style, lw=1.3, zorder=1,
                     label=f"{baseline.name} policy (stored baseline)")
        # In the right margin, where no data point can hide it.
        axis.text(1.01, baseline.value, f"{baseline.name}\n{baseline.value:.2f}\n±{baseline.stderr:.2f}",
                  transform=on_right, ha="left", va="center", fontsize=8, color=color, clip_on=False)


def _finish_axis(axis, ylabel: str) -> None:
    from matplotlib.ticker import FuncFormatter

    axis.set_ylabel(ylabel)
    axis.grid(alpha=0.3)
    axis.xaxis.set_major_formatter(FuncFormatter(lambda x, _: _short_count(x)))
    axis.margins(y=0.08)
    axis.set_xlim(left=0)  # where training started
    # Counts of hearts or ore read best from zero; a stat that goes negative keeps matplotlib's range.
    if min(_data_minima(axis)) >= 0:
        axis.set_ylim(bottom=0)


def _data_minima(axis) -> list[float]:
    """The smallest y of every drawn line (the y-range starts at 0 when nothing drawn is negative)."""
    minima = [min(line.get_ydata(), default=0.0) for line in axis.get_lines() if len(line.get_ydata())]
    return minima or [0.0]


def _short_count(value: float) -> str:
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:g}{suffix}"
    return f"{value:g}"
