"""Continuing a run, all its rules in one place (docs/design.md, "Checkpoints and resume"): which settings a
resume may change, what a checkpoint of the trainer holds (weights, optimizer, schedule, the epoch and
agent-step counters, every random stream) and how it is put back. The environments are not saved: a resumed
run draws new maps (``seeding.env_seed``) and starts new episodes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from metta_agent import seeding
from metta_agent.config import RunConfig, build_config, load_yaml, parse_set
from metta_agent.errors import UsageError, first_line
from metta_agent.game_source import games_metadata, run_label

# Command-line flags that choose what a run is: a resume reads them from the run's config.yaml.
FIXED_FLAGS = ("agent", "game", "seed", "config")


def resume_config(run_dir: Path | None, given_flags: list[str], sets: list[str], steps: int | None,
                  device: str | None) -> RunConfig:
    """The saved ``config.yaml`` of ``run_dir`` with ``--steps``, ``--device`` and ``--set trainer.*`` applied;
    ``given_flags`` are the fixed flags the user passed (each one is an error)."""
    if run_dir is None:
        raise UsageError("--resume needs --run-dir, the directory of the run to continue")
    for flag in given_flags:
        raise UsageError(f"--{flag} cannot change a resumed run (it is read from {run_dir}/config.yaml)")
    saved = Path(run_dir) / "config.yaml"
    if not saved.is_file():
        raise UsageError(f"'{run_dir}' is not a run directory: it has no config.yaml")
    overrides = parse_set(sets)
    if set(overrides) - {"trainer"}:
        raise UsageError("with --resume, --set may only change trainer.* keys (the agent and game are fixed)")
    layers = [load_yaml(saved), overrides]
    if steps is not None:
        layers.append({"trainer": {"total_agent_steps": steps}})
    if device is not None:
        layers.append({"trainer": {"device": device}})
    return build_config(layers)


def trainer_checkpoint(trainer) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(metadata, tensors)`` of everything ``restore`` needs to continue ``trainer`` exactly."""
    metadata = {
        "agent": trainer.agent.metadata(),
        "config": trainer.config.to_dict(),
        "game": run_label(trainer.games),
        "games": games_metadata(trainer.games),
        "trainer": {
            "epoch": trainer.state.epoch,
            "agent_steps": trainer.state.agent_steps,
            "skipped_updates": trainer.state.skipped_updates,
            "numpy_rng": _numpy_rng_state(),
            "world_size": trainer.world.world_size,
        },
    }
    tensors = {
        "model": trainer.agent.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "minibatch_rng": trainer.minibatch_generator.get_state(),
    }
    return metadata, tensors


def counters(metadata: dict[str, Any], path: Path) -> tuple[int, int, int]:
    """``(epoch, agent_steps, skipped_updates)`` of a checkpoint."""
    trainer = metadata.get("trainer", {})
    try:
        return int(trainer["epoch"]), int(trainer["agent_steps"]), int(trainer.get("skipped_updates", 0))
    except (KeyError, TypeError, ValueError):
        raise UsageError(f"'{path}' has no trainer counters (epoch, agent_steps): it cannot be resumed") from None


def restore(trainer, metadata: dict[str, Any], payload: dict[str, Any], path: Path) -> None:
    """Load weights, optimizer, schedule and random streams from a checkpoint of this run. Under DDP the
    checkpoint holds rank 0's streams only: every rank then draws its own again."""
    saved_agent = metadata.get("agent", {}).get("settings", {}).get("name")
    if saved_agent != trainer.config.agent.name:
        raise UsageError(f"'{path}' holds a '{saved_agent}' agent, but this run trains '{trainer.config.agent.name}'")
    try:
        trainer.agent.load_state_dict(payload["model"])
        trainer.optimizer.load_state_dict(payload["optimizer"])
        trainer.scheduler.load_state_dict(payload["scheduler"])
        torch.set_rng_state(payload["torch_rng"])
        trainer.minibatch_generator.set_state(payload["minibatch_rng"])
    except (KeyError, RuntimeError, ValueError) as error:
        raise UsageError(f"cannot resume from '{path}': {first_line(error)[:160]}") from None
    _apply_optimizer_settings(trainer)
    numpy_rng = metadata.get("trainer", {}).get("numpy_rng")
    if numpy_rng is not None:
        np.random.set_state(_numpy_rng_from_json(numpy_rng))
    world = trainer.world
    if world.distributed:
        fresh = seeding.resumed_rank_seed(trainer.config.trainer.seed, world.rank, trainer.state.epoch)
        torch.manual_seed(fresh)
        trainer.minibatch_generator.manual_seed(fresh)


def _apply_optimizer_settings(trainer) -> None:
    """The run's config, not the checkpoint, sets the optimizer's hyperparameters and the schedule's base:
    the loaded state carries the values the run started with, so a ``--set trainer.lr`` (or ``adam_*``) given
    on resume would otherwise be ignored, and a longer ``--steps`` would take effect one epoch late. With the
    same settings this changes nothing: the rate is the one the checkpoint saved."""
    cfg = trainer.config.trainer
    scheduler = trainer.scheduler
    scheduler.base_lrs = [cfg.lr] * len(trainer.optimizer.param_groups)
    rates = [cfg.lr * rule(scheduler.last_epoch) for rule in scheduler.lr_lambdas]
    for group, rate in zip(trainer.optimizer.param_groups, rates):
        group.update(lr=rate, initial_lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps)


def _numpy_rng_state() -> list[Any]:
    name, keys_, position, has_gauss, cached = np.random.get_state()
    return [name, keys_.tolist(), int(position), int(has_gauss), float(cached)]


def _numpy_rng_from_json(state: list[Any]) -> tuple[Any, ...]:
    name, keys_, position, has_gauss, cached = state
    return name, np.asarray(keys_, dtype=np.uint32), position, has_gauss, cached
