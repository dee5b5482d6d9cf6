"""Games one batch of envs plays: one game, or a weighted mixture whose envs draw each episode's game.

A mixture's games must agree on what a policy's shape depends on: the agent count, the action names and
the observation geometry. Their features may differ: the mixture presents one feature space, the union of
its games' features matched by name (docs/design.md, "Games"), and each game's observation tokens are
rewritten into it as the game writes them. A policy trained on the mixture therefore reads ``inv:heart``
through one input whichever game produced the token, and evaluates on any member game by name matching.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
from mettagrid.config.mettagrid_config import MettaGridConfig

from metta_agent.env.info import TAG_FEATURE, TAG_PREFIX, EnvInfo, Feature
from metta_agent.errors import UsageError
from metta_agent.games import game_stat_keys
from metta_agent.seeding import episode_game_draw

NO_FEATURE = 255  # the engine's empty-token byte: unknown ids map to it


@dataclass(frozen=True)
class ObsRemap:
    """Rewrites one game's tokens into the mixture's feature space, in place."""

    features: np.ndarray  # uint8 [256]: game feature id -> mixture feature id
    tag_feature: int  # the game's ``tag`` feature id, or -1
    tag_values: np.ndarray  # uint8 [256]: game tag index -> mixture tag index

    def apply(self, obs: np.ndarray) -> None:
        """``obs``: uint8 ``[..., M, 3]`` tokens ``(location, feature, value)``."""
        feature = obs[..., 1]
        if self.tag_feature >= 0:
            is_tag = feature == self.tag_feature
            if is_tag.any():
                values = obs[..., 2]
                values[is_tag] = self.tag_values[values[is_tag]]
        obs[..., 1] = self.features[feature]


@dataclass(frozen=True)
class GameMix:
    """``games[i]`` (named ``labels[i]``) is drawn for an episode with probability ``weights[i] / sum``."""

    labels: tuple[str, ...]
    games: tuple[MettaGridConfig, ...]
    weights: tuple[float, ...]
    info: EnvInfo  # the mixture's feature space (a single game's own EnvInfo)
    remaps: tuple[ObsRemap | None, ...]  # None: the game's tokens already are in the mixture's space
    # Per game, metric name -> the engine's per-agent stat (``games.game_stat_keys``).
    stat_keys: tuple[dict[str, str], ...]

    @classmethod
    def single(cls, game: MettaGridConfig, label: str | None = None) -> "GameMix":
        return cls.of([(label or game.label or "game", game, 1.0)])

    @classmethod
    def of(cls, members: Sequence[tuple[str, MettaGridConfig, float]]) -> "GameMix":
        """Check that the games can share a policy and build the mixture's feature space."""
        if not members:
            raise UsageError("a game mixture needs at least one game")
        labels = tuple(label for label, _, _ in members)
        duplicate = next((label for label in labels if labels.count(label) > 1), None)
        if duplicate is not None:
            raise UsageError(f"two games of the mixture are both named '{duplicate}': rename one of the files "
                             "or factories")
        weights = tuple(float(weight) for _, _, weight in members)
        for label, weight in zip(labels, weights):
            if not np.isfinite(weight) or weight <= 0:
                raise UsageError(f"game.mixture weight of '{label}' must be a positive number, got {weight}")
        games = tuple(game for _, game, _ in members)
        infos = [EnvInfo.from_game(game) for game in games]
        for label, info in zip(labels[1:], infos[1:]):
            difference = _first_difference(infos[0], info)
            if difference is not None:
                raise UsageError(f"games '{labels[0]}' and '{label}' cannot be mixed: {difference}")
        union, remaps = _union(infos)
        return cls(labels, games, weights, union, tuple(remaps), tuple(game_stat_keys(game) for game in games))

    def only(self, index: int) -> "GameMix":
        """Game ``index`` alone, still presented in this mixture's feature space (to evaluate it)."""
        return replace(self, labels=(self.labels[index],), games=(self.games[index],), weights=(1.0,),
                       remaps=(self.remaps[index],), stat_keys=(self.stat_keys[index],))

    def with_stat_keys(self, stat_keys: dict[str, str]) -> "GameMix":
        """The same mixture reporting ``stat_keys`` for every game."""
        return replace(self, stat_keys=tuple(dict(stat_keys) for _ in self.games))

    @property
    def is_mixture(self) -> bool:
        return len(self.games) > 1

    def draw(self, seed: int, env_index: int, episode: int) -> int:
        """Index of the game that episode ``episode`` of env ``env_index`` plays (always 0 for one game)."""
        if len(self.games) == 1:
            return 0
        return episode_game_draw(seed, env_index, episode, self.weights)


def _first_difference(a: EnvInfo, b: EnvInfo) -> str | None:
    if a.agents_per_env != b.agents_per_env:
        return f"{a.agents_per_env} agents vs {b.agents_per_env}"
    if a.action_names != b.action_names:
        for index, (x, y) in enumerate(zip(a.action_names, b.action_names)):
            if x != y:
                return f"action {index} is '{x}' vs '{y}'"
        return f"{len(a.action_names)} actions vs {len(b.action_names)}"
    if (a.obs_height, a.obs_width) != (b.obs_height, b.obs_width):
        return f"observation window {a.obs_height}x{a.obs_width} vs {b.obs_height}x{b.obs_width}"
    if a.num_tokens != b.num_tokens:
        return f"{a.num_tokens} observation tokens vs {b.num_tokens}"
    return None


def _union(infos: Sequence[EnvInfo]) -> tuple[EnvInfo, list[ObsRemap | None]]:
    """The union of the games' features by name (the first game's ids kept where possible) and each game's
    remap into it. One-hot tag features (``tag=<name>``) come last, contiguous, in sorted name order, as
    ``EnvInfo.from_game`` lays them out, so a tag token's value still indexes them."""
    first = infos[0]
    if len(infos) == 1:
        return first, [None]
    base: dict[str, Feature] = {}
    for info in infos:
        for feature in info.features:
            if feature.name.startswith(TAG_PREFIX) or feature.name in base:
                continue
            taken = {f.id for f in base.values()}
            new_id = feature.id if info is first else max(taken | {-1}) + 1
            while new_id in taken:
                new_id += 1
            base[feature.name] = Feature(new_id, feature.name, feature.normalization)
    features = sorted(base.values(), key=lambda f: f.id)
    tag_names = sorted({f.name for info in infos for f in info.features if f.name.startswith(TAG_PREFIX)})
    if tag_names:
        first_tag = max(f.id for f in features) + 1
        features += [Feature(first_tag + k, name, 1.0) for k, name in enumerate(tag_names)]
    if max(f.id for f in features) >= NO_FEATURE:
        raise UsageError(f"the mixture's games have {len(features)} distinct features together; at most "
                         f"{NO_FEATURE} fit in an observation token")
    union = EnvInfo(tuple(features), first.action_names, first.obs_height, first.obs_width, first.num_tokens,
                    first.agents_per_env)
    by_name = {f.name: f.id for f in features}
    union_tags = {name: k for k, name in enumerate(tag_names)}
    remaps: list[ObsRemap | None] = []
    for info in infos:
        lut = np.full(256, NO_FEATURE, dtype=np.uint8)
        for feature in info.features:
            lut[feature.id] = by_name[feature.name]
        tag_lut = np.arange(256, dtype=np.uint8)
        game_tags = sorted((f for f in info.features if f.name.startswith(TAG_PREFIX)), key=lambda f: f.id)
        for k, feature in enumerate(game_tags):
            tag_lut[k] = union_tags[feature.name]
        tag_feature = next((f.id for f in info.features if f.name == TAG_FEATURE), -1)
        identity = all(by_name[f.name] == f.id for f in info.features) and all(
            tag_lut[k] == k for k in range(len(game_tags)))
        remaps.append(None if identity else ObsRemap(lut, tag_feature, tag_lut))
    return union, remaps
