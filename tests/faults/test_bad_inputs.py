"""Bad settings end in one line on stderr and exit code 2, before anything is written."""

from __future__ import annotations

import pytest

from metta_agent.cli import main

BAD_SETTINGS = [
    ["--set", "trainer.lr=-1"],
    ["--set", "trainer.lr=.nan"],
    ["--set", "trainer.batch_size=.inf"],
    ["--set", "trainer.batch_size=.nan"],
    ["--set", "trainer.gamma=1.5"],
    ["--set", "trainer.gae_lambda=-0.1"],
    ["--set", "trainer.max_grad_norm=0"],
    ["--set", "trainer.torch_threads=-4"],
    ["--set", "trainer.env_workers=-1"],
    ["--set", "trainer.eval_interval=-1"],
    ["--set", "trainer.adam_beta2=1"],
    ["--set", "agent.kwargs=5"],
    ["--set", "game.max_steps=0"],
    ["--set", "trainer.device=tpu"],
    ["--set", "trainer.device=cuda:x"],
    ["--set", "trainer.lr_schedule=step"],
    ["--set", "trainer.compile_mode=fastest"],
    ["--set", "trainer.num_envs=0"],
    ["--set", "trainer.batch_size=1000"],
    ["--set", "trainer.minibatch_size=5000"],
    ["--set", "trainer.bptt_horizon=0"],
    ["--set", "trainer.update_epochs=0"],
    ["--set", "trainer.keep_checkpoints=0"],
    ["--set", "trainer.checkpoint_interval=-2"],
    ["--set", "trainer.no_such_key=1"],
    ["--set", "trainer.lr=fast"],
    ["--set", "trainer.norm_adv=maybe"],
    ["--set", "trainer.seed=-1"],
    ["--set", "trainer.ent_coef=-0.1"],
    ["--set", "trainer.clip_coef=0"],
    ["--set", "trainer.gamma=0"],
    ["--set", "trainer.lr_final_ratio=2"],
    ["--set", "trainer.total_agent_steps=1.5"],
    ["--set", "trainer.overlap=true"],
    ["--set", "trainer.eval_episodes=0"],
    ["--set", "agent.clip_range=-1"],
    ["--set", "agent.l2_init_scale=-1"],
    ["--set", "agent.analyze_weights_interval=-1"],
    ["--set", "agent.no_such_parameter=3"],
    ["--set", "agent.hidden_size=-8"],
    ["--set", "game.max_steps=-3"],
    ["--set", "game.name=chess"],
    ["--set", "nodot=1"],
    ["--set", "trainer.lr"],
    ["--set", "tournament.rounds=3"],
    ["--agent", "no_such_architecture"],
    ["--agent", "missing.yaml"],
    ["--nproc-per-node", "0"],
    ["--steps", "-5"],
    ["--steps", "0"],
]


@pytest.mark.parametrize("bad", BAD_SETTINGS, ids=lambda bad: " ".join(bad))
def test_bad_setting_is_one_line_and_writes_nothing(bad, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", "--game", "heart", *bad, "--run-dir", str(run_dir), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and err.startswith("error: "), err
    assert not run_dir.exists(), "a refused run leaves no directory behind"


@pytest.mark.parametrize("text", ["trainer: 5\n", "agent: [1, 2]\n", "agent: {kwargs: 5}\n", "game: nope\n"])
def test_config_sections_must_be_mappings(text, tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    code = main(["train", "--config", str(config), "--steps", "100", "--run-dir", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_files_that_are_not_utf8_and_unusable_run_directories(tmp_path, capsys):
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe trainer: {}\n")
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    cases = [
        (["train", "--config", str(binary), "--run-dir", str(tmp_path / "r1")], "not UTF-8"),
        (["train", "--game", "heart", "--agent", str(binary), "--run-dir", str(tmp_path / "r2")], "not UTF-8"),
        (["train", "--game", "heart", "--run-dir", str(a_file)], str(a_file)),
        (["train", "--game", "heart", "--run-dir", "/proc/metta-agent-test/run"], "/proc/metta-agent-test"),
    ]
    for argv, expected in cases:
        assert main([*argv, "--steps", "100", "--quiet"]) == 2, argv
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and expected in err, (argv, err)


BAD_COMMANDS = [
    ["eval", "/no/such/run"],
    ["eval", "{tmp}"],
    ["plot", "/no/such/run", "--out", "{tmp}/x.png"],
    ["train", "--resume", "--game", "heart"],
    ["train", "--resume", "--run-dir", "{tmp}"],
    ["train", "--config", "/no/such/config.yaml"],
    ["train", "--nnodes", "2", "--game", "heart"],
    ["games", "--json", "--nothing"],
]


@pytest.mark.parametrize("argv", BAD_COMMANDS, ids=lambda argv: " ".join(argv))
def test_bad_command_is_one_line(argv, tmp_path, capsys):
    assert main([arg.format(tmp=tmp_path) for arg in argv]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
