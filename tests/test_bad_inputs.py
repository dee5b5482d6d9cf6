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
