"""What a policy needs to know about a game: features, actions, window geometry.

This is also where metta-agent decides how a game's observation is presented to its policies, in two
ways that differ from mettagrid's own feature table (docs/design.md, "Observation encoding"; the
measurements are in docs/learning.md):

- **Object types one-hot.** mettagrid 0.26 reports a cell's object type as one ``tag`` feature whose value
  is an index into the game's sorted tag names. As a magnitude that is a poor input (types differ by
  steps of one channel, and index 0, the agent, adds nothing to a box encoder). Every tag name gets a
  feature of its own, ``tag=<name>`` (ids after the game's features, normalisation 1); ``MettaAgent``
  rewrites each ``tag`` token into the token of that feature with value 1. Matching by name also makes a
  type mean the same in every game.
- **Inventories at a readable scale.** Counts of a resource (``inv:<resource>``: an agent's own
  inventory, a station's stock) are normalised by at most ``INVENTORY_NORMALIZATION`` (10) instead of
  mettagrid's 256, at which one ore reads 0.004. The high byte of large counts (``inv:<resource>:p1``)
  keeps mettagrid's value.

The normalisations an agent was built with are saved in its checkpoint with its features, so an agent
always reads observations the way it was trained to.
"""

from dataclasses import dataclass

import torch
from mettagrid.config.mettagrid_config import MettaGridConfig
from mettagrid.policy.policy_env_interface import PolicyEnvInterface

TAG_FEATURE = "tag"
TAG_PREFIX = "tag="
INVENTORY_PREFIX = "inv:"
INVENTORY_NORMALIZATION = 10.0


@dataclass(frozen=True)
class Feature:
    id: int
    name: str
    normalization: float


@dataclass(frozen=True)
class EnvInfo:
    features: tuple[Feature, ...]
    action_names: tuple[str, ...]
    obs_height: int
    obs_width: int
    num_tokens: int
    agents_per_env: int

    @classmethod
    def from_game(cls, game: MettaGridConfig) -> "EnvInfo":
        return cls.from_interface(PolicyEnvInterface.from_mg_cfg(game))

    @classmethod
    def from_interface(cls, interface: PolicyEnvInterface) -> "EnvInfo":
        """From mettagrid's description of a game for policies (what its runners hand a policy)."""
        features = [Feature(int(f.id), f.name, _normalization(f.name, float(f.normalization)))
                    for f in interface.obs_features]
        if any(f.name == TAG_FEATURE for f in features):
            first_tag_id = max(f.id for f in features) + 1
            features += [Feature(first_tag_id + index, TAG_PREFIX + name, 1.0)
                         for index, name in enumerate(interface.tags)]
        return cls(
            features=tuple(features),
            action_names=tuple(interface.action_names),
            obs_height=int(interface.obs_height),
            obs_width=int(interface.obs_width),
            num_tokens=int(interface.observation_shape[0]),
            agents_per_env=int(interface.num_agents),
        )

    @property
    def num_features(self) -> int:
        """Input width F of box encoders: max feature id + 1."""
        return max(f.id for f in self.features) + 1

    @property
    def normalizations(self) -> torch.Tensor:
        """``[num_features]``: each feature id's normalisation (1 for ids no feature has)."""
        scales = torch.ones(self.num_features)
        for feature in self.features:
            scales[feature.id] = feature.normalization
        return scales


def _normalization(name: str, engine_normalization: float) -> float:
    if name.startswith(INVENTORY_PREFIX) and not name.endswith(":p1"):
        return min(engine_normalization, INVENTORY_NORMALIZATION)
    return engine_normalization


def tag_token_table(features) -> tuple[int, int] | None:
    """``(id of the tag feature, id of the first tag=<name> feature)`` of a feature list, or None if the list
    has no one-hot tag features. Tag value ``v`` becomes feature ``first + v``."""
    tag_ids = [f.id for f in features if f.name == TAG_FEATURE]
    one_hot_ids = [f.id for f in features if f.name.startswith(TAG_PREFIX)]
    if not tag_ids or not one_hot_ids:
        return None
    return tag_ids[0], min(one_hot_ids)
