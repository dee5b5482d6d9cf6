"""The PPO loss on one minibatch of segments, and the learning-rate schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tensordict import TensorDict

from metta_agent import contract as keys
from metta_agent.config import TrainerSettings


@dataclass
class LossParts:
    loss: torch.Tensor
    policy_loss: float
    value_loss: float
    entropy: float
    approx_kl: float
    clip_fraction: float
    ratio_mean: float
    ratio_max_dev: float
    l2_init_loss: float
    extra: dict[str, float]


def ppo_loss(agent, minibatch: TensorDict, cfg: TrainerSettings, forward=None, kickstart=None) -> LossParts:
    """Re-score the minibatch's stored actions with the current weights and build the clipped PPO loss.

    ``forward`` scores the minibatch (default: ``agent``); data-parallel training passes the agent's DDP
    wrapper, whose backward averages the gradients over the ranks. ``kickstart``: ``(Kickstarter, agent
    steps)`` adds the teachers' terms."""
    old_log_prob = minibatch[keys.ACT_LOG_PROB].clone()
    old_values = minibatch[keys.VALUES].clone()
    returns = minibatch[keys.RETURNS]
    advantages = minibatch[keys.ADVANTAGES]
    inputs = minibatch.select(keys.ENV_OBS, keys.STARTS, keys.ACTIONS, keys.LSTM_H, keys.LSTM_C)
    scored = (forward or agent)(inputs)
    log_ratio = scored[keys.ACT_LOG_PROB] - old_log_prob
    ratio = log_ratio.exp()
    if cfg.norm_adv:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    policy_loss = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)).mean()
    values = scored[keys.VALUES]
    clipped_values = old_values + (values - old_values).clamp(-cfg.vf_clip_coef, cfg.vf_clip_coef)
    value_loss = 0.5 * torch.max((values - returns) ** 2, (clipped_values - returns) ** 2).mean()
    entropy = scored[keys.ENTROPY].mean()
    loss = policy_loss - cfg.ent_coef * entropy + cfg.vf_coef * value_loss
    l2_init = torch.zeros(())
    if cfg.l2_init_loss_coef > 0:
        l2_init = agent.l2_init_loss()
        loss = loss + cfg.l2_init_loss_coef * l2_init
    extra: dict[str, float] = {}
    if kickstart is not None:
        teachers, agent_steps = kickstart
        teacher_loss, extra = teachers.loss(scored, minibatch, agent_steps)
        loss = loss + teacher_loss
    with torch.no_grad():
        return LossParts(
            loss=loss,
            policy_loss=float(policy_loss),
            value_loss=float(value_loss),
            entropy=float(entropy),
            approx_kl=float(((ratio - 1) - log_ratio).mean()),
            clip_fraction=float(((ratio - 1).abs() > cfg.clip_coef).float().mean()),
            ratio_mean=float(ratio.mean()),
            ratio_max_dev=float((ratio - 1).abs().max()),
            l2_init_loss=float(l2_init),
            extra=extra,
        )


def lr_lambda(cfg: TrainerSettings, total_epochs: int):
    """Multiplier of the base learning rate after ``epoch`` completed epochs."""
    final = cfg.lr_final_ratio
    span = max(total_epochs - 1, 1)

    def multiplier(epoch: int) -> float:
        progress = min(epoch / span, 1.0)
        if cfg.lr_schedule == "linear":
            return 1.0 - (1.0 - final) * progress
        if cfg.lr_schedule == "cosine":
            return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return multiplier


def explained_variance(predicted: torch.Tensor, target: torch.Tensor) -> float:
    variance = target.var()
    if variance == 0:
        return float("nan")
    return float(1 - (target - predicted).var() / variance)
