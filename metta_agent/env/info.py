"""What a policy needs to know about a game: features, actions, window geometry."""

from dataclasses import dataclass

from mettagrid.config.mettagrid_config import MettaGridConfig
from mettagrid.policy.policy_env_interface import PolicyEnvInterface


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
    num_agents: int

    @classmethod
    def from_game(cls, game: MettaGridConfig) -> "EnvInfo":
        interface = PolicyEnvInterface.from_mg_cfg(game)
        return cls(
            features=tuple(Feature(int(f.id), f.name, float(f.normalization)) for f in interface.obs_features),
            action_names=tuple(interface.action_names),
            obs_height=int(interface.obs_height),
            obs_width=int(interface.obs_width),
            num_tokens=int(interface.observation_shape[0]),
            num_agents=int(interface.num_agents),
        )

    @property
    def num_features(self) -> int:
        """Input width F of box encoders: max feature id + 1."""
        return max(f.id for f in self.features) + 1
