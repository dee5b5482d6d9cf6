import json
import subprocess
import sys

import pytest
import yaml

from metta_agent.cli import main
from metta_agent.config import build_config, parse_set

SMALL = ["--game", "heart", "--set", "trainer.num_envs=4", "--set", "trainer.batch_size=512",
         "--set", "trainer.minibatch_size=256", "--set", "trainer.bptt_horizon=16"]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "metta_agent.cli", *args], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--game", "nope"], "unknown game 'nope'"),
        (["train", "--agent", "nope"], "unknown agent 'nope'"),
        (["train", "--set", "trainer.bogus=1"], "unknown config key 'trainer.bogus'"),
        (["train", "--set", "trainer.batch_size=1000"], "must be divisible by trainer.bptt_horizon 64"),
        (["train", "--game", "heart", "--set", "trainer.minibatch_size=100"], "minibatch_size 100 must be divisible"),
        (["eval", "/no/such/run"], "does not exist"),
        (["train", "--steps", "ten"], "invalid int value"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(args, message, capsys, tmp_path):
    code = main(args + ["--run-dir", str(tmp_path / "run")] if args[0] == "train" else args)
    captured = capsys.readouterr()
    assert code == 2
    assert message in captured.err
    assert len(captured.err.strip().splitlines()) == 1
    assert "Traceback" not in captured.err


def test_existing_run_dir_is_an_error(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text("")
    assert main(["train", "--run-dir", str(tmp_path / "run")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_config_precedence_defaults_file_flags_set(tmp_path):
    from metta_agent.cli import build_parser, resolve_run_config

    config_file = tmp_path / "c.yaml"
    config_file.write_text(yaml.safe_dump({"game": {"name": "heart"}, "trainer": {"seed": 5, "lr": 0.1},
                                           "agent": {"clip_range": 0.3}}))
    args = build_parser().parse_args(["train", "--config", str(config_file), "--seed", "7",
                                      "--set", "trainer.lr=0.2", "--set", "agent.hidden_size=64"])
    config = resolve_run_config(args)
    assert config.game.name == "heart" and config.trainer.seed == 7 and config.trainer.lr == 0.2
    assert config.agent.clip_range == 0.3 and config.agent.kwargs == {"hidden_size": 64}
    assert config.trainer.batch_size == 8192  # the heart game's default geometry
    assert parse_set(["game.max_steps=40"]) == {"game": {"max_steps": 40}}
    assert build_config([parse_set(["trainer.norm_adv=false"])]).trainer.norm_adv is False


def test_train_writes_the_run_directory_then_eval_compares_with_random(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli("train", *SMALL, "--steps", "1024", "--run-dir", str(run_dir), "--json",
                     "--set", "trainer.checkpoint_interval=1", "--set", "trainer.keep_checkpoints=1")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["epochs"] == 2 and summary["agent_steps"] == 1024
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["trainer"]["batch_size"] == 512 and config["game"]["name"] == "heart"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]
    for key in ("agent_steps", "sps", "episode_return", "episode_length", "policy_loss", "value_loss", "entropy",
                "approx_kl", "clip_fraction", "explained_variance", "hearts", "ratio_dev_before_update"):
        assert key in rows[-1], key
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["epoch_000002.pt"]
    assert (run_dir / "curve.png").stat().st_size > 1000
    assert any((run_dir / "tensorboard").iterdir())

    result = run_cli("eval", str(run_dir), "--episodes", "2", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["game"] == "heart" and report["episodes"] == 2
    assert report["mean_return"] >= 0 and report["random_mean_return"] >= 0


def test_help_documents_every_command():
    result = run_cli("--help")
    for command in ("train", "eval", "games", "bench"):
        assert command in result.stdout
    result = run_cli("train", "--help")
    for flag in ("--agent", "--game", "--steps", "--run-dir", "--seed", "--config", "--set"):
        assert flag in result.stdout


def test_games_lists_both_games():
    result = run_cli("games", "--json")
    games = {row["name"]: row for row in json.loads(result.stdout)}
    assert games["arena"]["agents"] == 24 and games["heart"]["agents"] == 4


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    import signal
    import time

    run_dir = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "metta_agent.cli", "train", *SMALL, "--steps", "10000000",
                                "--run-dir", str(run_dir), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    epochs = [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()]
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert checkpoints[-1] == f"epoch_{epochs[-1]:06d}.pt"
    assert json.loads(stdout.strip().splitlines()[-1])["epochs"] == epochs[-1]
