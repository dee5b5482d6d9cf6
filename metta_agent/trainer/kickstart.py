"""Kickstarting: a student learns from teacher checkpoints as well as from its rewards (docs/design.md,
"Kickstarting").

``trainer.kickstart: {teachers: [{path: RUN_OR_CHECKPOINT, action_loss_coef: A, value_loss_coef: V}],
anneal_steps: N}``. Each teacher adds ``A * KL(pi_T || pi_S) + V * (v_S - v_T)^2`` to the loss, both averaged
over the minibatch's agent steps, with ``KL(pi_T || pi_S) = sum_a pi_T(a) (log pi_T(a) - log pi_S(a))``.
The coefficients fall linearly to 0 over the first ``anneal_steps`` agent steps of the run (a resume continues
the schedule from its step count); after that no teacher runs.

Teachers act during the rollout on the student's own observations, in inference mode, scoring the actions
the student sampled (so they draw no random numbers); their log-probabilities and values are stored in the
experience buffer beside the student's. Each teacher keeps its own recurrent memory per agent row, reset at
the same episode starts as the student's. A teacher is any architecture in either form, read by the safe
checkpoint loader and re-initialised to the student's game by name; it must know every action of the game.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from tensordict import TensorDict

from metta_agent import contract as keys
from metta_agent.errors import UsageError

TEACHER_KEYS = ("path", "action_loss_coef", "value_loss_coef")


@dataclass
class Teacher:
    index: int
    path: str
    action_loss_coef: float
    value_loss_coef: float
    agent: Any = None

    @property
    def log_probs_key(self) -> str:
        return f"kickstart_{self.index}_log_probs"

    @property
    def values_key(self) -> str:
        return f"kickstart_{self.index}_values"


def parse(settings: Any) -> tuple[list[Teacher], int]:
    """``trainer.kickstart`` as teachers and the anneal length; a one-line error for anything malformed."""
    if not isinstance(settings, dict) or set(settings) - {"teachers", "anneal_steps"}:
        raise UsageError("trainer.kickstart must be {teachers: [{path: RUN_OR_CHECKPOINT, action_loss_coef: A, "
                         "value_loss_coef: V}], anneal_steps: N}")
    entries = settings.get("teachers")
    if not isinstance(entries, list) or not entries:
        raise UsageError("trainer.kickstart.teachers must list at least one teacher {path, action_loss_coef, "
                         "value_loss_coef}")
    anneal = settings.get("anneal_steps")
    if isinstance(anneal, bool) or not isinstance(anneal, int) or anneal < 1:
        raise UsageError(f"trainer.kickstart.anneal_steps must be a positive whole number of agent steps, got "
                         f"{anneal!r}")
    teachers = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or "path" not in entry or set(entry) - set(TEACHER_KEYS):
            raise UsageError(f"kickstart teacher {index} must be {{path, action_loss_coef, value_loss_coef}}, got "
                             f"{entry!r:.80}")
        coefs = []
        for name in ("action_loss_coef", "value_loss_coef"):
            value = entry.get(name, 0.0)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise UsageError(f"kickstart teacher {index} ('{entry['path']}'): {name} must be a finite number "
                                 f">= 0, got {value!r}")
            coefs.append(float(value))
        teachers.append(Teacher(index, str(entry["path"]), *coefs))
    return teachers, anneal


class Kickstarter:
    """The teachers of a run: loaded, run during the rollout while their coefficients last, and scored in the
    loss."""

    def __init__(self, settings: Any, env_info, device: torch.device):
        from metta_agent.agent.loading import load_agent

        self.teachers, self.anneal_steps = parse(settings)
        for index, teacher in enumerate(self.teachers):
            # Building a network draws initial weights: keep the run's random stream as it was.
            with torch.random.fork_rng(devices=[]):
                try:
                    agent = load_agent(teacher.path)
                except UsageError as error:
                    raise UsageError(f"kickstart teacher {index}: {error}") from None
            missing = [name for name in env_info.action_names if name not in agent.action_rows]
            if missing:
                raise UsageError(f"kickstart teacher {index} ('{teacher.path}') never trained with the game's actions "
                                 f"{', '.join(missing[:5])}: teacher and student must share action names")
            agent.initialize_to_environment(env_info.features, env_info.action_names)
            agent.requires_grad_(False)
            teacher.agent = agent.to(device).eval()
        self.num_actions = len(env_info.action_names)

    def factor(self, agent_steps: int) -> float:
        """The share of the coefficients still in force at ``agent_steps`` (1 at step 0, 0 from anneal_steps)."""
        return max(0.0, 1.0 - agent_steps / self.anneal_steps)

    def active(self, agent_steps: int) -> bool:
        """Whether any teacher term is non-zero now (if not, no teacher runs)."""
        return self.factor(agent_steps) > 0 and any(t.action_loss_coef > 0 or t.value_loss_coef > 0
                                                    for t in self.teachers)

    def buffer_keys(self) -> dict[str, tuple[int, ...]]:
        """What each teacher stores per agent step: its log-probabilities and its value."""
        shapes: dict[str, tuple[int, ...]] = {}
        for teacher in self.teachers:
            shapes[teacher.log_probs_key] = (self.num_actions,)
            shapes[teacher.values_key] = ()
        return shapes

    @torch.inference_mode()
    def observe(self, step: TensorDict) -> dict[str, torch.Tensor]:
        """The teachers on the student's rollout step (its observations, starts, rows and sampled actions)."""
        out = {}
        for teacher in self.teachers:
            td = step.select(keys.ENV_OBS, keys.STARTS, keys.AGENT_ROWS, keys.ACTIONS).clone(recurse=False)
            scored = teacher.agent(td)
            out[teacher.log_probs_key] = scored[keys.FULL_LOG_PROBS]
            out[teacher.values_key] = scored[keys.VALUES]
        return out

    def loss(self, scored: TensorDict, minibatch: TensorDict, agent_steps: int
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """The teachers' terms for a scored minibatch, and their figures for the metrics."""
        factor = self.factor(agent_steps)
        total = torch.zeros((), device=scored[keys.VALUES].device)
        metrics: dict[str, float] = {"kickstart/factor": factor}
        student_log_probs = scored[keys.FULL_LOG_PROBS]
        for teacher in self.teachers:
            index = teacher.index
            teacher_log_probs = minibatch[teacher.log_probs_key]
            kl = (teacher_log_probs.exp() * (teacher_log_probs - student_log_probs)).sum(-1).mean()
            value_gap = ((scored[keys.VALUES] - minibatch[teacher.values_key]) ** 2).mean()
            action_coef = factor * teacher.action_loss_coef
            value_coef = factor * teacher.value_loss_coef
            total = total + action_coef * kl + value_coef * value_gap
            metrics.update({f"kickstart/{index}/action_loss": float(kl.detach()),
                            f"kickstart/{index}/value_loss": float(value_gap.detach()),
                            f"kickstart/{index}/action_coef": action_coef,
                            f"kickstart/{index}/value_coef": value_coef})
        return total, metrics
