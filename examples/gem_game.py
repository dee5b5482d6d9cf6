"""A small custom MettaGrid game, built from mettagrid's own pieces: train on it with

    metta-agent train --game examples/gem_game.py:gem_game --steps 200000

Four agents on a 13x13 map with 5 gem mines. Using a mine that holds a gem moves the gem into the agent's
inventory (reward 1 per gem held); every mine regains a gem every 3 steps. The actions (noop and the four
moves) and the 11x11 observation window match the built-in ``heart`` game, so the two can be mixed:

    metta-agent train --set 'game.mixture=[{game: heart, weight: 1}, {game: examples/gem_game.py:gem_game, weight: 1}]'
"""

from mettagrid.config.event_config import EventConfig, periodic
from mettagrid.config.filter import targetHas
from mettagrid.config.game_value import InventoryValue
from mettagrid.config.handler_config import Handler
from mettagrid.config.mettagrid_config import (
    ActionsConfig,
    AgentConfig,
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
from mettagrid.config.mutation import updateTarget, withdraw
from mettagrid.config.obs_config import ObsConfig
from mettagrid.config.query import query
from mettagrid.config.reward_config import reward
from mettagrid.config.tag import typeTag
from mettagrid.map_builder.random_map import RandomMapBuilder


def gem_game(max_steps: int = 200, mines: int = 5) -> MettaGridConfig:
    mine = GridObjectConfig(
        name="gem_mine",
        inventory=InventoryConfig(
            initial={"gem": 1}, limits={"gem": ResourceLimitsConfig(base=1, max=1, resources=["gem"])}
        ),
        on_use_handler=Handler(filters=[targetHas({"gem": 1})], mutations=[withdraw({"gem": 1})]),
    )
    restock = EventConfig(
        name="restock_gem_mine",
        target_query=query(typeTag("gem_mine")),
        timesteps=periodic(start=3, period=3, end=max_steps),
        mutations=[updateTarget({"gem": 1})],
    )
    return MettaGridConfig(
        game=GameConfig(
            num_agents=4,
            max_steps=max_steps,
            episode_truncates=True,
            resource_names=["gem"],
            obs=ObsConfig(width=11, height=11, num_tokens=200),
            actions=ActionsConfig(noop=NoopActionConfig(), move=MoveActionConfig(),
                                  change_vibe=ChangeVibeActionConfig(enabled=False)),
            objects={"wall": WallConfig(), "gem_mine": mine},
            events={"restock_gem_mine": restock},
            agent=AgentConfig(rewards={"gem": reward(InventoryValue(item="gem"))}),
            map_builder=RandomMapBuilder.Config(width=15, height=15, border_width=1, agents=4,
                                                objects={"gem_mine": mines, "wall": 4}),
        )
    )
