"""``metta-agent sweep``: workers sharing one study, a worker killed mid-trial, bad spaces, best.yaml.

Trials are tiny heart-game runs (16 agents, 256-step epochs, 40-step episodes) so the whole file stays well
under two minutes on a loaded 2-core machine. Where a real process is needed (several workers, SIGKILL), the
tests start ``python -m metta_agent.cli sweep`` and wait for events (a file appearing, a process exiting).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from metta_agent.cli import build_parser, main, resolve_run_config
from metta_agent.config import build_config, load_yaml
from metta_agent.sweep import check_space_against_config, load_space

TINY = ["--game", "heart", "--set", "game.max_steps=40", "--set", "trainer.num_envs=4",
        "--set", "trainer.batch_size=256", "--set", "trainer.minibatch_size=64", "--set", "trainer.bptt_horizon=16",
        "--set", "trainer.eval_interval=2", "--set", "trainer.eval_episodes=2"]
# Two workers on two cores: one torch thread each, or their OpenMP threads fight over the cores.
ONE_THREAD = ["--set", "trainer.torch_threads=1"]
SPACE = {
    "trainer.lr": {"type": "float", "low": 1.0e-4, "high": 3.0e-3, "log": True},
    "trainer.update_epochs": {"type": "int", "low": 1, "high": 2},
}
PROCESS_TIMEOUT = 100  # seconds: a hung worker fails the test instead of the suite


def write_space(path: Path, space: dict | str = SPACE) -> Path:
    path.write_text(space if isinstance(space, str) else yaml.safe_dump(space))
    return path


def sweep_argv(tmp_path: Path, study: str, trials: int, steps: int, *extra: str,
               space: Path | None = None) -> list[str]:
    if space is None:
        space = tmp_path / "space.yaml"
        if not space.exists():
            write_space(space)
    return ["sweep", "--space", str(space), "--study", study, "--trials", str(trials), "--steps-per-trial",
            str(steps), "--sweep-dir", str(tmp_path / study), *TINY, *extra]


def start_worker(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "metta_agent.cli", *argv, *ONE_THREAD],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(worker: subprocess.Popen) -> tuple[str, str]:
    out, err = worker.communicate(timeout=PROCESS_TIMEOUT)
    assert worker.returncode == 0, err
    return out, err


def load_trials(tmp_path: Path, study: str) -> list[optuna.trial.FrozenTrial]:
    storage = f"sqlite:///{tmp_path / study / 'study.db'}"
    return optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)


def counted(trials) -> list[optuna.trial.FrozenTrial]:
    """The trials that fill the study's budget: complete or pruned (surplus trials are failed)."""
    return [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def trials_reported(stderr: str) -> list[int]:
    """Numbers of the trials a worker ran, from its progress lines."""
    return [int(n) for n in re.findall(r"^trial (\d+) (?:COMPLETE|PRUNED)", stderr, flags=re.MULTILINE)]


def wait_for(condition, worker: subprocess.Popen, what: str) -> None:
    """Poll ``condition`` until it holds; fail if the worker exits first or it takes far too long."""
    deadline = time.monotonic() + PROCESS_TIMEOUT
    while not condition():
        if worker.poll() is not None:
            pytest.fail(f"the worker exited ({worker.returncode}) before {what}: {worker.stderr.read()}")
        if time.monotonic() > deadline:
            worker.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_two_workers_share_one_study(tmp_path):
    argv = sweep_argv(tmp_path, "shared", 4, 512)
    workers = [start_worker(argv), start_worker(argv)]
    outputs = [finish(worker) for worker in workers]

    trials = load_trials(tmp_path, "shared")
    done = counted(trials)
    assert len(done) == 4, [(t.number, t.state) for t in trials]
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    # The only failed trials are ones a worker was handed after the other one had filled the last slot.
    assert all(t.user_attrs.get("surplus") for t in trials if t.state == TrialState.FAIL)
    # Each trial ran in exactly one worker; together they ran the study's 4, not 4 each. (Which worker ran
    # how many depends on how fast each one started, so it is not asserted.)
    ran = [trials_reported(err) for _, err in outputs]
    assert sorted(ran[0] + ran[1]) == sorted(t.number for t in done)
    run_dirs = [Path(t.user_attrs["run_dir"]) for t in done]
    assert len(set(run_dirs)) == 4
    assert all((run_dir / "metrics.jsonl").is_file() for run_dir in run_dirs)
    assert len({tuple(sorted(t.params.items())) for t in done}) == 4
    # Both tables list the whole study.
    for out, _ in outputs:
        assert all(re.search(rf"^\s+{t.number}\s+{t.state.name}", out, re.MULTILINE) for t in done)


def test_a_killed_workers_trial_fails_and_the_study_completes(tmp_path, capsys):
    # 2 eval points per trial (1024 steps): the worker is killed after the first epoch, mid-trial.
    argv = sweep_argv(tmp_path, "resume", 2, 1024, "--heartbeat-interval", "1")
    first = start_worker(argv)
    metrics = tmp_path / "resume" / "trials" / "trial_0000" / "metrics.jsonl"
    wait_for(lambda: metrics.is_file() and metrics.stat().st_size > 0, first, "trial 0 logged an epoch")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=PROCESS_TIMEOUT)
    assert load_trials(tmp_path, "resume")[0].state == TrialState.RUNNING

    # The resumed worker need not be a process of its own: this one finds trial 0 stale and takes it over.
    assert main(argv) == 0
    out = capsys.readouterr().out

    trials = load_trials(tmp_path, "resume")
    killed = trials[0]
    assert killed.state == TrialState.FAIL
    assert len(counted(trials)) == 2
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retries) == 1 and retries[0].params == killed.params
    assert retries[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert f"worker lost; retried as trial {retries[0].number}" in out


@pytest.mark.parametrize(
    "space, extra, message",
    [
        ("- trainer.lr\n- trainer.gamma\n", [], "must hold a mapping"),
        ("trainer.lr: {type: float, low: 1.0e-4\n", [], "is not valid YAML"),
        (None, [], "does not exist"),
        ({"trainer.lr": {"type": "uniform", "low": 0.1, "high": 0.2}}, [], "unknown type 'uniform'"),
        ({"trainer.lr": {"type": "float", "low": 0.1, "hi": 0.2}}, [], "unknown field 'hi' for type float"),
        ({"trainer.lr": {"type": "float", "low": 0.2, "high": 0.1}}, [], "low 0.2 must be below high 0.1"),
        ({"trainer.lr": {"type": "float", "low": "small", "high": 0.1}}, [], "low must be a number"),
        ({"trainer.lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}, [], "log scale needs low > 0"),
        ({"trainer.minibatch_size": {"type": "categorical", "choices": []}}, [], "non-empty list of choices"),
        ({"trainer.bogus": {"type": "float", "low": 0.1, "high": 0.2}}, [], "unknown config key 'trainer.bogus'"),
        ({"optimizer.lr": {"type": "float", "low": 0.1, "high": 0.2}}, [], "unknown section 'optimizer'"),
        ({"agent.bogus": {"type": "int", "low": 1, "high": 2}}, [], "unknown agent parameter 'bogus'"),
        ({"trainer.update_epochs": {"type": "float", "low": 1, "high": 4}}, [], "takes whole numbers"),
        ({"trainer.total_agent_steps": {"type": "int", "low": 1, "high": 4}}, [], "--steps-per-trial"),
        (SPACE, ["--set", "trainer.eval_interval=0"], "trainer.eval_interval must be a positive"),
        (SPACE, ["--trials", "0"], "--trials must be at least 1"),
    ],
)
def test_a_bad_space_is_one_line_and_exit_code_2(tmp_path, capsys, space, extra, message):
    space_file = tmp_path / "bad-space.yaml"
    if space is not None:
        write_space(space_file, space)
    code = main([*sweep_argv(tmp_path, "bad", 2, 512, space=space_file), *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "bad").exists()  # nothing is created before the input is checked


def test_best_yaml_is_accepted_by_train(tmp_path, capsys):
    assert main([*sweep_argv(tmp_path, "best", 2, 512), "--json", "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    result = json.loads(out)
    best = result["best"]
    assert best is not None and [row["state"] for row in result["trials"]] == ["COMPLETE", "COMPLETE"]
    path = Path(result["best_config"])
    assert path == tmp_path / "best" / "best.yaml"

    config = build_config([load_yaml(path)])
    assert config.trainer.lr == best["params"]["trainer.lr"]
    assert config.trainer.update_epochs == best["params"]["trainer.update_epochs"]
    assert config.game.name == "heart" and config.trainer.num_envs == 4 and config.trainer.eval_interval == 2
    # The trial trained 512 steps; best.yaml keeps the full run's length for 'train --config'.
    assert config.trainer.total_agent_steps == build_config([]).trainer.total_agent_steps
    train_config = resolve_run_config(build_parser().parse_args(["train", "--config", str(path)]))
    assert train_config.to_dict() == config.to_dict()
    train_config.validate(agents_per_env=4)


def test_an_invalid_trial_config_is_pruned_and_the_worker_goes_on(tmp_path, capsys):
    # 96 is a multiple of bptt_horizon 16 but does not divide the batch of 256: every trial is refused.
    write_space(tmp_path / "space.yaml", {"trainer.minibatch_size": {"type": "categorical", "choices": [96]}})
    assert main(sweep_argv(tmp_path, "invalid", 2, 512)) == 0
    out, err = capsys.readouterr()
    assert [t.state for t in load_trials(tmp_path, "invalid")] == [TrialState.PRUNED, TrialState.PRUNED]
    assert "must be divisible by trainer.minibatch_size 96" in out and "no trial completed" in out
    assert len(trials_reported(err)) == 2
    assert not (tmp_path / "invalid" / "best.yaml").exists()

    # A worker joining the study must score trials as the study does.
    assert main([*sweep_argv(tmp_path, "invalid", 2, 512), "--objective", "return"]) == 2
    assert "was started with --objective hearts" in capsys.readouterr().err


def test_the_example_space_fits_the_arena():
    space = load_space(Path(__file__).parent.parent / "docs" / "sweep-space.example.yaml")
    assert {d.key for d in space} >= {"trainer.lr", "trainer.ent_coef", "trainer.gamma", "trainer.gae_lambda",
                                      "trainer.update_epochs", "trainer.minibatch_size", "trainer.clip_coef",
                                      "trainer.vf_coef"}
    check_space_against_config(space, [{"game": {"name": "arena"}}])
    arena = build_config([{"game": {"name": "arena"}}])
    for choice in next(d for d in space if d.key == "trainer.minibatch_size").choices:
        build_config([{"game": {"name": "arena"}, "trainer": {"minibatch_size": choice}}]).validate(24)
    assert arena.trainer.batch_size == 12288
