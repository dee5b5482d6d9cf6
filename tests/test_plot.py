"""The learning-curve picture of a run and ``metta-agent plot``, on small synthetic run directories."""

from __future__ import annotations

import json

import pytest
import yaml

import metta_agent.baselines
from metta_agent import plot
from metta_agent.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FULL_LENGTH = 200
STORED = {
    "heart": {
        "episodes": 16, "command": "python -m metta_agent.baselines",
        "random": {"mean_hearts": 2.4, "mean_hearts_stderr": 0.1, "mean_return": 2.4, "mean_return_stderr": 0.1,
                   "mean_length": 200.0},
        "scripted": {"mean_hearts": 9.0, "mean_hearts_stderr": 0.5, "mean_return": 9.0, "mean_return_stderr": 0.5,
                     "mean_length": 200.0},
    },
}


@pytest.fixture
def baselines(monkeypatch):
    """Stored baselines for the heart game, whatever metta_agent/baselines.json holds."""
    monkeypatch.setattr(metta_agent.baselines, "stored_baselines",
                        lambda game=None: STORED if game is None else STORED.get(game, {}))


@pytest.fixture
def no_baselines(monkeypatch):
    monkeypatch.setattr(metta_agent.baselines, "stored_baselines", lambda game=None: {})


def epoch_row(epoch, hearts, length=FULL_LENGTH, extra_return=0.0, eval_hearts=None, eval_stderr=0.5):
    """One metrics row of an epoch of 1000 agent steps; ``eval_hearts`` adds an eval point."""
    row = {"epoch": epoch, "agent_steps": 1000 * epoch, "sps": 1000.0, "episodes": 10, "episode_length": length,
           "hearts": hearts, "episode_return": hearts + extra_return}
    if eval_hearts is not None:
        row.update({"eval/hearts": eval_hearts, "eval/hearts_stderr": eval_stderr,
                    "eval/return": eval_hearts + extra_return, "eval/return_stderr": eval_stderr,
                    "eval/length": float(FULL_LENGTH), "eval/length_stderr": 0.0})
    return row


def write_run(directory, rows, game="heart", seed=0, lr=1e-3, max_steps=None):
    directory.mkdir(parents=True)
    config = {"agent": {"name": "pytorch/fast", "clip_range": 0.0},
              "game": {"name": game, "max_steps": max_steps},
              "trainer": {"lr": lr, "seed": seed, "eval_interval": 2, "eval_episodes": 4}}
    (directory / "config.yaml").write_text(yaml.safe_dump(config))
    (directory / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return directory


def learning_rows(final_eval=5.0, extra_return=0.0):
    """Four epochs: short episodes in the first two, eval points at epochs 2 and 4."""
    return [
        epoch_row(1, 0.5, length=40, extra_return=extra_return),
        epoch_row(2, 1.5, length=120, extra_return=extra_return, eval_hearts=3.0),
        epoch_row(3, 3.0, extra_return=extra_return),
        epoch_row(4, 4.0, extra_return=extra_return, eval_hearts=final_eval, eval_stderr=0.25),
    ]


# ---- curve.png ------------------------------------------------------------------------------------------


def test_curve_png_is_written(tmp_path, baselines):
    run = write_run(tmp_path / "run", learning_rows())
    image = plot.plot_learning_curve(run / "metrics.jsonl", run / "curve.png")
    assert image == run / "curve.png"
    assert image.read_bytes()[:8] == PNG_MAGIC
    import matplotlib.image

    height, width = matplotlib.image.imread(image).shape[:2]
    assert (width, height) == (800, 500)


def test_nothing_to_draw_gives_none(tmp_path, no_baselines):
    run = write_run(tmp_path / "run", [{"epoch": 1, "agent_steps": 1000, "episodes": 0, "episode_return": None}])
    assert plot.plot_learning_curve(run / "metrics.jsonl", tmp_path / "curve.png") is None
    assert not (tmp_path / "curve.png").exists()


def test_curve_shows_eval_points_baselines_and_one_series_when_return_is_hearts(tmp_path, baselines):
    rows = learning_rows()
    curve = plot.learning_curve(rows, plot.read_config(write_run(tmp_path / "run", rows)), "run")
    assert curve.title == "run - heart"
    [panel] = curve.panels  # on the heart game return is hearts: no second, identical series
    assert panel.stat == "hearts"
    assert panel.ylabel == "hearts per agent per episode"
    assert panel.eval.steps == [2000, 4000]
    assert panel.eval.values == [3.0, 5.0]
    assert panel.eval.stderr == [0.5, 0.25]
    assert panel.training.values == [0.5, 1.5, 3.0, 4.0]
    assert [(b.name, b.value, b.stderr) for b in panel.baselines] == [("random", 2.4, 0.1), ("scripted", 9.0, 0.5)]
    assert curve.eval_episodes == 4


def test_return_gets_its_own_panel_when_it_differs_from_hearts(tmp_path, no_baselines):
    rows = learning_rows(extra_return=1.0)
    curve = plot.learning_curve(rows, plot.read_config(write_run(tmp_path / "run", rows)), "run")
    assert [panel.stat for panel in curve.panels] == ["hearts", "return"]
    assert curve.panels[1].eval.values == [4.0, 6.0]
    assert curve.panels[1].baselines == []


def test_a_game_without_hearts_plots_return():
    rows = [{"epoch": 1, "agent_steps": 1000, "episode_return": 1.0, "episode_length": 50,
             "eval/return": 2.0, "eval/return_stderr": 0.1, "eval/length": 50}]
    curve = plot.learning_curve(rows, {}, "run")
    assert [panel.stat for panel in curve.panels] == ["return"]
    assert curve.panels[0].eval.values == [2.0]


def test_epochs_with_short_episodes_are_marked():
    rows = learning_rows()
    # A resume starts new episodes on new maps: the first epochs after it see short episodes again.
    rows += [epoch_row(5, 2.0, length=90), epoch_row(6, 2.5, length=150), epoch_row(7, 4.0)]
    assert plot.full_episode_length(rows, {}) == FULL_LENGTH
    assert plot.cut_short_spans(rows, FULL_LENGTH) == [(0.0, 2000), (4000, 6000)]
    assert plot.full_episode_length(rows, {"game": {"max_steps": 300}}) == 300


def test_baselines_of_another_episode_length_are_not_drawn(tmp_path, baselines):
    rows = [epoch_row(1, 1.0, length=40, eval_hearts=2.0)]
    rows[0]["eval/length"] = 40.0
    curve = plot.learning_curve(rows, plot.read_config(write_run(tmp_path / "run", rows, max_steps=40)), "run")
    assert curve.panels[0].baselines == []


def test_curve_without_stored_baselines_or_eval_points(tmp_path, no_baselines):
    rows = [{key: value for key, value in row.items() if not key.startswith("eval/")} for row in learning_rows()]
    run = write_run(tmp_path / "run", rows)
    assert plot.plot_learning_curve(run / "metrics.jsonl", run / "curve.png") == run / "curve.png"


# ---- metta-agent plot -----------------------------------------------------------------------------------


@pytest.fixture
def three_runs(tmp_path):
    """Seeds 0 and 1 of one config, and seed 0 with another learning rate."""
    seed0 = write_run(tmp_path / "lr1e-3-s0", learning_rows(final_eval=5.0), seed=0)
    seed1 = write_run(tmp_path / "lr1e-3-s1", learning_rows(final_eval=7.0), seed=1)
    other = write_run(tmp_path / "lr3e-4-s0", learning_rows(final_eval=4.0), seed=0, lr=3e-4)
    return [seed0, seed1, other]


def test_runs_differing_only_in_seed_form_a_group_with_a_band(three_runs):
    runs = [plot.load_run(path) for path in three_runs]
    groups = plot.group_runs(runs, "hearts")
    assert [[run.name for run in group.runs] for group in groups] == [["lr1e-3-s0", "lr1e-3-s1"], ["lr3e-4-s0"]]
    seeds, other = groups
    assert seeds.label == "trainer.lr=0.001 (seeds 0, 1)"
    assert other.label == "lr3e-4-s0"
    assert seeds.mean.steps == [2000, 4000]
    assert seeds.mean.values == [3.0, 6.0]
    assert (seeds.low, seeds.high) == ([3.0, 5.0], [3.0, 7.0])
    assert len(other.mean) == 0  # a run alone is drawn with its own error bars, no band


def test_band_covers_only_the_eval_steps_all_seeds_have(tmp_path):
    short = write_run(tmp_path / "s0", learning_rows()[:2], seed=0)
    full = write_run(tmp_path / "s1", learning_rows(), seed=1)
    [group] = plot.group_runs([plot.load_run(short), plot.load_run(full)], "hearts")
    assert group.mean.steps == [2000]


def test_final_figures_per_run_and_group(three_runs, tmp_path, baselines):
    summary = plot.compare_runs(three_runs, tmp_path / "compare.png")
    assert (tmp_path / "compare.png").read_bytes()[:8] == PNG_MAGIC
    assert summary["metric"] == "hearts" and summary["game"] == "heart"
    finals = {row["run"]: row for row in summary["runs"]}
    assert finals["lr1e-3-s1"]["value"] == 7.0
    assert finals["lr1e-3-s1"]["stderr"] == 0.25
    assert finals["lr1e-3-s1"]["agent_steps"] == 4000
    assert finals["lr1e-3-s1"]["training_return"] == 4.0
    assert finals["lr3e-4-s0"]["value"] == 4.0
    [group] = summary["groups"]
    assert group["runs"] == ["lr1e-3-s0", "lr1e-3-s1"]
    assert group["value"] == 6.0
    assert group["stderr"] == pytest.approx(1.0)  # stdev 1.414 over 2 seeds / sqrt(2)
    assert (group["min"], group["max"]) == (5.0, 7.0)
    assert summary["baselines"] == {"random": {"value": 2.4, "stderr": 0.1}, "scripted": {"value": 9.0, "stderr": 0.5}}
    table = plot.format_final_figures(summary)
    assert "7.000 ± 0.250" in table and "6.000 ± 1.000" in table and "random 2.400 ± 0.100" in table


def test_plot_command_prints_the_table_or_json(three_runs, tmp_path, capsys, no_baselines):
    out = tmp_path / "compare.png"
    assert main(["plot", *map(str, three_runs), "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "lr3e-4-s0" in table and "4.000 ± 0.250" in table
    assert main(["plot", *map(str, three_runs), "--out", str(out), "--metric", "return", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["metric"] == "return"
    assert [row["value"] for row in summary["runs"]] == [5.0, 7.0, 4.0]
    assert summary["baselines"] == {}


def test_runs_of_different_games_compare_on_a_shared_metric(tmp_path, capsys, no_baselines):
    heart = write_run(tmp_path / "heart", learning_rows())
    arena = write_run(tmp_path / "arena", learning_rows(extra_return=1.0), game="arena")
    assert main(["plot", str(heart), str(arena), "--out", str(tmp_path / "c.png"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["game"] is None and summary["games"] == ["arena", "heart"]


@pytest.mark.parametrize("case, message", [
    ("not_a_run", "is not a run directory: it has no metrics.jsonl"),
    ("no_eval", "has no eval points"),
    ("games_without_metric", "runs of different games (arena, heart): metric 'ore'"),
    ("missing_metric", "metric 'ore' has no eval points"),
    ("no_out_dir", "does not exist"),
])
def test_bad_input_is_one_line_and_exit_code_2(case, message, tmp_path, capsys, no_baselines):
    heart = write_run(tmp_path / "heart", learning_rows())
    args = [str(heart), "--out", str(tmp_path / "c.png")]
    if case == "not_a_run":
        args = [str(tmp_path), *args]
    elif case == "no_eval":
        rows = [{k: v for k, v in row.items() if not k.startswith("eval/")} for row in learning_rows()]
        args = [str(write_run(tmp_path / "noeval", rows)), *args]
    elif case == "games_without_metric":
        rows = learning_rows()
        rows[-1].update({"eval/ore": 3.0, "eval/ore_stderr": 0.1})
        args = [str(write_run(tmp_path / "arena", rows, game="arena")), *args, "--metric", "ore"]
    elif case == "missing_metric":
        args = [*args, "--metric", "ore"]
    elif case == "no_out_dir":
        args = [str(heart), "--out", str(tmp_path / "missing" / "c.png")]
    code = main(["plot", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1
    if case == "no_eval":
        assert "trainer.eval_interval" in err


# ---- a real run -----------------------------------------------------------------------------------------


def test_a_real_tiny_heart_run_is_plotted(tmp_path, capsys):
    """Two epochs of 1024 agent steps with 50-step episodes and an eval after each (a few seconds)."""
    run = tmp_path / "run"
    code = main(["train", "--game", "heart", "--steps", "2048", "--run-dir", str(run), "--quiet",
                 "--set", "trainer.num_envs=4", "--set", "trainer.batch_size=1024",
                 "--set", "trainer.minibatch_size=512", "--set", "trainer.update_epochs=1",
                 "--set", "trainer.eval_interval=1", "--set", "trainer.eval_episodes=1", "--set", "game.max_steps=50"])
    assert code == 0
    assert (run / "curve.png").read_bytes()[:8] == PNG_MAGIC
    capsys.readouterr()
    assert main(["plot", str(run), "--out", str(tmp_path / "compare.png"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    [final] = summary["runs"]
    assert final["agent_steps"] == 2048 and final["eval_points"] == 2
