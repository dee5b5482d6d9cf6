"""The games metta-agent ships, built from mettagrid 0.26 primitives.

mettagrid's own presets (``make_arena``, ``make_navigation``) give no reward in 0.26, so we assemble
our games from the engine's generic pieces: grid objects whose ``on_use_handler`` (triggered when an
agent moves into the object) checks filters (``actorHas``/``targetHas``) and applies mutations
(``updateActor``/``withdraw``), inventory rewards (``reward(InventoryValue(...), max=...)``) and
timestep events.

Games
-----
``arena`` (default)
    The reference "arena basic easy shaped" task, laid out as the reference lays it out: 24 agents in a
    2x2 grid of 25x25 areas with no walls between them (a 50x50 open interior inside a 6-cell wall
    border). Each area holds 6 agents, 10 mines, 5 generators, 5 altars and 20 walls, placed at random.
    Mine -> ``ore_red``; generator: 1 ``ore_red`` -> 1 ``battery_red``; altar: 1 ``battery_red`` -> 1
    ``heart``. Shaped inventory rewards: ore 0.1 each (capped at 1), battery 0.8 each (capped at 1),
    heart 1 each (cap 255). Stations store up to 5 items, start with 1 and gain one every 50 (mine),
    25 (generator) or 10 (altar) steps: the reference's cooldowns.
``arena_room``
    The same stations and rewards with every agent in one 25x25 room: all 24 agents and one area's
    stations (10 mines, 5 generators, 5 altars, 20 walls), each station holding one item and restocked
    every 5 steps. This was metta-agent's first arena (4x the reference's agent density).
``heart``
    A small, fast-learning game for tests and demos: 4 agents on a 15x15 map inside a 1-cell wall
    border, 6 scattered walls and 4 altars that hand out a heart (reward 1) when used, 200-step
    episodes. A random policy collects about 2 hearts per agent per episode; one that walks to an altar
    and keeps using it can collect up to ~100.

Cooldowns
---------
mettagrid 0.26 has no converter cooldown, so a station's readiness is expressed with its *own
inventory*: a station holds a few units of what it hands out (its "stock"), using it takes one unit,
and a periodic event puts one unit back into every station of that type, up to the stock limit. A
station can therefore serve on average one use per restock period, which is what a cooldown does; the
difference from the reference is that the restock phase is shared by all stations of a type and runs
whether or not the station was used (a cooldown starts at each use). This costs no extra resource
(no extra observation feature) and the stock is observable: agents see an ``inv:<resource>`` token on a
ready station and none on an empty one, so "which station is ready" is learnable from the observation.
The restock events are generated up to ``max_steps``: set the episode length through
``make_game(name, max_steps=...)``, not by editing ``cfg.game.max_steps`` afterwards (stations would stop
restocking after the original length).

Maps and seeds
--------------
``arena`` builds its map with mettagrid's ``MapGen`` (4 instances of a ``Random`` scene, no border
between them: the quadrants differ and one seed gives one map); ``arena_room`` and ``heart`` use
``RandomMapBuilder``. Both have a ``seed`` field. The ``seed`` passed to ``Simulator().new_simulation(cfg, seed)``
seeds only the C++ engine (tie-breaking between agents); it does **not** reach the map builder. With
``map_builder.seed`` left at ``None`` (what ``make_game`` returns) every episode gets a fresh map drawn
from OS entropy: varied but not reproducible.

This project therefore sets the map builder's seed itself: ``VecEnv`` builds a new simulation for every
episode and gives episode ``k`` of env ``e`` the seed ``seeding.episode_seed(run_seed, e, k)``, for the map
builder and the engine alike, so a map is exactly a function of the run seed, the env index and the
episode number (every seeding rule of a run is in ``seeding.py``). :func:`with_map_seed` fixes one map seed
for code that builds simulations itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from mettagrid.config.event_config import EventConfig, periodic
from mettagrid.config.filter import actorHas, targetHas
from mettagrid.config.game_value import InventoryValue
from mettagrid.config.handler_config import Handler
from mettagrid.config.mettagrid_config import (
    ActionsConfig,
    AgentConfig,
    AttackActionConfig,
    ChangeVibeActionConfig,
    GameConfig,
    GridObjectConfig,
    InventoryConfig,
    MettaGridConfig,
    MoveActionConfig,
    NoopActionConfig,
    ResourceLimitsConfig,
    WallConfig,
)
from mettagrid.config.mutation import updateActor, updateTarget, withdraw
from mettagrid.config.obs_config import ObsConfig
from mettagrid.config.query import query
from mettagrid.config.reward_config import AgentReward, reward
from mettagrid.config.tag import typeTag
from mettagrid.map_builder.random_map import RandomMapBuilder
from mettagrid.mapgen.mapgen import MapGenConfig
from mettagrid.mapgen.scenes.random import RandomConfig

from metta_agent.errors import UsageError

__all__ = [
    "DEFAULT_GAME",
    "GAME_NAMES",
    "OBS_NUM_TOKENS",
    "OBS_WINDOW",
    "describe_game",
    "game_stat_keys",
    "make_game",
    "with_map_seed",
]

GAME_NAMES: tuple[str, ...] = ("arena", "arena_room", "heart")
DEFAULT_GAME = "arena"

# The reference agents' observation geometry (docs/design.md, "Games"). Policies must still read the window
# and token count from the env; these constants only configure the games.
OBS_WINDOW = 11
OBS_NUM_TOKENS = 200

ORE = "ore_red"
BATTERY = "battery_red"
HEART = "heart"

# Arena contents (the reference's "arena basic easy shaped"; docs/design.md, "Games"), shared by both layouts.
ARENA_AGENTS = 24
ARENA_OBJECT_COUNTS = {"mine_red": 10, "generator_red": 5, "altar": 5, "wall": 20}
ARENA_MAX_STEPS = 1000
ARENA_BORDER = 6
# The reference layout: 4 areas of 25x25, 6 agents and ARENA_OBJECT_COUNTS each, side by side with no
# walls between them (a 50x50 open interior).
ARENA_AREAS = 4
ARENA_AREA_SIZE = 25
ARENA_AREA_AGENTS = ARENA_AGENTS // ARENA_AREAS
# The reference stations: a cooldown of 50 (mine), 25 (generator) or 10 (altar) steps, up to 5 items
# stored, 1 at the start. Supply per area and 1000-step episode: 10 mines x (1 + 1000 / 50) = 210 ore,
# so at most 35 hearts per agent: ore, not altars, bounds the score.
ARENA_RESTOCK_PERIODS = {"mine_red": 50, "generator_red": 25, "altar": 10}
ARENA_STATION_STOCK = 5
# The one-room layout (``arena_room``): all 24 agents and one area's stations in a single 25x25 room,
# each station holding one item, restocked every 5 steps (our first arena; not the reference's values).
ARENA_ROOM_RESTOCK_PERIOD = 5
# Agents carry at most this much of any resource (as in the reference arena); hearts get 255 so the
# heart reward cap is reachable.
ARENA_AGENT_INVENTORY_LIMIT = 50
ARENA_HEART_LIMIT = 255

# Heart game: small map, short episodes, a dense reward a random policy already finds.
HEART_AGENTS = 4
HEART_INNER = 15
HEART_BORDER = 1
HEART_ALTARS = 4
HEART_WALLS = 6
HEART_MAX_STEPS = 200
# An altar refills every 2 steps: dense enough that a random policy scores, yet a policy that parks
# next to an altar and bumps it gets only one heart per two steps, so moving between altars (and not
# crowding one with other agents) still pays.
HEART_RESTOCK_PERIOD = 2


@dataclass(frozen=True)
class _GameSpec:
    """What the public helpers need to know about one game."""

    build: Callable[[int], MettaGridConfig]
    default_max_steps: int
    map_text: str
    description: str
    # Metric name -> per-agent stat name in the engine's episode stats.
    stat_keys: dict[str, str]


def _check_name(name: str) -> _GameSpec:
    """Return the spec of game ``name`` or raise the UsageError the CLI shows to the user."""
    spec = _GAMES.get(name)
    if spec is None:
        raise UsageError(f"unknown game '{name}'; choose one of: {', '.join(GAME_NAMES)}")
    return spec


def make_game(name: str, max_steps: int | None = None) -> MettaGridConfig:
    """Build a fresh config for game ``name`` (a new object on every call, safe to mutate).

    ``max_steps`` overrides the game's default episode length. The returned config has an unseeded
    map builder (a new random map every episode); see :func:`with_map_seed` for reproducible maps.
    """
    spec = _check_name(name)
    steps = spec.default_max_steps if max_steps is None else max_steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UsageError(f"max_steps must be a positive integer, got {max_steps!r}")
    cfg = spec.build(steps)
    cfg.label = name
    return cfg


def with_map_seed(cfg: MettaGridConfig, seed: int) -> MettaGridConfig:
    """Return a copy of ``cfg`` whose random map is reproducible from ``seed``.

    The simulation seed does not reach the map builder, so without this every episode's map is drawn
    from OS entropy. Note the Simulator adds its own per-simulation counter to this seed (see the module
    docstring): a fresh ``Simulator`` gives exactly the map of ``seed``; a reused one gives
    ``seed + k`` for its ``k``-th simulation. The copy is deep (about 3 ms for the arena), so the
    cheapest reproducible scheme is to call this once per env and reuse that env's Simulator.
    """
    builder = cfg.game.map_builder
    if not hasattr(builder, "seed"):
        raise TypeError(f"map builder {type(builder).__name__} has no seed to set")
    out = cfg.model_copy(deep=True)
    out.game.map_builder.seed = int(seed)  # type: ignore[attr-defined]
    return out


def game_stat_keys(name_or_cfg: str | MettaGridConfig) -> dict[str, str]:
    """Map metric names to the per-agent stat names the engine writes, e.g. ``{"hearts": "heart.gained"}``.

    The engine records, per agent, ``<resource>.gained`` / ``.lost`` / ``.amount`` in
    ``sim.episode_stats["agent"][i]`` (also ``c_sim.get_agent_stat(i, key)``). A key appears only once
    the agent has touched that resource, so readers must treat a missing key as 0. ``*.gained`` counts
    every unit received (a mine's ore, a generator's battery, an altar's heart), which is the production
    count we want to report; it is not reduced when the unit is later converted.

    A config is looked up by its ``label`` (set by :func:`make_game`); an unknown config falls back to
    one ``<resource>.gained`` entry per resource in its resource list.
    """
    if isinstance(name_or_cfg, str):
        return dict(_check_name(name_or_cfg).stat_keys)
    spec = _GAMES.get(name_or_cfg.label)
    if spec is not None:
        return dict(spec.stat_keys)
    return {resource: f"{resource}.gained" for resource in name_or_cfg.game.resource_names}


def describe_game(name: str) -> dict:
    """Summarise game ``name`` for humans and for the CLI (``metta-agent games``)."""
    spec = _check_name(name)
    cfg = make_game(name)
    return {
        "name": name,
        "agents": cfg.game.num_agents,
        "map": spec.map_text,
        "actions": [action.name for action in cfg.game.actions.actions()],
        "num_features": len(cfg.game.id_map().features()),
        "max_steps": cfg.game.max_steps,
        "description": spec.description,
    }


# ----------------------------------------------------------------------------------------------------
# Building blocks


def _actions() -> ActionsConfig:
    """noop + the four cardinal moves only.

    ``change_vibe`` is on by default and would add 152 actions in a separate stream; attack is already
    off by default but is switched off explicitly so the action set does not depend on engine defaults.
    """
    return ActionsConfig(
        noop=NoopActionConfig(),
        move=MoveActionConfig(),
        attack=AttackActionConfig(enabled=False),
        change_vibe=ChangeVibeActionConfig(enabled=False),
    )


def _obs() -> ObsConfig:
    """The reference agents' 11x11 window with 200 tokens."""
    return ObsConfig(width=OBS_WINDOW, height=OBS_WINDOW, num_tokens=OBS_NUM_TOKENS)


def _station(name: str, stock: str, handler: Handler, limit: int = 1) -> GridObjectConfig:
    """A usable object that holds up to ``limit`` units of ``stock`` and starts with one (see "Cooldowns")."""
    return GridObjectConfig(
        name=name,
        inventory=InventoryConfig(
            initial={stock: 1},
            limits={stock: ResourceLimitsConfig(base=limit, max=limit, resources=[stock])},
        ),
        on_use_handler=handler,
    )


def _restock(name: str, stock: str, period: int, max_steps: int) -> EventConfig:
    """Every ``period`` steps, add one ``stock`` to every ``name`` object (its stock limit caps it)."""
    return EventConfig(
        name=f"restock_{name}",
        target_query=query(typeTag(name)),
        timesteps=periodic(start=period, period=period, end=max_steps),
        mutations=[updateTarget({stock: 1})],
    )


def _inventory_reward(resource: str, weight: float, cap: float) -> AgentReward:
    """Reward ``weight`` per unit held, the total for this resource capped at ``cap``.

    Rewards are paid as the change of this value each step, so converting a unit away (ore into a
    battery) takes back its share: the shaping rewards holding the more valuable item, as in the
    reference.
    """
    return reward(InventoryValue(item=resource), weight=weight, max=cap)


def _random_map(inner: int, border: int, agents: int, objects: dict[str, int]) -> RandomMapBuilder.Config:
    """A square map of ``inner`` cells per side inside a wall border ``border`` cells thick.

    RandomMapBuilder's width/height include the border, hence ``inner + 2 * border``.
    """
    side = inner + 2 * border
    return RandomMapBuilder.Config(
        width=side,
        height=side,
        border_width=border,
        agents=agents,
        objects=dict(objects),
    )


def _game(
    *,
    num_agents: int,
    max_steps: int,
    resources: list[str],
    objects: dict[str, GridObjectConfig],
    events: dict[str, EventConfig],
    agent: AgentConfig,
    map_builder: RandomMapBuilder.Config | MapGenConfig,
) -> MettaGridConfig:
    """Settings shared by every game."""
    return MettaGridConfig(
        game=GameConfig(
            num_agents=num_agents,
            max_steps=max_steps,
            # All agents stop together at the time limit: that is a truncation (bootstrap the value),
            # not a terminal state.
            episode_truncates=True,
            # Only the resources the game uses: each resource adds two inventory features.
            resource_names=resources,
            # Our stations have no "protocols" (recipes), so the protocol_input/output features would
            # always be empty; dropping them removes 2 features per resource.
            protocol_details_obs=False,
            obs=_obs(),
            actions=_actions(),
            objects={"wall": WallConfig(), **objects},
            events=events,
            agent=agent,
            map_builder=map_builder,
        )
    )


# ----------------------------------------------------------------------------------------------------
# Games


def _arena_game(max_steps: int, restock_periods: dict[str, int], stock_limit: int,
                map_builder: RandomMapBuilder.Config | MapGenConfig) -> MettaGridConfig:
    """The arena's chain: mine -> ore, generator: ore -> battery, altar: battery -> heart."""
    mine = _station(
        "mine_red",
        ORE,
        Handler(filters=[targetHas({ORE: 1})], mutations=[withdraw({ORE: 1})]),
        stock_limit,
    )
    generator = _station(
        "generator_red",
        BATTERY,
        Handler(
            filters=[actorHas({ORE: 1}), targetHas({BATTERY: 1})],
            mutations=[updateActor({ORE: -1}), withdraw({BATTERY: 1})],
        ),
        stock_limit,
    )
    altar = _station(
        "altar",
        HEART,
        Handler(
            filters=[actorHas({BATTERY: 1}), targetHas({HEART: 1})],
            mutations=[updateActor({BATTERY: -1}), withdraw({HEART: 1})],
        ),
        stock_limit,
    )
    stations = [(mine, ORE), (generator, BATTERY), (altar, HEART)]
    agent = AgentConfig(
        inventory=InventoryConfig(
            default_limit=ARENA_AGENT_INVENTORY_LIMIT,
            limits={HEART: ResourceLimitsConfig(base=ARENA_HEART_LIMIT, resources=[HEART])},
        ),
        rewards={
            ORE: _inventory_reward(ORE, 0.1, 1.0),
            BATTERY: _inventory_reward(BATTERY, 0.8, 1.0),
            HEART: _inventory_reward(HEART, 1.0, float(ARENA_HEART_LIMIT)),
        },
    )
    return _game(
        num_agents=ARENA_AGENTS,
        max_steps=max_steps,
        resources=[ORE, BATTERY, HEART],
        objects={obj.name: obj for obj, _ in stations},
        events={
            f"restock_{obj.name}": _restock(obj.name, stock, restock_periods[obj.name], max_steps)
            for obj, stock in stations
        },
        agent=agent,
        map_builder=map_builder,
    )


def _build_arena(max_steps: int) -> MettaGridConfig:
    """The reference layout: 4 random 25x25 areas side by side, no walls between them.

    Each area is a ``Random`` scene instance of ``MapGen``: MapGen derives each instance's seed from its
    own, so the areas differ and one map seed gives one map (a ``RandomMapBuilder`` instance would
    give four identical areas, or ignore the seed).
    """
    areas = MapGenConfig(
        width=ARENA_AREA_SIZE,
        height=ARENA_AREA_SIZE,
        instances=ARENA_AREAS,
        instance_border_width=0,
        border_width=ARENA_BORDER,
        instance=RandomConfig(agents=ARENA_AREA_AGENTS, objects=dict(ARENA_OBJECT_COUNTS)),
    )
    return _arena_game(max_steps, ARENA_RESTOCK_PERIODS, ARENA_STATION_STOCK, areas)


def _build_arena_room(max_steps: int) -> MettaGridConfig:
    """Every agent and one area's stations in one 25x25 room; one-item stations restocked every 5 steps."""
    periods = {name: ARENA_ROOM_RESTOCK_PERIOD for name in ARENA_RESTOCK_PERIODS}
    room = _random_map(ARENA_AREA_SIZE, ARENA_BORDER, ARENA_AGENTS, ARENA_OBJECT_COUNTS)
    return _arena_game(max_steps, periods, 1, room)


def _build_heart(max_steps: int) -> MettaGridConfig:
    """The heart game: using a stocked altar gives the agent one heart (reward 1)."""
    altar = _station(
        "altar",
        HEART,
        Handler(filters=[targetHas({HEART: 1})], mutations=[withdraw({HEART: 1})]),
    )
    # No cap: the reward is simply the number of hearts held (the engine's default inventory limit,
    # 65535, is never reached), so the return is the heart count whatever max_steps is.
    agent = AgentConfig(rewards={HEART: reward(InventoryValue(item=HEART))})
    return _game(
        num_agents=HEART_AGENTS,
        max_steps=max_steps,
        resources=[HEART],
        objects={"altar": altar},
        events={"restock_altar": _restock("altar", HEART, HEART_RESTOCK_PERIOD, max_steps)},
        agent=agent,
        map_builder=_random_map(
            HEART_INNER, HEART_BORDER, HEART_AGENTS, {"altar": HEART_ALTARS, "wall": HEART_WALLS}
        ),
    )


_ARENA_STATS = {"ore": f"{ORE}.gained", "batteries": f"{BATTERY}.gained", "hearts": f"{HEART}.gained"}

_GAMES: dict[str, _GameSpec] = {
    "arena": _GameSpec(
        build=_build_arena,
        default_max_steps=ARENA_MAX_STEPS,
        map_text=f"2x2 x {ARENA_AREA_SIZE}x{ARENA_AREA_SIZE} (+{ARENA_BORDER} border)",
        description=(
            "24 agents in 4 open 25x25 areas (6 agents, 10 mines, 5 generators, 5 altars, 20 walls each); "
            "mines give ore_red, generators turn ore into battery_red, altars turn a battery into a heart. "
            "Shaped rewards: ore 0.1 (max 1), battery 0.8 (max 1), heart 1. Stations store up to 5 items and "
            "gain one every 50 (mine), 25 (generator), 10 (altar) steps."
        ),
        stat_keys=dict(_ARENA_STATS),
    ),
    "arena_room": _GameSpec(
        build=_build_arena_room,
        default_max_steps=ARENA_MAX_STEPS,
        map_text=f"{ARENA_AREA_SIZE}x{ARENA_AREA_SIZE} (+{ARENA_BORDER} border)",
        description=(
            "The arena's stations and rewards with all 24 agents in one 25x25 room (one area's stations: "
            f"4x the reference density); stations hold one item, restocked every {ARENA_ROOM_RESTOCK_PERIOD} steps."
        ),
        stat_keys=dict(_ARENA_STATS),
    ),
    "heart": _GameSpec(
        build=_build_heart,
        default_max_steps=HEART_MAX_STEPS,
        map_text=f"{HEART_INNER}x{HEART_INNER} (+{HEART_BORDER} border)",
        description=(
            f"{HEART_AGENTS} agents, {HEART_ALTARS} altars; using a stocked altar gives a heart "
            f"(reward 1); altars restock every {HEART_RESTOCK_PERIOD} steps. Small and fast to learn: "
            "for tests and demos."
        ),
        stat_keys={"hearts": f"{HEART}.gained"},
    ),
}
assert tuple(_GAMES) == GAME_NAMES
