"""Games from Python factories and files, recorded in the run; game mixtures (game_source.py, env/mixture.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

import metta_agent
from metta_agent.cli import main
from metta_agent.env.info import TAG_FEATURE, EnvInfo
from metta_agent.env.mixture import GameMix
from metta_agent.env.vecenv import VecEnv
from metta_agent.game_source import GameEntry, RecordedGameWarning, fingerprint, load_game, record_games
from metta_agent.games import make_game
from metta_agent.plot import learning_curve

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "gem_game.py"
TINY = ["--steps", "512", "--set", "trainer.num_envs=2", "--set", "trainer.batch_size=256",
        "--set", "trainer.minibatch_size=128", "--set", "trainer.bptt_horizon=16", "--set", "trainer.update_epochs=1",
        "--set", "trainer.eval_interval=1", "--set", "trainer.eval_episodes=1", "--set", "game.max_steps=40",
        "--quiet", "--json"]


def train(capsys, *args) -> dict:
    assert main(["train", *args, *TINY]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def gem_file(tmp_path) -> Path:
    """A copy of the README's example game, which a test may change or delete."""
    path = tmp_path / "my_gems.py"
    shutil.copy(EXAMPLE, path)
    return path


def test_factory_game_trains_records_and_evaluates_without_its_file(tmp_path, gem_file, capsys):
    run = tmp_path / "run"
    summary = train(capsys, "--game", f"{gem_file}:gem_game", "--run-dir", str(run))
    assert summary["game"] == "gem_game" and summary["baselines"] == {}
    recorded = run / "games" / "gem_game.json"
    assert fingerprint(load_game(str(recorded))) == fingerprint(load_game(f"{gem_file}:gem_game", 40))
    assert "eval/gem" in rows(run)[-1]  # the game's own resource, logged, evaluated and plotted as it is
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert learning_curve(rows(run), config, "run").panels[0].stat == "gem" and (run / "curve.png").is_file()
    gem_file.unlink()
    assert main(["train", "--resume", "--run-dir", str(run), "--steps", "1024", "--quiet", "--json"]) == 0
    assert rows(run)[-1]["agent_steps"] == 1024
    capsys.readouterr()
    assert main(["eval", str(run), "--episodes", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["game"] == "gem_game" and "mean_gem" in result and "random_mean_gem" in result
    assert "scripted_mean_return" not in result and "built-in games only" in result["scripted"]


def test_changed_factory_output_is_detected_and_the_recorded_game_used(tmp_path, gem_file, capsys):
    run = tmp_path / "run"
    train(capsys, "--game", f"{gem_file}:gem_game", "--run-dir", str(run))
    gem_file.write_text(gem_file.read_text().replace("mines: int = 5", "mines: int = 9"))
    from metta_agent.trainer import resume
    from metta_agent.trainer.trainer import Trainer

    config = resume.resume_config(run, [], [], 1024, None)
    with pytest.warns(RecordedGameWarning, match="now gives a different game"):
        trainer = Trainer(config, run, show_progress=False, resume_from=run)
    try:
        assert trainer.games[0].config.game.map_builder.objects["gem_mine"] == 5
    finally:
        trainer.close()


def test_yaml_and_json_games(tmp_path, capsys):
    data = json.loads(make_game("heart", max_steps=40).model_dump_json())
    (tmp_path / "heart.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    (tmp_path / "heart.json").write_text(json.dumps(data))
    for name in ("heart.yaml", "heart.json"):
        game = load_game(str(tmp_path / name))
        assert fingerprint(game) == fingerprint(make_game("heart", max_steps=40))
    summary = train(capsys, "--game", str(tmp_path / "heart.yaml"), "--run-dir", str(tmp_path / "run"))
    assert summary["game"] == "heart" and "hearts" in summary["eval"]
    # Only a built-in game has stored (and scripted) baselines: a file that copies one is a custom game.
    assert summary["baselines"] == {}


def test_a_recorded_game_plays_exactly_as_the_original(tmp_path):
    original = make_game("arena", max_steps=30)
    # mettagrid's serialization alone reads the arena's capped rewards back as sums (no type tag in 0.26) ...
    from mettagrid.config.mettagrid_config import MettaGridConfig

    plain = MettaGridConfig.model_validate_json(original.model_dump_json())
    assert type(plain.game.agent.rewards["ore_red"].reward).__name__ == "SumGameValue"
    # ... so a run records the classes of its game values beside it, and plays the same game again.
    record_games(tmp_path, [GameEntry("arena", "arena", 1.0, original)])
    recorded = load_game(str(tmp_path / "games" / "arena.json"))
    assert type(recorded.game.agent.rewards["ore_red"].reward).__name__ == "MinGameValue"
    outputs = []
    for game in (original, recorded):
        with VecEnv(game, 2, seed=5) as env:
            obs = env.reset().copy()
            rng = np.random.default_rng(0)
            trace = [obs]
            for _ in range(30):
                obs, rewards, terminals, truncations = env.step(rng.integers(0, 5, env.num_agents))
                trace += [obs.copy(), rewards.copy(), terminals.copy(), truncations.copy()]
            outputs.append(trace)
    for a, b in zip(*outputs):
        np.testing.assert_array_equal(a, b)
    assert fingerprint(recorded) == fingerprint(original) != fingerprint(plain)


def test_mixture_tokens_read_as_the_same_features_by_name():
    heart, gems = make_game("heart", max_steps=20), load_game(f"{EXAMPLE}:gem_game", 25)
    mix = GameMix.of([("heart", heart, 1.0), ("gem_game", gems, 1.0)])
    union = {f.id: f.name for f in mix.info.features}
    tag_names = sorted(name for name in union.values() if name.startswith("tag="))
    played = set()
    for index, game in enumerate((heart, gems)):
        own = {f.id: f.name for f in EnvInfo.from_game(game).features}
        own_tags = sorted(name for name in own.values() if name.startswith("tag="))
        tag_id = next(i for i, name in own.items() if name == TAG_FEATURE)
        with VecEnv(game, 2, seed=3, stagger_first_episodes=False) as raw, \
                VecEnv(mix.only(index), 2, seed=3, stagger_first_episodes=False) as mapped:
            a, b = raw.reset().copy(), mapped.reset().copy()
            for step in range(12):
                present = a[..., 0] != 255
                assert all(union[int(m)] == own[int(f)] for f, m in zip(a[..., 1][present], b[..., 1][present]))
                tags = present & (a[..., 1] == tag_id)
                assert all(tag_names[int(m)] == own_tags[int(v)] for v, m in zip(a[..., 2][tags], b[..., 2][tags]))
                np.testing.assert_array_equal(a[..., 2][~tags], b[..., 2][~tags])
                actions = np.full(raw.num_agents, step % 5)
                a, b = raw.step(actions)[0].copy(), mapped.step(actions)[0].copy()
        played.add(index)
    assert played == {0, 1}


def test_mixture_trains_on_both_games_with_per_game_metrics(tmp_path, capsys):
    run = tmp_path / "run"
    mixture = f"game.mixture=[{{game: heart, weight: 1}}, {{game: '{EXAMPLE}:gem_game', weight: 1}}]"
    summary = train(capsys, "--set", mixture, "--run-dir", str(run))
    assert summary["game"] == "mixture"
    recorded = sorted(p.name for p in (run / "games").glob("*.json") if "value_types" not in p.name)
    assert recorded == ["gem_game.json", "heart.json"]
    logged = rows(run)
    assert any("heart/hearts" in row for row in logged) and any("gem_game/gem" in row for row in logged)
    last = logged[-1]
    for key in ("eval/heart/hearts", "eval/gem_game/gem", "eval/hearts", "eval/return"):
        assert key in last
    expected = (last["eval/heart/return"] + last["eval/gem_game/return"]) / 2
    assert last["eval/return"] == pytest.approx(expected)
    assert main(["eval", str(run), "--episodes", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [game["game"] for game in result["games"]] == ["heart", "gem_game"]


def test_each_episode_draws_its_game_by_weight():
    heart, gems = make_game("heart", max_steps=5), load_game(f"{EXAMPLE}:gem_game", 5)
    mix = GameMix.of([("heart", heart, 3.0), ("gem_game", gems, 1.0)])
    draws = [mix.draw(0, env, episode) for env in range(20) for episode in range(20)]
    assert draws == [mix.draw(0, env, episode) for env in range(20) for episode in range(20)]
    share = draws.count(0) / len(draws)
    assert 0.68 < share < 0.82  # 3:1 by weight, 400 draws


def test_python_api_trains_a_mettagrid_config_object(tmp_path):
    game = load_game(f"{EXAMPLE}:gem_game", 40)
    config = {"trainer": {"num_envs": 2, "batch_size": 256, "minibatch_size": 128, "bptt_horizon": 16,
                          "total_agent_steps": 256, "update_epochs": 1, "eval_interval": 1, "eval_episodes": 1}}
    summary = metta_agent.train(config, game=game, run_dir=tmp_path / "run", show_progress=False)
    assert summary["agent_steps"] == 256 and "gem" in summary["eval"]
    recorded = load_game(str(tmp_path / "run" / "games" / f"{summary['game']}.json"))
    assert fingerprint(recorded) == fingerprint(game)
    agent = metta_agent.load_agent(str(tmp_path / "run"), game=f"{EXAMPLE}:gem_game")
    assert agent.settings.name == "pytorch/fast"


BAD = [
    (["--game", "missing.yaml"], "game file 'missing.yaml' does not exist"),
    (["--game", "missing.py:make"], "game file 'missing.py' does not exist"),
    (["--game", "{dir}/raises.py:make"], "raised ValueError: no such map"),
    (["--game", "{dir}/wrong.py:make"], "returned dict, not a MettaGridConfig"),
    (["--game", "{dir}/wrong.py:absent"], "has no function 'absent'"),
    (["--game", "{dir}/invalid.yaml"], "not a valid MettaGridConfig: game.num_agents"),
    (["--game", "{dir}/small.py:small"], "need an observation window of at least 11x11"),
    (["--game", "{dir}/small.py:endless"], "no episode length (max_steps 0)"),
    (["--game", "no_such_module_xyz:make"], "cannot import game module 'no_such_module_xyz'"),
    (["--game", "nonsense"], "unknown game 'nonsense'"),
    (["--set", "game.mixture=[{game: heart}, {game: arena}]"],
     "games 'heart' and 'arena' cannot be mixed: 4 agents vs 24"),
    (["--set", "game.mixture=[{game: heart}, {game: '{dir}/small.py:fewer_actions'}]"],
     "cannot be mixed: 5 actions vs 3"),
    (["--set", "game.mixture=[{game: heart, weight: 0}]"], "weight must be a positive number"),
]


SMALL_GAMES = """
import metta_agent

def small():
    g = metta_agent.make_game('heart')
    g.game.obs.width = g.game.obs.height = 7
    return g

def endless():
    g = metta_agent.make_game('heart')
    g.game.max_steps = 0
    return g

def fewer_actions():
    g = metta_agent.make_game('heart')
    g.game.actions.move.allowed_directions = ['north', 'south']
    return g
"""


@pytest.mark.parametrize("args,message", BAD)
def test_bad_games_are_one_line_and_exit_code_2(args, message, tmp_path, capsys):
    (tmp_path / "raises.py").write_text("def make():\n    raise ValueError('no such map')\n")
    (tmp_path / "wrong.py").write_text("def make():\n    return {'game': {}}\n")
    (tmp_path / "invalid.yaml").write_text("game:\n  num_agents: 0\n")
    (tmp_path / "small.py").write_text(SMALL_GAMES)
    args = [arg.replace("{dir}", str(tmp_path)) for arg in args]
    code = main(["train", *args, "--steps", "10", "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_game_entries_know_the_built_in_games():
    assert GameEntry("heart", "heart", 1.0, make_game("heart")).builtin
    assert not GameEntry("x.yaml", "x", 1.0, make_game("heart")).builtin
