"""Tests for metta_agent.games: the games build as specified and their reward chains work.

Rollouts use random actions with fixed seeds (map seed via ``with_map_seed``, engine seed via
``new_simulation``), so they are deterministic; a full arena episode takes well under a second.
"""

from __future__ import annotations

import numpy as np
import pytest
from mettagrid.policy.policy_env_interface import PolicyEnvInterface
from mettagrid.simulator import Simulator
from mettagrid.simulator.simulator import Simulation

from metta_agent.errors import UsageError
from metta_agent.games import (
    DEFAULT_GAME,
    GAME_NAMES,
    describe_game,
    game_stat_keys,
    make_game,
    with_map_seed,
)

EXPECTED_AGENTS = {"arena": 24, "arena_room": 24, "heart": 4}
EXPECTED_MAX_STEPS = {"arena": 1000, "arena_room": 1000, "heart": 200}
MOVE_ACTIONS = {"noop", "move_north", "move_south", "move_west", "move_east"}


def _random_episode(
    name: str, map_seed: int = 0, sim_seed: int = 0, max_steps: int | None = None
) -> Simulation:
    """Play one episode of ``name`` with uniform random actions; return the finished simulation."""
    cfg = with_map_seed(make_game(name, max_steps=max_steps), map_seed)
    num_actions = len(PolicyEnvInterface.from_mg_cfg(cfg).action_names)
    sim = Simulator().new_simulation(cfg, sim_seed)
    rng = np.random.default_rng(sim_seed)
    while not sim.is_done():
        sim._c_sim.actions()[:] = rng.integers(0, num_actions, cfg.game.num_agents)
        sim.step()
    return sim


def _stat_totals(sim: Simulation, name: str) -> dict[str, float]:
    """Sum each of the game's per-agent stats over agents (a missing key means 0)."""
    agents = sim.episode_stats["agent"]
    return {metric: sum(a.get(stat, 0.0) for a in agents) for metric, stat in game_stat_keys(name).items()}


def test_names_and_default() -> None:
    assert GAME_NAMES == ("arena", "arena_room", "heart")
    assert DEFAULT_GAME == "arena"


@pytest.mark.parametrize("name", GAME_NAMES)
def test_game_config(name: str) -> None:
    cfg = make_game(name)
    game = cfg.game
    assert game.num_agents == EXPECTED_AGENTS[name]
    assert game.max_steps == EXPECTED_MAX_STEPS[name]
    assert game.episode_truncates is True
    assert (game.obs.width, game.obs.height, game.obs.num_tokens) == (11, 11, 200)

    env = PolicyEnvInterface.from_mg_cfg(cfg)
    assert env.action_names[0] == "noop"
    assert set(env.action_names) == MOVE_ACTIONS
    assert env.vibe_action_names == []
    assert env.observation_shape == (200, 3)
    assert (env.obs_height, env.obs_width) == (11, 11)
    # Feature ids are contiguous, so F = max id + 1 = number of features.
    ids = [f.id for f in env.obs_features]
    assert ids == list(range(len(ids)))


def test_max_steps_override_and_validation() -> None:
    assert make_game("heart", max_steps=50).game.max_steps == 50
    for bad in (0, -3, 2.5, True):
        with pytest.raises(UsageError, match="max_steps"):
            make_game("heart", max_steps=bad)  # type: ignore[arg-type]


def test_make_game_returns_independent_configs() -> None:
    a, b = make_game("arena"), make_game("arena")
    a.game.num_agents = 3
    assert b.game.num_agents == 24


@pytest.mark.parametrize("bad", ["x", "", "Arena"])
def test_unknown_game_names_the_choices(bad: str) -> None:
    for call in (make_game, describe_game, game_stat_keys):
        with pytest.raises(UsageError) as info:
            call(bad)
        assert str(info.value) == f"unknown game '{bad}'; choose one of: arena, arena_room, heart"


def test_describe_game() -> None:
    arena = describe_game("arena")
    assert arena["name"] == "arena"
    assert arena["agents"] == 24
    assert arena["map"] == "2x2 x 25x25 (+6 border)"
    assert describe_game("arena_room")["map"] == "25x25 (+6 border)"
    assert set(arena["actions"]) == MOVE_ACTIONS
    assert arena["max_steps"] == 1000
    assert arena["num_features"] == len(make_game("arena").game.id_map().features())
    assert isinstance(arena["description"], str) and arena["description"]
    heart = describe_game("heart")
    assert heart["agents"] == 4 and heart["max_steps"] == 200
    assert heart["num_features"] < arena["num_features"]  # fewer resources, fewer features


def _object_counts(sim: Simulation, rows: range | None = None, cols: range | None = None) -> dict[str, int]:
    counts: dict[str, int] = {}
    for obj in sim.grid_objects().values():
        row, col = obj["location"][1], obj["location"][0]
        if (rows is None or row in rows) and (cols is None or col in cols):
            name = "agent" if "agent_id" in obj else obj["type_name"]
            counts[name] = counts.get(name, 0) + 1
    return counts


def test_arena_room_map_geometry() -> None:
    sim = Simulator().new_simulation(with_map_seed(make_game("arena_room"), 0), 0)
    assert (sim.map_width, sim.map_height) == (37, 37)  # 25 inner + 2 * 6 border
    counts = _object_counts(sim)
    assert (counts["mine_red"], counts["generator_red"], counts["altar"], counts["agent"]) == (10, 5, 5, 24)
    assert counts["wall"] == 20 + (37 * 37 - 25 * 25)  # scattered walls + the border ring
    assert sim._c_sim.observations().shape == (24, 200, 3)


def _quadrants() -> list[tuple[range, range]]:
    """The four 25x25 areas of the arena's 50x50 interior (inside the 6-cell border)."""
    halves = (range(6, 31), range(31, 56))
    return [(rows, cols) for rows in halves for cols in halves]


def _quadrant_layout(sim: Simulation, rows: range, cols: range) -> list[tuple[str, int, int]]:
    """Objects of one area, at positions relative to the area's corner."""
    return sorted((obj["type_name"], obj["location"][1] - rows.start, obj["location"][0] - cols.start)
                  for obj in sim.grid_objects().values() if obj["location"][1] in rows and obj["location"][0] in cols)


def test_arena_is_four_open_areas_as_the_reference_lays_them_out() -> None:
    sim = Simulator().new_simulation(with_map_seed(make_game("arena"), 0), 0)
    assert (sim.map_width, sim.map_height) == (62, 62)  # 2 x 25 inner + 2 * 6 border
    for rows, cols in _quadrants():
        counts = _object_counts(sim, rows, cols)
        assert (counts["agent"], counts["mine_red"], counts["generator_red"], counts["altar"], counts["wall"]) == (
            6, 10, 5, 5, 20)
    total = _object_counts(sim)
    assert total["wall"] == 4 * 20 + (62 * 62 - 50 * 50)  # no walls between the areas: only the border ring
    layouts = [_quadrant_layout(sim, rows, cols) for rows, cols in _quadrants()]
    assert len({tuple(layout) for layout in layouts}) == 4, "the four areas differ"
    assert sim._c_sim.observations().shape == (24, 200, 3)


def test_arena_map_follows_its_seed() -> None:
    def layout(seed: int) -> list:
        return _layout(Simulator().new_simulation(with_map_seed(make_game("arena"), seed), 0))

    assert layout(3) == layout(3)
    assert layout(3) != layout(4)


def test_arena_stations_store_five_and_restock_at_the_reference_periods() -> None:
    cfg = make_game("arena")
    objects = cfg.game.objects
    for name, stock in (("mine_red", "ore_red"), ("generator_red", "battery_red"), ("altar", "heart")):
        assert objects[name].inventory.initial == {stock: 1}
        assert objects[name].inventory.limits[stock].max == 5
    periods = {name: event.timesteps[1] - event.timesteps[0] for name, event in cfg.game.events.items()}
    assert periods == {"restock_mine_red": 50, "restock_generator_red": 25, "restock_altar": 10}


def test_arena_chain_with_random_actions() -> None:
    sim = _random_episode("arena", map_seed=1, sim_seed=1)
    assert sim.current_step == 1000
    totals = _stat_totals(sim, "arena")
    assert totals["ore"] > 0
    assert totals["batteries"] > 0
    assert totals["hearts"] > 0
    # Conversions consume inputs: nothing is made from thin air.
    assert totals["batteries"] <= totals["ore"] and totals["hearts"] <= totals["batteries"]
    rewards = sim.episode_rewards
    assert np.all(np.isfinite(rewards)) and rewards.sum() > 0


def test_arena_shaped_reward_matches_inventory() -> None:
    """Episode return = min(0.1 * ore, 1) + min(0.8 * batteries, 1) + hearts, from final holdings."""
    sim = _random_episode("arena", map_seed=2, sim_seed=2, max_steps=300)
    agents = sim.episode_stats["agent"]
    for i, stats in enumerate(agents):
        ore = stats.get("ore_red.amount", 0.0)
        battery = stats.get("battery_red.amount", 0.0)
        heart = stats.get("heart.amount", 0.0)
        expected = min(0.1 * ore, 1.0) + min(0.8 * battery, 1.0) + heart
        assert sim.episode_rewards[i] == pytest.approx(expected, abs=1e-4)


def test_heart_game_random_policy_scores() -> None:
    sim = _random_episode("heart", map_seed=3, sim_seed=3)
    assert sim.current_step == 200
    rewards = sim.episode_rewards
    assert rewards.sum() > 0
    # The reward is exactly one per heart collected.
    assert rewards.sum() == pytest.approx(_stat_totals(sim, "heart")["hearts"])


@pytest.mark.parametrize("name", GAME_NAMES)
def test_stat_keys_exist_in_engine_stats(name: str) -> None:
    sim = _random_episode(name, map_seed=4, sim_seed=4)
    keys = game_stat_keys(name)
    assert keys == game_stat_keys(make_game(name))  # by name or by config
    seen = set().union(*(stats.keys() for stats in sim.episode_stats["agent"]))
    for stat in keys.values():
        assert stat in seen, f"{stat} not among the engine's agent stats: {sorted(seen)}"
        agent_with_stat = next(i for i, s in enumerate(sim.episode_stats["agent"]) if stat in s)
        assert sim._c_sim.get_agent_stat(agent_with_stat, stat) is not None


def test_stat_keys() -> None:
    assert game_stat_keys("arena") == {
        "ore": "ore_red.gained",
        "batteries": "battery_red.gained",
        "hearts": "heart.gained",
    }
    assert game_stat_keys("heart") == {"hearts": "heart.gained"}
    unlabelled = make_game("heart")
    unlabelled.label = "something-else"
    assert game_stat_keys(unlabelled) == {"heart": "heart.gained"}


def _layout(sim: Simulation) -> list[tuple[str, tuple[int, int]]]:
    return sorted((obj["type_name"], tuple(obj["location"])) for obj in sim.grid_objects().values())


def test_map_seeding() -> None:
    cfg = make_game("heart")
    assert cfg.game.map_builder.seed is None  # type: ignore[attr-defined]
    seeded = with_map_seed(cfg, 11)
    assert cfg.game.map_builder.seed is None  # type: ignore[attr-defined]  # the input is not modified

    # Same map seed -> same map, whatever the engine seed; another map seed -> another map.
    a = _layout(Simulator().new_simulation(seeded, 0))
    assert a == _layout(Simulator().new_simulation(seeded, 99))
    assert a != _layout(Simulator().new_simulation(with_map_seed(cfg, 12), 0))

    # A reused Simulator advances the map seed by one per simulation (documented in games.py).
    simulator = Simulator()
    first = _layout(simulator.new_simulation(seeded, 0))
    second = _layout(simulator.new_simulation(seeded, 0))
    assert first == a
    assert second == _layout(Simulator().new_simulation(with_map_seed(cfg, 12), 0))


def test_seeded_episode_is_deterministic() -> None:
    a = _random_episode("arena", map_seed=5, sim_seed=5, max_steps=200).episode_rewards.copy()
    b = _random_episode("arena", map_seed=5, sim_seed=5, max_steps=200).episode_rewards.copy()
    np.testing.assert_array_equal(a, b)
