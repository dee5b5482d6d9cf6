"""``metta-agent eval``: form swap (component <-> PyTorch), cross-game evaluation, greedy actions, replays and
ASCII rendering. Checkpoints come from real (tiny) ``metta-agent train`` runs."""

import json
import math
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from tensordict import TensorDict

from metta_agent import contract as keys
from metta_agent import load_agent, make_game
from metta_agent.cli import main
from metta_agent.env import VecEnv
from metta_agent.evaluate import evaluate

TINY = ["--steps", "1024", "--set", "trainer.bptt_horizon=16", "--quiet"]


def train(run_dir, *args):
    result = subprocess.run([sys.executable, "-m", "metta_agent.cli", "train", *args, *TINY, "--run-dir", str(run_dir)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return run_dir


@pytest.fixture(scope="module")
def heart_component_run(tmp_path_factory):
    """A ``fast`` (component form) checkpoint trained on heart: 16 agents, one epoch of 1024 steps."""
    return train(tmp_path_factory.mktemp("runs") / "heart-fast", "--agent", "fast", "--game", "heart",
                 "--set", "trainer.num_envs=4", "--set", "trainer.batch_size=1024",
                 "--set", "trainer.minibatch_size=512")


@pytest.fixture(scope="module")
def arena_pytorch_run(tmp_path_factory):
    """A ``pytorch/fast`` checkpoint trained on arena: 24 agents, 384-step epochs."""
    return train(tmp_path_factory.mktemp("runs") / "arena-pytorch-fast", "--agent", "pytorch/fast", "--game", "arena",
                 "--set", "trainer.num_envs=1", "--set", "trainer.batch_size=384",
                 "--set", "trainer.minibatch_size=192", "--set", "game.max_steps=64")


def run_eval(capsys, *args):
    code = main(["eval", *map(str, args)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured


def eval_json(capsys, *args):
    return json.loads(run_eval(capsys, *args, "--json").out)


def test_component_checkpoint_evaluates_as_the_pytorch_form(heart_component_run, capsys):
    common = (heart_component_run, "--episodes", "2", "--max-steps", "60", "--greedy", "--seed", "3")
    as_saved = eval_json(capsys, *common)
    as_pytorch = eval_json(capsys, *common, "--as-agent", "pytorch/fast")
    assert as_saved.pop("agent") == "fast" and as_pytorch.pop("agent") == "pytorch/fast"
    assert as_saved == as_pytorch  # greedy: the same network takes the same actions on the same maps
    assert as_saved["greedy"] is True and as_saved["mean_length"] == 60


def test_pytorch_checkpoint_evaluates_as_the_component_form(arena_pytorch_run, capsys):
    common = (arena_pytorch_run, "--episodes", "1", "--greedy")
    as_saved = eval_json(capsys, *common)
    as_component = eval_json(capsys, *common, "--as-agent", "fast")
    assert as_saved.pop("agent") == "pytorch/fast" and as_component.pop("agent") == "fast"
    assert as_saved == as_component
    assert as_saved["mean_length"] == 64  # the training run's episode length on its own game


def test_both_forms_give_equal_log_probs_on_real_observations(heart_component_run):
    forms = [load_agent(str(heart_component_run)), load_agent(str(heart_component_run), as_agent="pytorch/fast")]
    assert [type(form.policy).__name__ for form in forms] == ["ComponentPolicy", "Fast"]
    outputs = [[] for _ in forms]
    with VecEnv(make_game("heart"), num_envs=2, seed=5) as env:
        obs = torch.from_numpy(env.reset().copy())
        starts = torch.ones(env.num_agents, dtype=torch.bool)
        for _ in range(12):
            for form, out in zip(forms, outputs):
                td = TensorDict({keys.ENV_OBS: obs.clone(), keys.STARTS: starts}, batch_size=[env.num_agents])
                with torch.inference_mode():
                    out.append(form(td))
            next_obs, _, terminals, truncations = env.step(outputs[0][-1][keys.ACTIONS].numpy())
            obs, starts = torch.from_numpy(next_obs.copy()), torch.from_numpy(terminals | truncations)
    for first, second in zip(*outputs):
        assert torch.allclose(first[keys.FULL_LOG_PROBS], second[keys.FULL_LOG_PROBS], atol=1e-6, rtol=0)
        assert torch.allclose(first[keys.VALUES], second[keys.VALUES], atol=1e-6, rtol=0)


def test_as_agent_must_be_the_other_form_of_the_same_architecture(heart_component_run, capsys):
    code = main(["eval", str(heart_component_run), "--as-agent", "latent_attn_tiny"])
    err = capsys.readouterr().err
    assert code == 2
    assert "holds architecture 'fast', which loads as 'fast' or 'pytorch/fast'" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_heart_checkpoint_evaluates_on_arena(heart_component_run, capsys):
    report = eval_json(capsys, heart_component_run, "--game", "arena", "--episodes", "1", "--max-steps", "50")
    assert report["game"] == "arena" and report["agents_per_episode"] == 24 and report["mean_length"] == 50
    # Arena's ore and battery inventories are features the heart agent was not built with; its actions match.
    # So are the object types heart does not have.
    assert report["dropped_features"] == ["inv:ore_red", "inv:ore_red:p1", "inv:battery_red", "inv:battery_red:p1",
                                          "tag=type:generator_red", "tag=type:mine_red"]
    assert report["untrained_actions"] == []
    for key in ("mean_return", "random_mean_return", "mean_hearts", "mean_ore", "random_mean_ore"):
        assert math.isfinite(report[key]) and report[key] >= 0, key


def test_arena_checkpoint_evaluates_on_heart(arena_pytorch_run, capsys):
    report = eval_json(capsys, arena_pytorch_run, "--game", "heart", "--episodes", "2")
    assert report["game"] == "heart" and report["agents_per_episode"] == 4
    assert report["mean_length"] == 200  # another game: its own episode length, not the training run's
    assert report["dropped_features"] == [] and report["untrained_actions"] == []
    for key in ("mean_return", "random_mean_return", "mean_hearts"):
        assert math.isfinite(report[key]) and report[key] >= 0, key


def test_actions_the_agent_never_trained_with_get_free_untrained_rows(heart_component_run):
    agent = load_agent(str(heart_component_run))
    trained_rows = dict(agent.action_rows)
    game = make_game("heart", max_steps=30)
    game.game.actions.move.allowed_directions = ["north", "south", "west", "east", "northeast", "southwest"]
    report = evaluate(agent, game, episodes=1, seed=0)
    assert report["untrained_actions"] == ["move_northeast", "move_southwest"]
    assert {name: agent.action_rows[name] for name in trained_rows} == trained_rows
    new_rows = {agent.action_rows["move_northeast"], agent.action_rows["move_southwest"]}
    assert len(new_rows) == 2 and not new_rows & set(trained_rows.values()) and 0 not in new_rows
    assert math.isfinite(report["mean_return"]) and report["mean_length"] == 30


def test_greedy_takes_the_most_probable_action_and_sampling_is_the_default(heart_component_run):
    agent = load_agent(str(heart_component_run))
    with VecEnv(make_game("heart"), num_envs=4, seed=1) as env:
        obs = torch.from_numpy(env.reset().copy())
    n = obs.shape[0]
    assert agent.greedy is False

    def act():
        agent.reset_memory()
        td = TensorDict({keys.ENV_OBS: obs, keys.STARTS: torch.ones(n)},
                        batch_size=[n])
        with torch.inference_mode():
            return agent(td)

    torch.manual_seed(0)
    sampled = torch.stack([act()[keys.ACTIONS] for _ in range(20)])
    agent.greedy = True
    out = act()
    assert torch.equal(out[keys.ACTIONS], out[keys.FULL_LOG_PROBS].argmax(-1))
    assert not (sampled == out[keys.ACTIONS]).all(), "sampled actions must differ from the argmax somewhere"
    agent.greedy = False
    evaluate(agent, make_game("heart", max_steps=5), episodes=1, greedy=True)
    assert agent.greedy is False, "evaluate restores the agent's mode"


def test_replay_dir_writes_one_mettascope_replay_per_episode(heart_component_run, capsys, tmp_path):
    replays = tmp_path / "replays"
    out = run_eval(capsys, heart_component_run, "--episodes", "2", "--max-steps", "20", "--replay-dir", replays).out
    assert f"2 replays written to {replays}/" in out
    files = sorted(replays.iterdir())
    assert [f.name for f in files] == ["heart-fast-seed0-episode000.json.z", "heart-fast-seed0-episode001.json.z"]
    for path in files:
        replay = json.loads(zlib.decompress(path.read_bytes()))
        assert replay["version"] == 4 and replay["num_agents"] == 4 and replay["max_steps"] == 20
        assert replay["action_names"] == ["noop", "move_north", "move_south", "move_west", "move_east"]
        assert replay["map_size"] == [17, 17] and replay["infos"]["attributes"]["steps"] == 20
        agents = [obj for obj in replay["objects"] if obj.get("is_agent")]
        assert sorted(obj["agent_id"] for obj in agents) == [0, 1, 2, 3]
        walls = [obj for obj in replay["objects"] if obj["type_name"] == "wall"]
        assert len(walls) == 4 * 16 + 6  # the border and the scattered walls
        for obj in agents:  # per-step values are [[step, value], ...] change lists within the episode
            locations = obj["location"]
            steps = [step for step, _ in locations] if isinstance(locations[0], list) else [0]
            assert steps[0] == 0 and all(0 <= step < 20 for step in steps)
    report = eval_json(capsys, heart_component_run, "--episodes", "1", "--max-steps", "5", "--replay-dir", replays)
    assert report["replays"] == [str(replays / "heart-fast-seed0-episode000.json.z")]


def test_replays_match_what_mettagrid_writes_for_the_same_episode(tmp_path):
    """Our engine loop with ``EngineView`` must record what mettagrid's own ``Simulation`` + replay writer
    records for the same map seed, engine seed and actions."""
    from mettagrid.mettagrid_c import dtype_actions, dtype_masks, dtype_observations, dtype_rewards
    from mettagrid.simulator.replay_log_writer import InMemoryReplayWriter
    from mettagrid.simulator.simulator import Buffers, Simulation

    from metta_agent.seeding import episode_seed
    from metta_agent.games import with_map_seed
    from metta_agent.replay import ReplayRecorder

    game = make_game("arena", max_steps=12)
    recorder = ReplayRecorder(tmp_path, "ours")
    rng = np.random.default_rng(0)
    actions = [rng.integers(0, 5, size=24) for _ in range(12)]
    with VecEnv(game, num_envs=1, seed=7, stagger_first_episodes=False) as env:
        env.reset()
        recorder.start(env)
        for step_actions in actions:
            _, rewards, terminals, truncations = env.step(step_actions)
            recorder.after_step(step_actions, rewards, (terminals | truncations).reshape(1, -1).all(axis=1))
    ours = json.loads(zlib.decompress(recorder.paths[0].read_bytes()))

    seed = episode_seed(7, 0, 0)
    n = game.game.num_agents
    buffers = Buffers(observations=np.zeros((n, 200, 3), dtype_observations), terminals=np.zeros(n, bool),
                      truncations=np.zeros(n, bool), rewards=np.zeros(n, dtype_rewards),
                      masks=np.ones(n, dtype_masks), actions=np.zeros(n, dtype_actions),
                      teacher_actions=np.zeros(n, dtype_actions))
    writer = InMemoryReplayWriter()
    simulation = Simulation(with_map_seed(game, seed), seed=seed, event_handlers=[writer], buffers=buffers)
    for step_actions in actions:
        buffers.actions[:] = step_actions
        simulation.step()
    theirs = json.loads(json.dumps(writer.get_completed_replays()[0].get_replay_data()))
    assert ours == theirs


def test_render_ascii_prints_frames_with_walls_and_agents(heart_component_run, capsys):
    out = run_eval(capsys, heart_component_run, "--episodes", "1", "--max-steps", "10", "--render", "ascii",
                   "--render-every", "5").out
    frames = [frame for frame in out.split("\n\n") if frame.startswith("step ")]
    assert [frame.splitlines()[0].split()[1] for frame in frames] == ["0/10", "5/10", "10/10"]
    for frame in frames:
        lines = frame.splitlines()
        grid = lines[1:18]
        assert grid[0] == "#" * 17 and grid[-1] == "#" * 17  # the border
        assert all(len(row) == 17 and row[0] == "#" and row[-1] == "#" for row in grid)
        assert sorted(c for row in grid for c in row if c.isdigit()) == ["0", "1", "2", "3"]
        assert "A" in "".join(grid) and lines[18] == "0-3 agents  # wall  A altar  . empty"
    assert "fast on heart, 1 episodes x 4 agents" in out  # the summary follows the frames

    captured = run_eval(capsys, heart_component_run, "--episodes", "1", "--max-steps", "4", "--render", "ascii",
                        "--json")
    assert json.loads(captured.out)["mean_length"] == 4  # with --json the frames go to stderr
    assert sum(line.startswith("step ") for line in captured.err.splitlines()) == 5


def test_gif_and_png_strip_draw_the_agents_episode(heart_component_run, capsys, tmp_path):
    from PIL import Image

    report = eval_json(capsys, heart_component_run, "--episodes", "1", "--max-steps", "10", "--gif",
                       tmp_path / "episode.gif", "--render-every", "5")
    assert report["picture"] == str(tmp_path / "episode.gif")
    with Image.open(tmp_path / "episode.gif") as gif:
        assert gif.n_frames == 3  # steps 0, 5 and 10
        frame = gif.convert("RGB")
        # The 17x17 map (border included) in 10-pixel cells under a 16-pixel header, then the legend.
        assert frame.width >= 170 and frame.height > 16 + 170
        assert frame.getpixel((5, 16 + 5)) == (64, 64, 64)  # the corner cell is wall
    run_eval(capsys, heart_component_run, "--episodes", "1", "--max-steps", "10", "--gif", tmp_path / "strip.png")
    with Image.open(tmp_path / "strip.png") as strip:
        assert strip.width > 8 * 170  # eight frames side by side
    assert main(["eval", str(heart_component_run), "--gif", str(tmp_path / "x.jpg")]) == 2
    assert "--gif takes a .gif or .png" in capsys.readouterr().err


def test_render_symbols():
    from metta_agent.render import agent_symbol, object_symbols, render_grid

    symbols = object_symbols(["agent", "wall", "altar", "mine_red", "", "generator_red", "mill"])
    assert symbols == {"wall": "#", "altar": "A", "mine_red": "M", "generator_red": "G", "mill": "I"}
    assert [agent_symbol(i) for i in (0, 9, 10, 35, 36)] == ["0", "9", "a", "z", "@"]
    objects = {1: {"type_name": "wall", "r": 0, "c": 0}, 2: {"type_name": "altar", "r": 1, "c": 1},
               3: {"type_name": "agent", "agent_id": 2, "r": 1, "c": 2}}
    assert render_grid(objects, 2, 3, symbols) == ["#..", ".A2"]


def test_eval_reports_the_baselines_with_standard_errors(heart_component_run, capsys):
    report = eval_json(capsys, heart_component_run, "--episodes", "3", "--seed", "2")
    for prefix in ("", "random_", "scripted_"):
        for stat in ("return", "length", "hearts"):
            assert math.isfinite(report[f"{prefix}mean_{stat}"]), prefix + stat
            assert report[f"{prefix}mean_{stat}_stderr"] >= 0, prefix + stat
    assert report["mean_length_stderr"] == 0.0  # every episode runs to the time limit
    # The scripted policy is the bar: far above random play on the heart game.
    assert report["scripted_mean_hearts"] > 5 * report["random_mean_hearts"]
    text = run_eval(capsys, heart_component_run, "--episodes", "2").out
    assert "scripted" in text and "+-" in text


def test_standard_error_is_taken_over_episodes():
    from metta_agent.evaluate import summarize

    episodes = [[{"episode_return": 1.0}, {"episode_return": 3.0}], [{"episode_return": 4.0}, {"episode_return": 4.0}]]
    summary = summarize(episodes)
    assert summary["mean_return"] == 3.0  # episode means 2 and 4
    assert summary["mean_return_stderr"] == pytest.approx(1.0)  # std([2, 4], ddof=1) / sqrt(2)
