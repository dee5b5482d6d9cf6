"""VecEnv: batch layout, auto-reset, seeds, staggered starts, episode stats, worker processes."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
import time

import numpy as np
import pytest
from mettagrid.config.game_value import StatValue
from mettagrid.config.mettagrid_config import MettaGridConfig
from mettagrid.config.obs_config import ObsConfig
from mettagrid.config.reward_config import reward

from metta_agent.env import VecEnv
from metta_agent.seeding import episode_seed, first_episode_cutoff

A = 4  # agents per env in the test game


def small_game(max_steps: int = 20, rewarded: bool = True) -> MettaGridConfig:
    """4 agents in a walled 10x10 room; optionally 0.1 reward per successful move (so returns vary)."""
    cfg = MettaGridConfig.EmptyRoom(num_agents=A)
    cfg.game.actions.change_vibe.enabled = False
    cfg.game.episode_truncates = True
    cfg.game.max_steps = max_steps
    cfg.game.obs = ObsConfig(width=11, height=11, num_tokens=200)
    if rewarded:
        cfg.game.agent.rewards = {"moves": reward(StatValue(name="action.move.success"), weight=0.1)}
    return cfg


STAT_KEYS = {"moves": "action.move.success", "absent": "no.such.stat"}


def completion_pct(v: VecEnv, obs: np.ndarray) -> np.ndarray:
    """Value of each row's episode_completion_pct global token ([N], -1 if absent)."""
    fid = next(f.id for f in v.info.features if f.name == "episode_completion_pct")
    hit = (obs[:, :, 0] == 0xFE) & (obs[:, :, 1] == fid)
    return np.where(hit.any(1), (obs[:, :, 2].astype(np.int64) * hit).sum(1), -1)


def random_actions(v: VecEnv, steps: int, seed: int = 123) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, len(v.info.action_names), (steps, v.num_agents))


def rollout(v: VecEnv, actions: np.ndarray) -> tuple[list[tuple[np.ndarray, ...]], list[dict[str, float]]]:
    """Copies of (obs, rewards, terminals, truncations) for the reset and every step, plus all stats."""
    out = [(v.reset().copy(),)]
    stats = []
    for a in actions:
        out.append(tuple(x.copy() for x in v.step(a)))
        stats.extend(v.pop_episode_stats())
    return out, stats


def assert_same_rollouts(r1, r2) -> None:
    (steps1, stats1), (steps2, stats2) = r1, r2
    assert len(steps1) == len(steps2)
    for t, (s1, s2) in enumerate(zip(steps1, steps2)):
        for x1, x2 in zip(s1, s2):
            assert np.array_equal(x1, x2), f"step {t} differs"
    assert stats1 == stats2


# ----------------------------------------------------------------------------------------------------


def test_shapes_and_dtypes():
    with VecEnv(small_game(), num_envs=3, seed=0, stat_keys=STAT_KEYS) as v:
        assert (v.num_envs, v.agents_per_env, v.num_agents) == (3, A, 3 * A)
        assert v.obs_shape == (200, 3)
        assert v.info.action_names[0] == "noop" and "move_north" in v.info.action_names
        assert not any(n.startswith("change_vibe") for n in v.info.action_names)
        assert v.info.agents_per_env == A and v.info.num_tokens == 200
        obs = v.reset()
        assert obs.shape == (3 * A, 200, 3) and obs.dtype == np.uint8
        # The reset wrote real first observations: global tokens first, completion 0, then padding.
        assert (obs[:, 0, 0] == 0xFE).all()
        assert (completion_pct(v, obs) == 0).all()
        assert (obs[:, -1] == 0xFF).all()
        o, r, te, tr = v.step(np.zeros(v.num_agents, dtype=np.int64))
        assert o.shape == (3 * A, 200, 3) and o.dtype == np.uint8
        assert r.shape == te.shape == tr.shape == (3 * A,)
        assert r.dtype == np.float32 and te.dtype == np.bool_ and tr.dtype == np.bool_
        # Zero copy: the same internal buffers every step.
        o2, r2, te2, tr2 = v.step(np.zeros(v.num_agents, dtype=np.int32))
        assert o2 is o and r2 is r and te2 is te and tr2 is tr


def test_auto_reset_semantics():
    with VecEnv(small_game(max_steps=5), num_envs=2, seed=0, stagger_first_episodes=False, stat_keys=STAT_KEYS) as v:
        obs = v.reset()
        first_obs = obs.copy()
        assert (completion_pct(v, obs) == 0).all()
        acts = random_actions(v, 12)
        pct = []
        for t in range(12):
            obs, r, te, tr = v.step(acts[t])
            pct.append(completion_pct(v, obs)[0])
            stats = v.pop_episode_stats()
            if t in (4, 9):  # steps 5 and 10 end episodes
                assert tr.all() and not te.any()
                # ...and obs is already the first observation of the next episode.
                assert (completion_pct(v, obs) == 0).all()
                assert len(stats) == v.num_agents
                assert all(d["episode_length"] == 5 for d in stats)
                assert set(stats[0]) == {"episode_return", "episode_length", "moves", "absent"}
                assert all(d["absent"] == 0.0 for d in stats)
            else:
                assert not tr.any() and not te.any() and stats == []
        assert pct == [51, 102, 153, 204, 0] * 2 + [51, 102]
        # The new episode is a new map (new seed): its first observation differs from the first episode's.
        v.reset()
        for t in range(5):
            obs, *_ = v.step(acts[t])
        assert not np.array_equal(obs, first_obs)


def test_staggered_first_episodes():
    max_steps, E, seed = 30, 8, 5
    with VecEnv(small_game(max_steps), num_envs=E, seed=seed, stat_keys=STAT_KEYS) as v:
        v.reset()
        ends: list[list[int]] = [[] for _ in range(E)]
        for t, a in enumerate(random_actions(v, 2 * max_steps + 1), start=1):
            _, _, te, tr = v.step(a)
            done = (te | tr).reshape(E, A)
            assert (done.all(1) == done.any(1)).all()  # all agents of an env end together
            for e in np.flatnonzero(done.all(1)):
                ends[e].append(t)
        cutoffs = [first_episode_cutoff(seed, e, max_steps) for e in range(E)]
        assert [x[0] for x in ends] == cutoffs
        assert all(1 <= c <= max_steps for c in cutoffs)
        assert len(set(cutoffs)) > 1
        for e in range(E):  # later episodes are full length
            assert ends[e][1] - ends[e][0] == max_steps
        lengths = sorted({d["episode_length"] for d in v.pop_episode_stats()})
        assert max_steps in lengths


def test_no_stagger_ends_together():
    with VecEnv(small_game(10), num_envs=4, seed=1, stagger_first_episodes=False) as v:
        v.reset()
        for t, a in enumerate(random_actions(v, 10), start=1):
            _, _, _, tr = v.step(a)
            assert tr.all() == (t == 10) and tr.any() == (t == 10)


def test_determinism_and_seeds():
    game = small_game(max_steps=8)
    acts = np.random.default_rng(0).integers(0, 5, (30, 3 * A))
    with VecEnv(game, 3, seed=7, stat_keys=STAT_KEYS) as v1, VecEnv(game, 3, seed=7, stat_keys=STAT_KEYS) as v2:
        assert_same_rollouts(rollout(v1, acts), rollout(v2, acts))
    with VecEnv(game, 3, seed=7) as v1, VecEnv(game, 3, seed=8) as v2:
        o1, o2 = v1.reset(), v2.reset()
        assert not np.array_equal(o1, o2)  # other seed, other maps
        o1 = o1.reshape(3, A, *v1.obs_shape)
        assert not np.array_equal(o1[0], o1[1]) and not np.array_equal(o1[1], o1[2])  # maps differ per env
    seeds = {episode_seed(7, e, k) for e in range(3) for k in range(100)}
    assert len(seeds) == 300


def test_simulation_path_matches_fast_path():
    """Games needing mettagrid's Python handlers step through Simulation; both paths give the same data."""
    fast_game = small_game(max_steps=7)
    slow_game = small_game(max_steps=7)
    slow_game.game.end_episode_on_game_stats = {"no.such.stat": 1.0}  # forces the Simulation path, never fires
    with VecEnv(fast_game, 2, seed=4, stat_keys=STAT_KEYS) as v:
        acts = random_actions(v, 20)
        fast = rollout(v, acts)
    with VecEnv(slow_game, 2, seed=4, stat_keys=STAT_KEYS) as v:
        assert not v._group._games[0].fast
        slow = rollout(v, acts)
    assert_same_rollouts(fast, slow)


def test_episode_returns_are_summed_rewards():
    E = 3
    with VecEnv(small_game(max_steps=12), num_envs=E, seed=3, stat_keys=STAT_KEYS) as v:
        v.reset()
        ret = np.zeros(v.num_agents)
        length = np.zeros(E, dtype=int)
        checked = 0
        for a in random_actions(v, 40):
            _, r, te, tr = v.step(a)
            ret += r
            length += 1
            done_env = (te | tr).reshape(E, A).all(1)
            stats = v.pop_episode_stats()
            expected = []
            for e in np.flatnonzero(done_env):
                for i in range(A):
                    expected.append((ret[e * A + i], length[e]))
                ret[e * A : (e + 1) * A] = 0
                length[e] = 0
            assert len(stats) == len(expected)
            for d, (er, el) in zip(stats, expected):
                assert d["episode_return"] == pytest.approx(er, abs=1e-5)
                assert d["episode_length"] == el
                assert d["moves"] == pytest.approx(er / 0.1, abs=1e-3)  # engine stat agrees with reward
                checked += 1
        assert checked >= 3 * v.num_agents
        assert any(d > 0 for d in ret)


@pytest.mark.parametrize("num_workers", [2, 4])
def test_workers_match_serial(num_workers):
    game = small_game(max_steps=9)
    with VecEnv(game, 4, seed=11, num_workers=0, stat_keys=STAT_KEYS) as v:
        acts = random_actions(v, 40)
        serial = rollout(v, acts)
    with VecEnv(game, 4, seed=11, num_workers=num_workers, stat_keys=STAT_KEYS) as v:
        assert v.num_workers == num_workers
        parallel = rollout(v, acts)
    assert len(serial[1]) > 0
    assert_same_rollouts(serial, parallel)


def test_spawn_workers_match_serial():
    game = small_game(max_steps=6)
    with VecEnv(game, 3, seed=2, stat_keys=STAT_KEYS) as v:
        acts = random_actions(v, 15)
        serial = rollout(v, acts)
    with VecEnv(game, 3, seed=2, num_workers=2, stat_keys=STAT_KEYS, start_method="spawn") as v:
        assert_same_rollouts(serial, rollout(v, acts))


def test_close_leaves_no_children():
    v = VecEnv(small_game(), 4, seed=0, num_workers=2)
    pids = v._pool.pids
    assert len(pids) == 2
    v.reset()
    v.step(np.zeros(v.num_agents, dtype=np.int64))
    v.close()
    v.close()  # idempotent
    assert mp.active_children() == []
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with pytest.raises(RuntimeError):
        v.step(np.zeros(v.num_agents, dtype=np.int64))


def test_dead_worker_is_reported():
    v = VecEnv(small_game(), 4, seed=0, num_workers=2)
    v.reset()
    os.kill(v._pool.pids[1], signal.SIGKILL)
    with pytest.raises(RuntimeError, match="died"):
        for _ in range(3):
            v.step(np.zeros(v.num_agents, dtype=np.int64))
    v.close()
    assert mp.active_children() == []


def test_workers_die_with_parent():
    repo = str(Path(__file__).resolve().parents[2])  # the checkout
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {repo!r})
        from mettagrid.config.mettagrid_config import MettaGridConfig
        from metta_agent.env import VecEnv
        cfg = MettaGridConfig.EmptyRoom(num_agents=2)
        cfg.game.actions.change_vibe.enabled = False
        v = VecEnv(cfg, 2, num_workers=2)
        v.reset()
        print(" ".join(str(pid) for pid in v._pool.pids), flush=True)
        os._exit(0)  # no cleanup at all
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) == 2
    deadline = time.time() + 10
    alive = pids
    while alive and time.time() < deadline:
        alive = [p for p in alive if _alive(p)]
        time.sleep(0.05)
    assert alive == []


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_usage_errors():
    with VecEnv(small_game(), 2) as v:
        with pytest.raises(RuntimeError, match="reset"):
            v.step(np.zeros(v.num_agents, dtype=np.int64))
        v.reset()
        with pytest.raises(ValueError):
            v.step(np.zeros(v.num_agents + 1, dtype=np.int64))
    with pytest.raises(ValueError):
        VecEnv(small_game(), 0)
    with pytest.raises(ValueError):
        VecEnv(small_game(), 2, seed=-1)


def test_first_env_index_plays_the_envs_of_a_larger_batch():
    """Rank 1 of 2 (first_env_index 3) plays exactly envs 3..5 of one 6-env batch: same maps, same cut-offs."""
    game = small_game(max_steps=7)
    with VecEnv(game, 6, seed=5, stat_keys=STAT_KEYS) as whole:
        acts = random_actions(whole, 20)
        steps_whole, _ = rollout(whole, acts)
    with VecEnv(game, 3, seed=5, stat_keys=STAT_KEYS, first_env_index=3, num_workers=2) as upper:
        steps_upper, _ = rollout(upper, acts[:, 3 * A:])
    rows = slice(3 * A, 6 * A)
    for t, (s_whole, s_upper) in enumerate(zip(steps_whole, steps_upper)):
        for x_whole, x_upper in zip(s_whole, s_upper):
            assert np.array_equal(x_whole[rows], x_upper), f"step {t} differs"


def test_worker_groups_step_asynchronously_like_step():
    """Stepping two worker groups one after the other (double buffering) gives what step() gives."""
    game = small_game(max_steps=9)
    with VecEnv(game, 4, seed=3, stat_keys=STAT_KEYS) as v:
        acts = random_actions(v, 30)
        serial = rollout(v, acts)
    with VecEnv(game, 4, seed=3, num_workers=2, stat_keys=STAT_KEYS) as v:
        groups = v.worker_row_groups(2)
        assert groups == [slice(0, 2 * A), slice(2 * A, 4 * A)]
        out, stats = [(v.reset().copy(),)], []
        for a in acts:
            for rows in groups:
                v.step_async(a[rows], rows)
            step = [np.concatenate([x.copy() for x in parts]) for parts in zip(*(v.step_wait(r) for r in groups))]
            out.append(tuple(step))
            stats.extend(v.pop_episode_stats())
        with pytest.raises(RuntimeError, match="step_async"):
            v.step_wait(groups[0])
        v.step_async(acts[0][groups[0]], groups[0])
        with pytest.raises(RuntimeError, match="still stepping"):
            v.step_async(acts[0][groups[0]], groups[0])
        with pytest.raises(ValueError, match="whole workers"):
            v.step_async(acts[0][:A], slice(0, A))
        v.reset()  # finishes the step in flight first
    assert len(serial[1]) > 0
    assert_same_rollouts(serial, (out, stats))
