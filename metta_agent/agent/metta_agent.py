"""``MettaAgent``: builds either policy form, connects it to a game and gives the trainer one interface.

The policy maps a flat batch to logits and values; this wrapper owns everything both forms share:
feature-id remapping by name, action rows by name, flattening ``[B, TT]`` batches, sampling and
log-probabilities, and weight management (docs/design.md, "Policy contract", "MettaAgent" and "Weight management").
"""

from __future__ import annotations

import torch
from tensordict import TensorDict
from torch import nn

from metta_agent import contract as keys
from metta_agent.agent.memory import AgentMemory
from metta_agent.agent.weights import WeightManager
from metta_agent.blocks.heads import MAX_ACTION_EMBEDDINGS
from metta_agent.blocks.observation import INVALID_FEATURE
from metta_agent.blocks.recurrent import RecurrentCore
from metta_agent.config import AgentSettings
from metta_agent.env.info import TAG_PREFIX, EnvInfo, Feature, tag_token_table
from metta_agent.errors import UsageError


class MettaAgent(nn.Module):
    def __init__(self, policy: nn.Module, settings: AgentSettings, env: EnvInfo):
        super().__init__()
        core = getattr(policy, "core", None)
        if not isinstance(core, RecurrentCore):
            raise UsageError(f"architecture '{settings.name}' has no recurrent core (policy.core, an lstm component): "
                             "an agent needs one, which carries each agent's memory between steps")
        self.policy = policy
        # Each agent's recurrent state between rollout steps: a plain object, so DDP and checkpoints ignore it.
        self.memory = AgentMemory(core.num_layers, core.hidden_size)
        self.settings = settings
        self.weights = WeightManager(policy.clipped_layers())
        # Feature ids of the game the agent was built with: the policy's input layout, fixed forever.
        self.original_features: dict[str, Feature] = {f.name: f for f in env.features}
        self.geometry = {"obs_height": env.obs_height, "obs_width": env.obs_width, "num_tokens": env.num_tokens}
        self.action_rows: dict[str, int] = {}
        self.action_names: list[str] = []
        # env feature id -> original feature id (255 drops the token); identity for the original game.
        self.register_buffer(
            "feature_remap", torch.full((256,), INVALID_FEATURE, dtype=torch.uint8), persistent=False
        )
        self._remap_needed = False
        # Evaluation only: act by argmax instead of sampling. Training always samples (PPO needs the
        # stochastic policy), so this is a plain attribute, not saved in checkpoints.
        self.greedy = False
        # Where sampling draws from: None = torch's global stream (training); evaluation passes its own.
        self.sampling_generator: torch.Generator | None = None
        self.initialize_to_environment(env.features, env.action_names)

    # ---- environment ------------------------------------------------------------------------------------

    def initialize_to_environment(self, features, action_names, device: torch.device | str | None = None) -> None:
        """Record the game's features and actions; a second game is matched by feature and action *name*."""
        features = [f if isinstance(f, Feature) else Feature(int(f[0]), str(f[1]), float(f[2])) for f in features]
        remap = torch.full((256,), INVALID_FEATURE, dtype=torch.uint8)
        for feature in features:
            known = self.original_features.get(feature.name)
            if known is not None:
                remap[feature.id] = known.id
        self.feature_remap.copy_(remap)
        # Object types arrive as one ``tag`` token; an agent built with one-hot tag features reads each as the
        # token of its own feature (env/info.py). An agent built without them reads the raw tag value.
        has_one_hot_tags = any(name.startswith(TAG_PREFIX) for name in self.original_features)
        self._tag_rewrite = tag_token_table(features) if has_one_hot_tags else None
        self._remap_needed = any(
            self.original_features.get(f.name) is None or self.original_features[f.name].id != f.id for f in features
        )
        self._assign_action_rows(list(action_names))
        if device is not None:
            self.to(device)

    def _assign_action_rows(self, action_names: list[str]) -> None:
        for name in action_names:
            if name not in self.action_rows:
                used = set(self.action_rows.values())
                free = next((row for row in range(1, MAX_ACTION_EMBEDDINGS) if row not in used), None)
                if free is None:
                    raise ValueError(f"no free action embedding row for action '{name}'")
                self.action_rows[name] = free
        self.action_names = action_names
        self.policy.actor.action_embeddings.set_action_rows([self.action_rows[name] for name in action_names])

    # ---- forward ----------------------------------------------------------------------------------------

    def forward(self, td: TensorDict) -> TensorDict:
        """Rollout on ``[N]`` (samples ``actions``, or takes the argmax when ``greedy``) or training on
        ``[B, TT]`` (scores the given ``actions``)."""
        if td.batch_dims == 2:
            batch, bptt = td.batch_size
            # Training segments start from the memory the rollout read at their step 0.
            state = tuple(td[key][:, 0].transpose(0, 1).contiguous() for key in (keys.LSTM_H, keys.LSTM_C))
            flat = td.exclude(keys.LSTM_H, keys.LSTM_C).reshape(batch * bptt)
            self._run(flat, batch, bptt, sample=False, state=state)
            out = flat.reshape(batch, bptt)
            for key in (keys.ACT_LOG_PROB, keys.ENTROPY, keys.VALUES, keys.FULL_LOG_PROBS):
                td[key] = out[key]
            return td
        return self._run(td, td.batch_size[0], 1, sample=keys.ACTIONS not in td.keys())

    def read_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """The game's tokens as this agent's policy reads them: object types one-hot, feature ids mapped by name
        onto the agent's own (a feature it was not built with gets id 255 and is dropped)."""
        if self._tag_rewrite is not None:
            tokens = _one_hot_tags(tokens, *self._tag_rewrite)
        if self._remap_needed:
            feature = self.feature_remap[tokens[..., 1].long()]
            tokens = torch.stack((tokens[..., 0], feature, tokens[..., 2]), dim=-1)
        return tokens

    def _run(self, td: TensorDict, batch: int, bptt: int, sample: bool, state=None) -> TensorDict:
        """A rollout step when ``state`` is None (the state comes from and goes back to each agent's memory),
        else training segments entering with ``state``."""
        tokens = self.read_tokens(td[keys.ENV_OBS])
        starts = td[keys.STARTS].reshape(batch, bptt).bool()
        rollout = state is None
        if rollout:
            rows = td[keys.AGENT_ROWS].long() if keys.AGENT_ROWS in td.keys() else torch.arange(batch, device=starts.device)
            state = self.memory.read(rows, like=self.policy.core.lstm.weight_hh_l0)
            td[keys.LSTM_H], td[keys.LSTM_C] = state[0].transpose(0, 1), state[1].transpose(0, 1)
        logits, values, final_state = self.policy(tokens, state, starts)
        if rollout:
            self.memory.write(rows, final_state)
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        if sample:
            if self.greedy:
                actions = log_probs.argmax(-1)
            else:
                actions = torch.multinomial(log_probs.exp(), 1, generator=self.sampling_generator).squeeze(-1)
            td[keys.ACTIONS] = actions
        else:
            actions = td[keys.ACTIONS].long()
            td[keys.ENTROPY] = -(log_probs.exp() * log_probs).sum(-1)
        td[keys.ACT_LOG_PROB] = log_probs.gather(-1, actions.view(-1, 1)).squeeze(-1)
        td[keys.VALUES] = values.float()
        td[keys.FULL_LOG_PROBS] = log_probs
        return td

    # ---- recurrent state ----------------------------------------------------------------------------------

    def reset_memory(self) -> None:
        self.memory.reset()

    def memory_frozen(self):
        """Context: rollout steps that do not store the new state (bootstrap values)."""
        return self.memory.frozen()

    @property
    def lstm_shape(self) -> tuple[int, int]:
        core = self.policy.core
        return core.num_layers, core.hidden_size

    # ---- weights ------------------------------------------------------------------------------------------

    def clip_weights(self) -> None:
        self.weights.clip(self.settings.clip_range)

    def l2_init_loss(self) -> torch.Tensor:
        return self.weights.l2_init_loss(self.settings.l2_init_scale)

    def compute_weight_metrics(self) -> dict[str, float]:
        return self.weights.metrics()

    @property
    def total_params(self) -> int:
        return sum(p.numel() for p in self.policy.parameters())

    def original_env(self) -> EnvInfo:
        """The game description the agent was built with (its input layout), under its current actions."""
        return EnvInfo(
            features=tuple(self.original_features.values()),
            action_names=tuple(self.action_names),
            agents_per_env=1,
            **self.geometry,
        )

    def metadata(self) -> dict:
        """What a checkpoint needs, besides the state dict, to rebuild this agent (JSON-safe)."""
        return {
            "settings": {
                "name": self.settings.name,
                "clip_range": self.settings.clip_range,
                "analyze_weights_interval": self.settings.analyze_weights_interval,
                "l2_init_scale": self.settings.l2_init_scale,
                "kwargs": dict(self.settings.kwargs),
            },
            "original_features": [[f.id, f.name, f.normalization] for f in self.original_features.values()],
            "geometry": dict(self.geometry),
            "action_rows": dict(self.action_rows),
            "action_names": list(self.action_names),
        }


def _one_hot_tags(tokens: torch.Tensor, tag_feature: int, first_tag_feature: int) -> torch.Tensor:
    """Each ``(location, tag, v)`` token becomes ``(location, first_tag_feature + v, 1)``; others pass as they are."""
    is_tag = tokens[..., 1] == tag_feature
    feature = torch.where(is_tag, tokens[..., 2] + first_tag_feature, tokens[..., 1])
    value = torch.where(is_tag, torch.ones_like(tokens[..., 2]), tokens[..., 2])
    return torch.stack((tokens[..., 0], feature, value), dim=-1)
