"""Parity checks: the component form and the PyTorch form of an architecture are the same network.

Every check runs on observations from the real engine. ``check_architecture`` returns a report with one
entry per check (its measured difference and tolerance); ``metta-agent parity`` prints them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from tensordict import TensorDict

from metta_agent import contract as keys
from metta_agent.agent.metta_agent import MettaAgent
from metta_agent.agent.registry import build_agent, pytorch_twin
from metta_agent.agent.transfer import transfer_weights
from metta_agent.config import AgentSettings, build_config
from metta_agent.env import VecEnv
from metta_agent.env.info import EnvInfo
from metta_agent.games import make_game
from metta_agent.trainer.ppo import ppo_loss

ARCHITECTURES = ("fast", "latent_attn_tiny", "latent_attn_small", "latent_attn_med")
OUTPUT_TOLERANCE = 1e-5
GRADIENT_TOLERANCE = 1e-5  # relative to the largest gradient magnitude
TRAINING_TOLERANCE = 1e-5
ROLLOUT_STEPS = 32
PARITY_GAME = "heart"
PARITY_MAX_STEPS = 13  # short episodes: agents start new episodes inside the 32-step rollout


@dataclass
class Check:
    name: str
    difference: float
    tolerance: float
    detail: str = ""

    @property
    def ok(self) -> bool:
        return math.isfinite(self.difference) and self.difference <= self.tolerance


@dataclass
class ParityReport:
    agent: str
    params_component: int = 0
    params_pytorch: int = 0
    checks: list[Check] = field(default_factory=list)
    drift: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(check.ok for check in self.checks)

    @property
    def max_abs_diff(self) -> float:
        outputs = [c.difference for c in self.checks if c.name in ("rollout_outputs", "training_outputs")]
        return max(outputs) if outputs else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "agent": self.agent,
            "ok": self.ok,
            "params_component": self.params_component,
            "params_pytorch": self.params_pytorch,
            "max_abs_diff": self.max_abs_diff,
            "checks": [{"name": c.name, "ok": c.ok, "difference": c.difference, "tolerance": c.tolerance,
                        "detail": c.detail} for c in self.checks],
            "parameter_drift_by_epoch": self.drift,
        }


def build_pair(name: str, env: EnvInfo, seed: int, **settings: Any) -> tuple[MettaAgent, MettaAgent]:
    """Both forms of ``name`` built from the same torch seed."""
    twin = pytorch_twin(name)
    if twin is None:
        raise ValueError(f"'{name}' has no PyTorch twin")
    forms = []
    for form in (name, twin):
        torch.manual_seed(seed)
        forms.append(build_agent(AgentSettings(name=form, **settings), env))
    return forms[0], forms[1]


def max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).abs().max()) if a.numel() else 0.0


def parameter_difference(a: MettaAgent, b: MettaAgent) -> float:
    pairs = list(zip(a.policy.parameters(), b.policy.parameters()))
    return max(max_difference(x, y) if x.shape == y.shape else math.inf for x, y in pairs)


def engine_rollout(env_info: EnvInfo, game, agent: MettaAgent, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Observations and restart flags ``[N, T, ...]`` from the real engine, acting with ``agent``."""
    with VecEnv(game, num_envs=2, seed=seed) as env:
        obs = [torch.from_numpy(env.reset().copy())]
        starts = [torch.ones(env.num_agents, dtype=torch.bool)]
        agent.reset_memory()
        with torch.inference_mode():
            for _ in range(ROLLOUT_STEPS - 1):
                td = TensorDict({keys.ENV_OBS: obs[-1], keys.STARTS: starts[-1]}, batch_size=[env.num_agents])
                actions = agent(td)[keys.ACTIONS].numpy()
                next_obs, _, terminals, truncations = env.step(actions)
                obs.append(torch.from_numpy(next_obs.copy()))
                starts.append(torch.from_numpy(terminals | truncations))
        agent.reset_memory()
    return torch.stack(obs, 1), torch.stack(starts, 1)


def step_outputs(agent: MettaAgent, obs: torch.Tensor, starts: torch.Tensor,
                 actions: torch.Tensor | None = None) -> TensorDict:
    """Rollout-mode outputs of every step, ``[N, T]``; with ``actions``, those actions are scored."""
    n, steps = starts.shape
    agent.reset_memory()
    outputs = []
    with torch.inference_mode():
        for t in range(steps):
            td = TensorDict({keys.ENV_OBS: obs[:, t], keys.STARTS: starts[:, t]}, batch_size=[n])
            if actions is not None:
                td[keys.ACTIONS] = actions[:, t]
            outputs.append(agent(td).exclude(keys.ENTROPY))
    agent.reset_memory()
    return torch.stack(outputs, 1)


def check_architecture(name: str, seed: int = 0) -> ParityReport:
    report = ParityReport(agent=name)
    game = make_game(PARITY_GAME, max_steps=PARITY_MAX_STEPS)
    env_info = EnvInfo.from_game(game)
    component, pytorch = build_pair(name, env_info, seed)
    report.params_component, report.params_pytorch = component.total_params, pytorch.total_params

    # 1. Same seed, same weights; and a transfer from perturbed weights gives the same weights.
    shapes_equal = [p.shape for p in component.policy.parameters()] == [p.shape for p in pytorch.policy.parameters()]
    report.checks.append(Check("initial_weights", parameter_difference(component, pytorch) if shapes_equal
                               else math.inf, 0.0, f"{report.params_component:,} parameters each"))
    with torch.no_grad():
        generator = torch.Generator().manual_seed(seed + 1)
        for parameter in pytorch.policy.parameters():
            parameter.add_(0.01 * torch.randn(parameter.shape, generator=generator))
    transfer_weights(pytorch, component)
    forward = parameter_difference(component, pytorch)
    torch.manual_seed(seed + 2)
    fresh = build_agent(AgentSettings(name=name), env_info)
    transfer_weights(component, fresh)
    report.checks.append(Check("weight_transfer", max(forward, parameter_difference(fresh, component)), 0.0,
                               "pytorch -> component -> new component"))

    # 2. Rollout outputs and recurrent state over 32 engine steps with episode restarts.
    obs, starts = engine_rollout(env_info, game, component, seed)
    out_c = step_outputs(component, obs, starts)
    out_p = step_outputs(pytorch, obs, starts, out_c[keys.ACTIONS])
    rollout_diff = max(max_difference(out_c[k], out_p[k])
                       for k in (keys.FULL_LOG_PROBS, keys.VALUES, keys.LSTM_H, keys.LSTM_C, keys.ACT_LOG_PROB))
    restarts = int(starts[:, 1:].sum())
    report.checks.append(Check("rollout_outputs", rollout_diff, OUTPUT_TOLERANCE,
                               f"{ROLLOUT_STEPS} steps, {restarts} mid-rollout episode starts"))

    # 3. Training mode on [B, TT] segments (state from the rollout at t = 0, restarts inside).
    bptt = 8
    segments = out_c.reshape(-1, bptt)
    inputs = (keys.ENV_OBS, keys.STARTS, keys.ACTIONS, keys.LSTM_H, keys.LSTM_C)
    train_c, train_p = component(segments.select(*inputs).clone()), pytorch(segments.select(*inputs).clone())
    training_diff = max(max_difference(train_c[k], train_p[k])
                        for k in (keys.FULL_LOG_PROBS, keys.VALUES, keys.ACT_LOG_PROB, keys.ENTROPY))
    report.checks.append(Check("training_outputs", training_diff, OUTPUT_TOLERANCE,
                               f"{segments.batch_size[0]} segments of {bptt}"))

    # 4. Gradients of the PPO loss.
    report.checks.append(_gradient_check(component, pytorch, segments, seed))

    # 5. clip_weights(), l2_init_loss() and weight-metric names.
    report.checks.extend(_weight_management_checks(name, env_info, seed))

    # 6. Training: first epoch metrics and parameters after the first update.
    report.checks.extend(_training_checks(name, report, seed))
    return report


def _gradient_check(component: MettaAgent, pytorch: MettaAgent, segments: TensorDict, seed: int) -> Check:
    generator = torch.Generator().manual_seed(seed + 3)
    batch = segments.select(keys.ENV_OBS, keys.STARTS, keys.ACTIONS, keys.LSTM_H, keys.LSTM_C,
                            keys.ACT_LOG_PROB, keys.VALUES).clone()
    batch[keys.ADVANTAGES] = torch.randn(batch.batch_size, generator=generator)
    batch[keys.RETURNS] = torch.randn(batch.batch_size, generator=generator)
    config = build_config([{"trainer": {"l2_init_loss_coef": 0.01}}]).trainer
    gradients = []
    for agent in (component, pytorch):
        agent.zero_grad(set_to_none=True)
        ppo_loss(agent, batch.clone(), config).loss.backward()
        gradients.append([p.grad if p.grad is not None else torch.zeros_like(p) for p in agent.policy.parameters()])
    largest = max(float(g.abs().max()) for g in gradients[1])
    difference = max(max_difference(a, b) for a, b in zip(*gradients))
    return Check("ppo_gradients", difference / max(largest, 1e-12), GRADIENT_TOLERANCE,
                 f"max |grad| {largest:.3g}")


def _weight_management_checks(name: str, env_info: EnvInfo, seed: int) -> list[Check]:
    component, pytorch = build_pair(name, env_info, seed, clip_range=0.3, l2_init_scale=0.5)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(seed + 4)
        for parameter in pytorch.policy.parameters():
            parameter.mul_(3).add_(0.05 * torch.randn(parameter.shape, generator=generator))
    transfer_weights(pytorch, component)
    with torch.no_grad():  # a number to compare, not a loss to differentiate
        l2 = abs(float(component.l2_init_loss()) - float(pytorch.l2_init_loss()))
        l2_scale = max(abs(float(pytorch.l2_init_loss())), 1.0)
    component.clip_weights()
    pytorch.clip_weights()
    clipped_before = parameter_difference(component, pytorch)
    names_equal = sorted(component.compute_weight_metrics()) == sorted(pytorch.compute_weight_metrics())
    layers = ", ".join(pytorch.weights.layer_names)
    return [
        Check("clip_weights", clipped_before, 0.0, f"clip_range 0.3 over {layers}"),
        Check("l2_init_loss", l2 / l2_scale, OUTPUT_TOLERANCE, "relative"),
        Check("weight_metric_names", 0.0 if names_equal else math.inf, 0.0),
    ]


def _training_checks(name: str, report: ParityReport, seed: int, epochs: int = 3) -> list[Check]:
    """Train each form from the same seed (one after the other: sampling uses torch's global RNG)."""
    from metta_agent.trainer.trainer import Trainer

    layers = [{"game": {"name": PARITY_GAME, "max_steps": 40},
               "trainer": {"num_envs": 4, "batch_size": 512, "minibatch_size": 256, "bptt_horizon": 16,
                           "total_agent_steps": 512 * epochs, "seed": seed}}]
    runs = []
    for form in (name, pytorch_twin(name)):
        trainer = Trainer(build_config(layers + [{"agent": {"name": form}}]), None, show_progress=False)
        try:
            history = []
            for _ in range(epochs):
                metrics = trainer.run_epoch()
                history.append((metrics, [p.detach().clone() for p in trainer.agent.policy.parameters()]))
            runs.append(history)
        finally:
            trainer.env.close()
    for (_, params_c), (_, params_p) in zip(*runs):
        report.drift.append(max(max_difference(a, b) for a, b in zip(params_c, params_p)))
    first_c, first_p = runs[0][0][0], runs[1][0][0]
    relative = 0.0
    for key in ("policy_loss", "value_loss", "entropy", "approx_kl", "explained_variance", "importance_ratio"):
        a, b = first_c[key], first_p[key]
        relative = max(relative, abs(a - b) / max(abs(a), abs(b), 1e-8))
    return [
        Check("first_epoch_metrics", relative, TRAINING_TOLERANCE, "relative: losses, entropy, KL, ..."),
        Check("params_after_first_update", report.drift[0], TRAINING_TOLERANCE,
              "drift by epoch: " + ", ".join(f"{d:.1e}" for d in report.drift)),
    ]
