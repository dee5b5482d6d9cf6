"""Our agents through mettagrid's own policy interface, loader, runners and submission folders (public API only,
on the real engine; ``max_action_time_ms`` is generous because the runner silently turns late actions into noop)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from mettagrid.policy.loader import initialize_or_load_policy
from mettagrid.policy.policy import AgentPolicy, MultiAgentPolicy
from mettagrid.policy.policy_env_interface import PolicyEnvInterface
from mettagrid.policy.policy_spec import PolicySpec
from mettagrid.policy.prepare_policy_spec import load_policy_spec_from_path
from mettagrid.runner.rollout import run_episode_local, single_episode_rollout
from tensordict import TensorDict

from metta_agent import contract as keys
from metta_agent.agent.loading import load_agent
from metta_agent.cli import main
from metta_agent.config import build_config
from metta_agent.env.info import EnvInfo
from metta_agent.errors import UsageError
from metta_agent.games import make_game
from metta_agent.mettagrid_policy import CLASS_PATH
from metta_agent.trainer.trainer import Trainer

TIMEOUT_MS = 10_000
MAX_STEPS = 60


def train_run(run_dir: Path, seed: int) -> Path:
    config = build_config([{"game": {"name": "heart", "max_steps": MAX_STEPS},
                            "trainer": {"num_envs": 4, "batch_size": 512, "minibatch_size": 256, "bptt_horizon": 16,
                                        "total_agent_steps": 1024, "update_epochs": 1, "eval_interval": 0,
                                        "seed": seed}}])
    Trainer(config, run_dir, show_progress=False).train()
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("mettagrid_policy")
    return train_run(root / "a", seed=1), train_run(root / "b", seed=2)


def game():
    return make_game("heart", max_steps=MAX_STEPS)


def interface():
    return PolicyEnvInterface.from_mg_cfg(game())


def spec(run: Path, **init_kwargs) -> PolicySpec:
    return PolicySpec(class_path=CLASS_PATH, data_path=str(run), init_kwargs=init_kwargs)


def play(policies, assignments, seed=0):
    result, _ = single_episode_rollout(policies, assignments, game(), seed=seed, max_action_time_ms=TIMEOUT_MS,
                                       render_mode="none", autostart=True, capture_replay=False)
    assert result.steps == MAX_STEPS and not any(result.action_timeouts)
    return result


def test_plays_alone_and_beside_mettagrid_policies_and_another_checkpoint(runs):
    a, b = runs
    ours = initialize_or_load_policy(interface(), spec(a))
    other = initialize_or_load_policy(interface(), spec(b))
    random = initialize_or_load_policy(interface(), PolicySpec(class_path="random"))
    assert len(play([ours], [0, 0, 0, 0]).rewards) == 4
    play([ours, random], [0, 1, 0, 1])
    play([ours, other], [1, 0, 0, 1])
    result, _ = run_episode_local(policy_specs=[spec(a), PolicySpec(class_path="noop")], assignments=[0, 1, 1, 0],
                                  env=game(), seed=3, max_action_time_ms=TIMEOUT_MS)
    assert result.steps == MAX_STEPS


class Recorder(MultiAgentPolicy):
    """Seats every agent at ``inner`` and records what each sees and does (mettagrid's public API only)."""

    def __init__(self, inner: MultiAgentPolicy):
        super().__init__(inner.policy_env_info)
        self.inner, self.steps = inner, []

    def agent_policy(self, agent_id: int) -> AgentPolicy:
        return RecordingSeat(self, self.inner.agent_policy(agent_id))


class RecordingSeat(AgentPolicy):
    def __init__(self, recorder: Recorder, seat: AgentPolicy):
        super().__init__(seat.policy_env_info)
        self.recorder, self.seat = recorder, seat

    def can_step_group(self, policies):
        return self.seat.can_step_group([p.seat for p in policies])

    def step_group(self, observations):
        actions = self.seat.step_group(observations)
        num_tokens = self.policy_env_info.observation_shape[0]
        tokens = np.full((len(observations), num_tokens, 3), 255, dtype=np.uint8)
        for row, (_, obs) in enumerate(observations):
            if obs.tokens:
                tokens[row, : len(obs.tokens)] = [t.raw_token for t in obs.tokens]
        self.recorder.steps.append(([i for i, _ in observations], tokens, [a.name for a in actions]))
        return actions

    def reset(self, simulation=None):
        self.seat.reset(simulation)


def test_runner_actions_equal_the_agents_on_the_recorded_stream(runs):
    a, _ = runs
    recorder = Recorder(initialize_or_load_policy(interface(), spec(a, greedy=True)))
    play([recorder], [0, 0, 0, 0], seed=4)
    assert len(recorder.steps) == MAX_STEPS and all(ids == [0, 1, 2, 3] for ids, _, _ in recorder.steps)
    # The same observations and reset points (the episode's first step) through MettaAgent itself.
    agent = load_agent(str(a))
    env = EnvInfo.from_game(game())
    agent.initialize_to_environment(env.features, env.action_names)
    agent.eval()
    agent.greedy = True
    for step, (_, tokens, names) in enumerate(recorder.steps):
        td = TensorDict({keys.ENV_OBS: torch.from_numpy(tokens),
                         keys.STARTS: torch.full((4,), step == 0)}, batch_size=[4])
        with torch.inference_mode():
            actions = agent(td)[keys.ACTIONS].numpy()
        assert [env.action_names[i] for i in actions] == names, f"step {step}"
    # step_batch, the raw-buffer path, acts alike on the same stream.
    batch = initialize_or_load_policy(interface(), spec(a, greedy=True))
    batch.reset()
    for step, (_, tokens, names) in enumerate(recorder.steps):
        out = np.zeros(4, dtype=np.int32)
        batch.step_batch(tokens, out)
        assert [env.action_names[i] for i in out] == names, f"step {step}"


def test_save_and_load_policy_data_round_trip(runs, tmp_path):
    a, _ = runs
    policy = initialize_or_load_policy(interface(), spec(a, greedy=True))
    policy.save_policy_data(str(tmp_path / "agent.pt"))
    again = initialize_or_load_policy(interface(), PolicySpec(class_path=CLASS_PATH,
                                                              data_path=str(tmp_path / "agent.pt"),
                                                              init_kwargs={"greedy": True}))
    for left, right in zip(policy.network().state_dict().values(), again.network().state_dict().values()):
        torch.testing.assert_close(left, right, rtol=0, atol=0)


def test_exported_folder_loads_back_and_plays(runs, tmp_path, capsys):
    a, _ = runs
    folder = tmp_path / "submission"
    assert main(["export", str(a), str(folder), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["source_bundled"] is False
    assert sorted(p.name for p in folder.iterdir()) == ["agent.pt", "cogames.toml", "policy_spec.json"]
    assert json.loads((folder / "policy_spec.json").read_text())["data_path"] == "agent.pt"
    loaded = load_policy_spec_from_path(folder)
    assert loaded.class_path == CLASS_PATH and loaded.policy_env_interface is not None
    policy = initialize_or_load_policy(loaded.policy_env_interface, loaded)
    play([policy], [0, 0, 0, 0])
    assert main(["export", str(a), str(folder)]) == 2  # never over an earlier export
    assert "already exists" in capsys.readouterr().err


def test_bad_specs_and_mismatched_actions_are_one_line_errors(runs, tmp_path):
    a, _ = runs
    with pytest.raises(UsageError, match="does not exist|no such"):
        initialize_or_load_policy(interface(), spec(tmp_path / "missing"))
    wider = game()
    wider.game.actions.move.allowed_directions = ["north", "south", "west", "east", "northeast"]
    with pytest.raises(UsageError, match="never trained with move_northeast"):
        initialize_or_load_policy(PolicyEnvInterface.from_mg_cfg(wider), spec(a))
    with pytest.raises(UsageError, match="unknown: colour"):
        initialize_or_load_policy(interface(), spec(a, colour="red"))


def test_head_to_head_seats_alternate_between_episodes():
    from metta_agent.head_to_head import seats

    assert seats(2, 4).tolist() == [True, False, True, False, False, True, False, True]


def test_eval_against_another_policy_in_the_same_episodes(runs, capsys):
    a, b = runs
    assert main(["eval", str(a), "--against", "mettagrid:noop", "--episodes", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["policies"][1] == "mettagrid:noop"
    assert result["second"]["hearts"]["mean"] == 0.0  # agents that never move never reach an altar
    difference = result["difference"]["return"]
    assert difference["mean"] == pytest.approx(result["first"]["return"]["mean"] - result["second"]["return"]["mean"])
    assert difference["ci95"][0] <= difference["mean"] <= difference["ci95"][1]
    for other in ("random", "scripted", str(b), "mettagrid.policy.random_agent.RandomMultiAgentPolicy"):
        assert main(["eval", str(a), "--against", other, "--episodes", "2", "--json"]) == 0, other
        assert set(json.loads(capsys.readouterr().out)["first"]) >= {"return", "hearts"}


@pytest.mark.parametrize("other,message", [("nonsense", "unknown --against 'nonsense'"),
                                           ("mettagrid:nosuch", "mettagrid policy 'nosuch' does not load")])
def test_eval_against_bad_input_is_one_line_and_exit_code_2(runs, other, message, capsys):
    assert main(["eval", str(runs[0]), "--against", other, "--episodes", "2"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_render_unicode_plays_in_a_terminal_and_refuses_without_one(runs, tmp_path, capsys):
    """mettagrid's viewer under a pseudo-terminal: it starts paused, a space starts it, the episode ends."""
    import os
    import pty
    import select
    import subprocess
    import sys
    import time

    a, _ = runs
    leader, follower = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "metta_agent.cli", "eval", str(a), "--render", "unicode",
                                "--max-steps", "5"], stdin=follower, stdout=follower, stderr=follower, close_fds=True)
    os.close(follower)
    output = b""
    played = False
    deadline = time.monotonic() + 300  # a failsafe only: the loop ends when the process does
    while process.poll() is None and time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.2)
        if ready:
            try:
                output += os.read(leader, 65536)
            except OSError:
                break
        if not played and b"PAUSED" in output:
            os.write(leader, b" ")  # the viewer starts paused: a space plays
            played = True
    process.wait(timeout=60)
    while True:  # what is left in the terminal
        ready, _, _ = select.select([leader], [], [], 0.1)
        if not ready:
            break
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    os.close(leader)
    assert process.returncode == 0, output[-2000:]
    assert b"episode over: mean return" in output
    # Without a terminal: one line, exit code 2 (capsys replaces stdin and stdout).
    assert main(["eval", str(a), "--render", "unicode"]) == 2
    assert "needs a terminal" in capsys.readouterr().err
