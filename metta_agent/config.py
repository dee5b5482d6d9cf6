"""The run configuration: sections ``agent``, ``game`` and ``trainer``, validated at start-up.

Precedence: defaults < ``--config FILE.yaml`` < command-line flags < ``--set key=value``. Every error names
the key and says what to change.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from metta_agent.errors import UsageError
from metta_agent.files import read_text_file


@dataclass
class AgentSettings:
    """Which architecture to build and its weight-management parameters (docs/design.md, "MettaAgent")."""

    name: str = "pytorch/fast"
    """Architecture: a component name (``fast``...), ``pytorch/<name>``, or a path to a component YAML."""
    clip_range: float = 0.0
    """Clamp clipped layers' weights to clip_range x their largest initial |w|; 0 disables."""
    analyze_weights_interval: int = 300
    """Epochs between weight-spectrum metrics; 0 disables."""
    l2_init_scale: float = 1.0
    """Scale of each layer's ||W - W0||^2 in the L2-init loss."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Architecture keyword arguments (checked against the architecture's own parameters)."""


@dataclass
class GameSettings:
    name: str = "arena"
    """Game to train on: a built-in game (``metta-agent games`` lists them), ``FILE.py:FUNCTION`` or
    ``MODULE:FUNCTION`` (a function returning a ``MettaGridConfig``), or a ``.yaml``/``.json`` MettaGridConfig
    file (``game_source.py``)."""
    max_steps: int | None = None
    """Episode length; None keeps the game's own."""
    mixture: list[Any] | None = None
    """``[{game: SOURCE, weight: W}, ...]``: train on several games, each env drawing its next episode's game
    by weight (``name`` is then unused)."""


@dataclass
class TrainerSettings:
    """PPO hyper-parameters (docs/design.md, "PPO trainer"); counts are agent steps over all ranks."""

    total_agent_steps: int = 10_000_000
    """Stop at the first epoch boundary at or past this many agent steps."""
    num_envs: int = 8
    """Environments per rank (each holds the game's agents)."""
    env_workers: int = 0
    """Worker processes stepping the environments; 0 steps them in the trainer's process."""
    batch_size: int = 12288
    """Agent steps per epoch *per rank*: a multiple of (agents x bptt_horizon); an epoch is world_size x this."""
    minibatch_size: int = 3072
    """Agent steps per optimizer step: a multiple of bptt_horizon dividing batch_size."""
    bptt_horizon: int = 64
    """Length of the training segments (truncated backprop through time)."""
    update_epochs: int = 1
    """Passes over each batch."""
    lr: float = 4.573e-4
    lr_schedule: str = "cosine"
    """``constant``, ``linear`` (to lr x lr_final_ratio) or ``cosine`` (likewise)."""
    lr_final_ratio: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-12
    gamma: float = 0.977
    gae_lambda: float = 0.916
    clip_coef: float = 0.1
    vf_clip_coef: float = 0.1
    ent_coef: float = 0.0021
    vf_coef: float = 0.44
    max_grad_norm: float = 0.5
    norm_adv: bool = True
    l2_init_loss_coef: float = 0.0
    max_skipped_updates_in_a_row: int = 5
    """Updates with a non-finite loss or gradient are skipped; this many in a row stop the run."""
    checkpoint_interval: int = 50
    """Epochs between checkpoints."""
    eval_interval: int = 80
    """Epochs between evaluations of the policy on fresh maps (and one after the last epoch); 0 turns them off."""
    eval_episodes: int = 8
    """Episodes (envs played in parallel) per evaluation."""
    keep_checkpoints: int = 3
    """How many checkpoints to keep."""
    seed: int = 0
    device: str = "cpu"
    """``cpu``, or ``cuda`` (each rank its local GPU) / ``cuda:N``: where the policy and the update run."""
    kickstart: dict[str, Any] | None = None
    """``{teachers: [{path, action_loss_coef, value_loss_coef}], anneal_steps}``: learn from teacher checkpoints
    too (trainer/kickstart.py)."""
    wandb: bool = False
    """Also log to Weights & Biases (optional dependency; offline without an API key: trainer/wandb_log.py)."""
    wandb_project: str = "metta-agent"
    """The W&B project; the W&B run is named after the run directory."""
    torch_threads: int = 0
    """Intra-op threads for torch; 0 lets torch decide (with several ranks: an equal share of the cores)."""
    compile: bool = False
    """torch.compile the policy's encoder and heads; the LSTM core stays eager."""
    compile_backend: str = "inductor"
    """torch.compile backend: ``inductor`` generates kernels; ``aot_eager`` compiles fast (for tests)."""
    compile_mode: str = "default"
    """torch.compile mode for inductor: default, reduce-overhead, max-autotune, max-autotune-no-cudagraphs."""
    overlap: bool = False
    """Double-buffered rollout: the policy acts for one half of the envs while workers step the other half
    (needs env_workers >= 2)."""


@dataclass
class RunConfig:
    agent: AgentSettings = field(default_factory=AgentSettings)
    game: GameSettings = field(default_factory=GameSettings)
    trainer: TrainerSettings = field(default_factory=TrainerSettings)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self, agents_per_env: int) -> None:
        """Check the batch arithmetic for a game with ``agents_per_env`` agents."""
        t = self.trainer
        positive = ("num_envs", "batch_size", "minibatch_size", "bptt_horizon", "update_epochs", "checkpoint_interval",
                    "max_skipped_updates_in_a_row", "eval_episodes")
        for name in positive:
            if getattr(t, name) <= 0:
                raise UsageError(f"trainer.{name} must be positive, got {getattr(t, name)}")
        if t.batch_size % t.bptt_horizon:
            raise UsageError(
                f"trainer.batch_size {t.batch_size} must be divisible by trainer.bptt_horizon {t.bptt_horizon}"
            )
        if t.minibatch_size % t.bptt_horizon:
            raise UsageError(
                f"trainer.minibatch_size {t.minibatch_size} must be divisible by trainer.bptt_horizon {t.bptt_horizon}"
            )
        if t.batch_size % t.minibatch_size:
            raise UsageError(
                f"trainer.batch_size {t.batch_size} must be divisible by trainer.minibatch_size {t.minibatch_size}"
            )
        agents = agents_per_env * t.num_envs
        step = agents * t.bptt_horizon
        if t.batch_size % step:
            lower = max(step, t.batch_size // step * step)
            raise UsageError(
                f"trainer.batch_size {t.batch_size} must be a multiple of agents x bptt_horizon = "
                f"{agents} x {t.bptt_horizon} = {step} (each agent fills whole segments); try {lower}"
            )
        if t.lr_schedule not in ("constant", "linear", "cosine"):
            raise UsageError(f"trainer.lr_schedule must be constant, linear or cosine, got '{t.lr_schedule}'")
        ranges = (
            ("total_agent_steps", t.total_agent_steps >= 1, "at least 1"),
            ("lr", t.lr > 0, "positive"),
            ("lr_final_ratio", 0 <= t.lr_final_ratio <= 1, "in [0, 1]"),
            ("gamma", 0 < t.gamma <= 1, "in (0, 1]"),
            ("gae_lambda", 0 <= t.gae_lambda <= 1, "in [0, 1]"),
            ("clip_coef", t.clip_coef > 0, "positive"),
            ("vf_clip_coef", t.vf_clip_coef >= 0, "0 or more"),
            ("ent_coef", t.ent_coef >= 0, "0 or more"),
            ("vf_coef", t.vf_coef >= 0, "0 or more"),
            ("max_grad_norm", t.max_grad_norm > 0, "positive"),
            ("adam_eps", t.adam_eps > 0, "positive"),
            ("adam_beta1", 0 <= t.adam_beta1 < 1, "in [0, 1)"),
            ("adam_beta2", 0 <= t.adam_beta2 < 1, "in [0, 1)"),
            ("l2_init_loss_coef", t.l2_init_loss_coef >= 0, "0 or more"),
            ("torch_threads", t.torch_threads >= 0, "0 (torch decides) or more"),
            ("env_workers", t.env_workers >= 0, "0 (in process) or more"),
            ("seed", t.seed >= 0, "0 or more"),
        )
        for name, ok, wanted in ranges:
            if not ok:
                raise UsageError(f"trainer.{name} must be {wanted}, got {getattr(t, name)}")
        a = self.agent
        for name, value in (("clip_range", a.clip_range), ("l2_init_scale", a.l2_init_scale),
                            ("analyze_weights_interval", a.analyze_weights_interval)):
            if value < 0:
                raise UsageError(f"agent.{name} must be 0 (off) or more, got {value}")
        if self.game.max_steps is not None and self.game.max_steps < 1:
            raise UsageError(f"game.max_steps must be at least 1, got {self.game.max_steps}")
        if t.eval_interval < 0:
            raise UsageError(f"trainer.eval_interval must be 0 (off) or a number of epochs, got {t.eval_interval}")
        if t.keep_checkpoints < 1:
            raise UsageError(f"trainer.keep_checkpoints must be at least 1, got {t.keep_checkpoints}")
        if t.overlap and (t.env_workers < 2 or t.num_envs < 2):
            raise UsageError(
                f"trainer.overlap steps two halves of the envs in worker processes: it needs trainer.env_workers >= 2 "
                f"and trainer.num_envs >= 2, got env_workers {t.env_workers}, num_envs {t.num_envs}"
            )
        if not re.fullmatch(r"cpu|cuda(:\d+)?", t.device):
            raise UsageError(f"trainer.device must be cpu, cuda or cuda:N, got '{t.device}'")
        if t.kickstart is not None:
            from metta_agent.trainer.kickstart import parse

            parse(t.kickstart)
        compile_modes = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
        if t.compile_mode not in compile_modes:
            raise UsageError(f"trainer.compile_mode must be one of {', '.join(compile_modes)}, got '{t.compile_mode}'")


# Game-specific defaults: a 24-agent arena and a 4-agent heart game need different batch geometry.
GAME_TRAINER_DEFAULTS: dict[str, dict[str, Any]] = {
    # The arena learns only with many more optimizer steps than the reference's 4 per epoch: 4 passes of 12
    # minibatches at lr 1e-3 (docs/learning.md; the reference values stayed near random play).
    "arena": {"num_envs": 8, "batch_size": 12288, "minibatch_size": 1024, "update_epochs": 4, "lr": 1e-3},
    "arena_room": {"num_envs": 8, "batch_size": 12288, "minibatch_size": 1024, "update_epochs": 4, "lr": 1e-3},
    # The small game is for quick demos: more, larger updates per epoch learn it within 1M agent steps
    # (with the reference's 1 pass of 4 minibatches at lr 4.6e-4 it had not learned after 1M).
    "heart": {"num_envs": 32, "batch_size": 8192, "minibatch_size": 1024, "update_epochs": 4, "lr": 1e-3,
              "eval_interval": 10, "eval_episodes": 16},
}

def _defaults_game(game: GameSettings) -> str:
    """The game whose trainer defaults apply: the game, or a mixture's first game."""
    if isinstance(game.mixture, list) and game.mixture:
        first = game.mixture[0]
        return str(first.get("game") if isinstance(first, dict) else first)
    return game.name


_AGENT_FIELDS = {f.name for f in dataclasses.fields(AgentSettings)} - {"kwargs"}


def build_config(layers: list[dict[str, Any]]) -> RunConfig:
    """Merge config layers (lowest precedence first) onto the defaults and check every key."""
    merged: dict[str, Any] = {}
    for layer in layers:
        for section, values in layer.items():
            # A section that is not a mapping would be silently replaced by a later layer's mapping.
            if not isinstance(values, dict):
                raise UsageError(f"config section '{section}' must be a mapping of keys, got {values!r:.60}")
        _deep_merge(merged, layer)
    unknown_sections = set(merged) - {"agent", "game", "trainer"}
    if unknown_sections:
        raise UsageError(f"unknown config section '{sorted(unknown_sections)[0]}'; sections are: agent, game, trainer")
    game = _fill(GameSettings(), merged.get("game", {}), "game")
    trainer_values = dict(GAME_TRAINER_DEFAULTS.get(_defaults_game(game), {}))
    trainer_values.update(merged.get("trainer", {}))
    trainer = _fill(TrainerSettings(), trainer_values, "trainer")
    agent_values = dict(merged.get("agent", {}))
    kwargs = agent_values.pop("kwargs", None) or {}
    if not isinstance(kwargs, dict):
        raise UsageError(f"agent.kwargs must be a mapping of architecture parameters, got {kwargs!r:.60}")
    kwargs = dict(kwargs)
    # Architecture kwargs may be given flat (agent.hidden_size=256): everything not a common key.
    for key in list(agent_values):
        if key not in _AGENT_FIELDS:
            kwargs[key] = agent_values.pop(key)
    agent = _fill(AgentSettings(), agent_values, "agent")
    agent.kwargs = kwargs
    return RunConfig(agent=agent, game=game, trainer=trainer)


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"config file '{path}' does not exist")
    try:
        data = yaml.safe_load(read_text_file(path, "config file")) or {}
    except yaml.YAMLError as error:
        raise UsageError(f"config file '{path}' is not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UsageError(f"config file '{path}' must hold a mapping with sections agent, game, trainer")
    return data


def parse_set(assignments: list[str]) -> dict[str, Any]:
    """``["trainer.bptt_horizon=16", ...]`` -> nested dict; values parsed as YAML scalars."""
    result: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        if not sep or not key or "." not in key:
            raise UsageError(f"--set takes section.key=value (e.g. trainer.bptt_horizon=16), got '{assignment}'")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        node = result
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return result


def _fill(settings: Any, values: dict[str, Any], section: str) -> Any:
    if not isinstance(values, dict):
        raise UsageError(f"config section '{section}' must be a mapping")
    fields = {f.name: f for f in dataclasses.fields(settings)}
    for key, value in values.items():
        if key not in fields:
            allowed = ", ".join(sorted(fields))
            raise UsageError(f"unknown config key '{section}.{key}'; allowed keys: {allowed}")
        setattr(settings, key, _coerce(value, getattr(settings, key), f"{section}.{key}"))
    return settings


def _coerce(value: Any, default: Any, name: str) -> Any:
    if default is None or value is None:
        return value
    kind = type(default)
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise UsageError(f"{name} must be true or false, got {value!r}")
    if kind in (int, float):
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"{name} must be a finite number, got {value!r}")
        if isinstance(value, str):
            # YAML 1.1 reads "1e-3" (no dot) as a string; a user writing it means the number.
            try:
                value = float(value) if kind is float else int(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"{name} must be a number, got {value!r}")
        if kind is int and float(value) != int(value):
            raise UsageError(f"{name} must be a whole number, got {value!r}")
        return kind(value)
    if kind is str and not isinstance(value, str):
        raise UsageError(f"{name} must be a string, got {value!r}")
    return value


def _deep_merge(target: dict[str, Any], source: dict[str, Any]) -> None:
    for key, value in source.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _deep_merge(target[key], value)
        else:
            target[key] = value
