"""The training loop. One epoch reads top to bottom: rollout -> advantages -> minibatch updates -> log.

The agent keeps each agent's recurrent state in its memory (keyed by ``agent_rows``); the experience buffer
keeps the state each step entered with, so every training segment starts where the rollout was, and the
core's resets at episode starts reproduce the rollout's (docs/design.md, "Recurrent state").

Under torchrun every rank runs this same loop on its own envs (``trainer/distributed.py``): the update's
forward goes through DDP, so gradients are averaged; counts and SPS are over all ranks; rank 0 logs.
"""

from __future__ import annotations

import math
import signal
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict

from metta_agent import contract as keys
from metta_agent import seeding
from metta_agent.agent.metta_agent import MettaAgent
from metta_agent.agent.registry import build_agent
from metta_agent.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from metta_agent.config import RunConfig
from metta_agent.env import VecEnv
from metta_agent.errors import TrainingError
from metta_agent.game_source import GameEntry, game_mix, record_games, recorded_games, resolve_games
from metta_agent.trainer import distributed, resume
from metta_agent.trainer.experience import Experience
from metta_agent.trainer.ppo import explained_variance, lr_lambda, ppo_loss
from metta_agent.trainer.progress import Progress
from metta_agent.trainer.run_lock import RunDirLock
from metta_agent.trainer.run_log import RunLog


@dataclass
class TrainState:
    epoch: int = 0
    agent_steps: int = 0
    skipped_updates: int = 0
    """Optimizer steps skipped over the whole run because the loss or a gradient was not finite."""
    history: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    """PPO on one game. ``resume_from`` (a checkpoint file, or a run directory: its newest checkpoint) continues
    a run: weights, optimizer, schedule, RNG states and the epoch / agent-step counters come from the
    checkpoint, so the run goes on as if it had not stopped, except that the environments start new episodes
    (their C++ state is not saved). The trainer holds the run directory's writer lock (``run_lock.py``)."""

    def __init__(
        self,
        config: RunConfig,
        run_dir: Path | None = None,
        show_progress: bool = True,
        resume_from: Path | None = None,
        games: list[GameEntry] | None = None,
    ):
        self.config = config
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.world = distributed.current_world()
        # Bad settings are refused before anything touches the run directory. A resumed run plays the games it
        # recorded (game_source.py), whatever its game sources give now.
        # ``games`` (the Python API's MettaGridConfig objects) replace config.game's sources.
        recorded = recorded_games(config.game, self.run_dir) if resume_from is not None and self.run_dir else None
        self.games: list[GameEntry] = recorded or games or resolve_games(config.game)
        self.mix = game_mix(self.games)
        self.env_info = self.mix.info
        config.validate(self.env_info.agents_per_env)
        # One writer per run directory, taken before the checkpoint to resume from is even chosen.
        self._run_lock: RunDirLock | None = None
        if self.run_dir is not None and self.world.is_main:
            self._run_lock = RunDirLock(self.run_dir)
            self._run_lock.acquire()
        try:
            self._set_up(resume_from, show_progress)
        except BaseException:
            # A start that fails (an architecture too large for memory, a checkpoint refused...) leaves no new
            # run directory behind, and no environment workers.
            if getattr(self, "env", None) is not None:
                self.env.close()
            if self._run_lock is not None:
                self._run_lock.abandon()
            raise

    def _set_up(self, resume_from: Path | None, show_progress: bool) -> None:
        config, cfg = self.config, self.config.trainer
        self.device = distributed.resolve_device(cfg.device, self.world)
        threads = cfg.torch_threads or (distributed.default_torch_threads(self.world) if self.world.distributed else 0)
        if threads > 0:
            torch.set_num_threads(threads)
        torch.manual_seed(cfg.seed)  # the same on every rank: identical initial weights, clip bounds, L2 anchors
        np.random.seed(cfg.seed)
        self.state = TrainState()
        resumed = None
        if resume_from is not None:
            resumed = load_checkpoint(resume_from)
            self.state.epoch, self.state.agent_steps, self.state.skipped_updates = resume.counters(resumed[0],
                                                                                                  resume_from)

        self.agent: MettaAgent = build_agent(config.agent, self.env_info).to(self.device)
        if cfg.compile:
            from metta_agent.trainer.compiled import compile_policy

            compile_policy(self.agent, cfg.compile_backend, cfg.compile_mode)
        # What the update calls: the agent, or its DDP wrapper (gradients averaged over ranks). The rollout
        # calls the agent itself: no gradients there.
        self.train_forward = distributed.wrap_for_training(self.agent, self.device, self.world)
        if self.world.distributed:
            torch.manual_seed(seeding.rank_seed(cfg.seed, self.world.rank))  # each rank samples its own actions
        self.env = VecEnv(
            self.mix,
            num_envs=cfg.num_envs,
            seed=seeding.env_seed(cfg.seed, self.state.epoch),
            num_workers=cfg.env_workers,
            first_env_index=self.world.rank * cfg.num_envs,
        )
        self.num_agents = self.env.num_agents
        # Agent rows stepped together: all of them, or two halves of the workers when overlapping.
        self.row_groups = self.env.worker_row_groups(2) if cfg.overlap else [slice(0, self.num_agents)]
        self.steps_per_epoch = cfg.batch_size * self.world.world_size
        self.rollout_steps = cfg.batch_size // self.num_agents
        self.kickstarter = None
        if cfg.kickstart is not None:
            from metta_agent.trainer.kickstart import Kickstarter

            self.kickstarter = Kickstarter(cfg.kickstart, self.env_info, self.device)
        self.experience = Experience(
            self.num_agents, self.rollout_steps, cfg.bptt_horizon, self.env.obs_shape, self.agent.lstm_shape,
            self.device, extra=self.kickstarter.buffer_keys() if self.kickstarter is not None else None,
        )
        self.optimizer = torch.optim.Adam(
            self.agent.parameters(), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps
        )
        self.total_epochs = max(1, math.ceil(cfg.total_agent_steps / self.steps_per_epoch))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg, self.total_epochs))
        self.minibatch_generator = torch.Generator().manual_seed(seeding.rank_seed(cfg.seed, self.world.rank))
        if resumed is not None:
            resume.restore(self, *resumed, path=resume_from)
        self.show_progress = show_progress
        self._run_log: RunLog | None = None
        self._stop_requested = False
        self._skipped_in_a_row = 0
        # The observation and flags the next rollout step acts on.
        self.continue_from(self.env.reset(), np.ones(self.num_agents, dtype=bool))
        self._agent_ids = torch.arange(self.num_agents, device=self.device)
        # Page-locked staging for observations bound for a GPU: one asynchronous copy per step.
        self._pinned_obs = (torch.empty(self.num_agents, *self.env.obs_shape, dtype=torch.uint8).pin_memory()
                            if self.device.type == "cuda" else None)
        # The in-training evaluation plays a copy of the policy (rank 0 only), so the training agents' memory,
        # torch's global random stream and the train/eval mode stay untouched. Building the copy draws initial
        # weights: fork_rng puts the global stream back as it was.
        self._eval_agent: MettaAgent | None = None
        if cfg.eval_interval > 0 and self.world.is_main:
            with torch.random.fork_rng(devices=[]):
                self._eval_agent = build_agent(config.agent, self.env_info).to(self.device)

    # ---- main loop ----------------------------------------------------------------------------------------

    def train(self) -> TrainState:
        """Train to ``trainer.total_agent_steps`` (or until Ctrl-C); the run's state at the end."""
        for _ in self.epochs():
            pass
        return self.state

    def epochs(self):
        """Train epoch by epoch, yielding each epoch's metrics row after it is logged (a sweep reads the eval
        points this way and may stop early: closing the generator saves a checkpoint, as the end does)."""
        cfg = self.config.trainer
        self._open_logs()
        # Whole epochs: the run ends at the first epoch boundary at or past total_agent_steps.
        progress = Progress(self.total_epochs * self.steps_per_epoch, enabled=self.show_progress and self.world.is_main)
        previous_handler = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, self._request_stop)
        try:
            with progress:
                progress.update(self.state.agent_steps, None)
                while self.state.agent_steps < cfg.total_agent_steps and not self._stop_agreed():
                    metrics = self.run_epoch()
                    if self._eval_due():
                        metrics.update(self.evaluate_policy())
                    self._log(metrics)
                    progress.update(self.state.agent_steps, metrics)
                    if self.state.epoch % cfg.checkpoint_interval == 0:
                        self.save_checkpoint()
                    try:
                        yield metrics
                    except GeneratorExit:  # the consumer stopped early: keep what was trained
                        self.save_checkpoint()
                        raise
            if self._stop_requested:
                progress.note("interrupted: saving a checkpoint")
            self.save_checkpoint()
            if self.run_dir is not None and self.world.is_main:
                from metta_agent.plot import plot_learning_curve

                curve = plot_learning_curve(self.run_dir / "metrics.jsonl", self.run_dir / "curve.png")
                if self._run_log is not None:
                    self._run_log.finish(curve, last_eval(self.state.history))
        finally:
            signal.signal(signal.SIGINT, previous_handler)
            self.close()

    def close(self) -> None:
        """Release the environments, the logs and the run directory's writer lock (``train()`` does this at its
        end; call it after driving ``run_epoch()`` yourself)."""
        self._close_logs()
        self.env.close()

    # ---- evaluation during training -----------------------------------------------------------------------

    def _eval_due(self) -> bool:
        """Every ``trainer.eval_interval`` epochs (counted from the run's start, so a resume keeps the
        schedule) and after the last epoch."""
        if self._eval_agent is None:
            return False
        last = self.state.agent_steps >= self.config.trainer.total_agent_steps
        return last or self.state.epoch % self.config.trainer.eval_interval == 0

    def evaluate_policy(self) -> dict[str, float]:
        """``eval/<stat>`` (and ``eval/<stat>_stderr``) of the current policy on ``trainer.eval_episodes`` fresh
        maps, sampling actions. The maps are the evaluation domain's (never training's), the same at every
        eval point of the run, so points differ by the policy only. A mixture is evaluated on each of its games
        (``eval/<game>/<stat>``); ``eval/<stat>`` is then their weighted mean."""
        from metta_agent.evaluate import AgentActor, combine_summaries, run_episodes, summarize

        assert self._eval_agent is not None
        start = time.perf_counter()
        cfg = self.config.trainer
        self._eval_agent.load_state_dict(self.agent.state_dict())
        actor = AgentActor(self._eval_agent, seed=cfg.seed)
        if self.mix.is_mixture:
            per_game = {label: summarize(run_episodes(self.mix.only(index), cfg.eval_episodes, cfg.seed, actor))
                        for index, label in enumerate(self.mix.labels)}
            summary = combine_summaries(per_game, dict(zip(self.mix.labels, self.mix.weights)))
        else:
            summary = summarize(run_episodes(self.mix, cfg.eval_episodes, cfg.seed, actor))
        metrics = {f"eval/{name.removeprefix('mean_')}": value for name, value in summary.items()}
        metrics["eval_seconds"] = time.perf_counter() - start
        return metrics

    def run_epoch(self) -> dict[str, Any]:
        epoch_start = time.perf_counter()
        self.agent.train()
        episode_stats = self.rollout()
        rollout_time = time.perf_counter() - epoch_start
        update_metrics = self.update()
        self.scheduler.step()
        self.state.epoch += 1
        self.state.agent_steps += self.steps_per_epoch
        elapsed = time.perf_counter() - epoch_start
        metrics: dict[str, Any] = {
            "epoch": self.state.epoch,
            "agent_steps": self.state.agent_steps,
            "sps": self.steps_per_epoch / elapsed,
            "rollout_seconds": rollout_time,
            "update_seconds": elapsed - rollout_time,
            "world_size": self.world.world_size,
            "skipped_updates": self.state.skipped_updates,
            **_summarize_episodes(distributed.gather_lists(episode_stats, self.world)),
            **update_metrics,
            "lr": self.optimizer.param_groups[0]["lr"],
        }
        if self.world.distributed:
            metrics["replica_divergence"] = distributed.replica_divergence(self.agent, self.world)
        interval = self.config.agent.analyze_weights_interval
        if interval > 0 and self.state.epoch % interval == 0:
            metrics.update(self.agent.compute_weight_metrics())
        return metrics

    # ---- rollout ------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def rollout(self) -> list[dict[str, float]]:
        """``rollout_steps`` steps of every agent. With ``trainer.overlap`` the rows form two groups: while the
        policy acts for one group, the other group's workers step its envs (double buffering)."""
        experience = self.experience
        teachers = self._teachers_now()
        for t in range(self.rollout_steps):
            for group, rows in enumerate(self.row_groups):
                if t > 0:
                    self._receive_env_step(t - 1, group)
                step = self.policy_step(self._observations[group], self._starts[rows], rows)
                experience.store(t, step, rows)
                if teachers is not None:
                    experience.store_extra(t, teachers.observe(step), rows)
                self.env.step_async(step[keys.ACTIONS].cpu().numpy(), rows)
        for group in range(len(self.row_groups)):
            self._receive_env_step(self.rollout_steps - 1, group)
        # Bootstrap from the next observation without advancing the agents' memory.
        observations = self._observations[0] if len(self._observations) == 1 else torch.cat(self._observations)
        with self.agent.memory_frozen():
            bootstrap = self.policy_step(observations, self._starts)[keys.VALUES]
        cfg = self.config.trainer
        experience.compute_advantages(bootstrap, cfg.gamma, cfg.gae_lambda)
        return self.env.pop_episode_stats()

    def _teachers_now(self):
        """The kickstart teachers while their coefficients last (counted from the run's step 0), else None."""
        if self.kickstarter is None or not self.kickstarter.active(self.state.agent_steps):
            return None
        return self.kickstarter

    def continue_from(self, observations: np.ndarray, starts: np.ndarray) -> None:
        """Act next on these observations of every agent row and their episode-start flags: after ``env.reset()``,
        or after stepping ``self.env`` directly (as the bench does)."""
        observations = torch.from_numpy(observations)
        self._observations = [observations[rows] for rows in self.row_groups]
        self._starts = torch.from_numpy(starts).clone()

    def _receive_env_step(self, t: int, group: int) -> None:
        """Wait for row group ``group``'s envs to finish step ``t``: keep their observations (the env's own
        rows, valid until those rows step again), store the rewards and which observations start episodes."""
        rows = self.row_groups[group]
        observations, rewards, terminals, truncations = self.env.step_wait(rows)
        self._observations[group] = torch.from_numpy(observations)
        self._starts[rows] = torch.from_numpy(terminals | truncations)
        self.experience.store_outcome(
            t, torch.from_numpy(rewards).to(self.device), self._starts[rows].to(self.device), rows
        )

    def policy_step(self, obs: torch.Tensor, starts: torch.Tensor, rows: slice | None = None) -> TensorDict:
        """The policy on agent ``rows`` (all by default): samples actions and advances their memory. The
        rollout's step; public for the bench, which times it on captured observations."""
        rows = slice(0, obs.shape[0]) if rows is None else rows
        td = TensorDict(
            {
                keys.ENV_OBS: self._to_device(obs, rows),
                keys.STARTS: starts.to(self.device),
                keys.AGENT_ROWS: self._agent_ids[rows],
            },
            batch_size=[obs.shape[0]],
        )
        return self.agent(td)

    def _to_device(self, obs: torch.Tensor, rows: slice) -> torch.Tensor:
        if self._pinned_obs is None:
            return obs
        # Reusing the staging rows is safe: the previous copy from them finished when that step's actions
        # were read back (``.cpu()`` waits for the GPU).
        staged = self._pinned_obs[rows]
        staged.copy_(obs)
        return staged.to(self.device, non_blocking=True)

    # ---- update -------------------------------------------------------------------------------------------

    def update(self) -> dict[str, float]:
        cfg = self.config.trainer
        segments_per_minibatch = cfg.minibatch_size // cfg.bptt_horizon
        totals: dict[str, float] = {}
        count = 0
        ratio_dev_before_update = None
        teachers = self._teachers_now()
        kickstart = (teachers, self.state.agent_steps) if teachers is not None else None
        for _ in range(cfg.update_epochs):
            for minibatch in self.experience.minibatches(segments_per_minibatch, self.minibatch_generator):
                parts = ppo_loss(self.agent, minibatch, cfg, forward=self.train_forward, kickstart=kickstart)
                if ratio_dev_before_update is None:
                    ratio_dev_before_update = parts.ratio_max_dev
                self.optimizer.zero_grad(set_to_none=True)
                parts.loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(self.agent.parameters(), cfg.max_grad_norm)
                # Agreed over the ranks: one rank skipping a step the others take would split the replicas.
                if distributed.any_rank(not (torch.isfinite(parts.loss) and torch.isfinite(grad_norm)), self.world):
                    self._skip_update(float(parts.loss), float(grad_norm))
                    continue
                self._skipped_in_a_row = 0
                self.optimizer.step()
                self.agent.clip_weights()
                for name, value in (
                    ("policy_loss", parts.policy_loss),
                    ("value_loss", parts.value_loss),
                    ("entropy", parts.entropy),
                    ("approx_kl", parts.approx_kl),
                    ("clip_fraction", parts.clip_fraction),
                    ("importance_ratio", parts.ratio_mean),
                    ("l2_init_loss", parts.l2_init_loss),
                    ("grad_norm", float(grad_norm)),
                    *parts.extra.items(),
                ):
                    totals[name] = totals.get(name, 0.0) + value
                count += 1
        metrics = {name: value / count for name, value in totals.items()} if count else {}
        data = self.experience.data
        metrics["explained_variance"] = explained_variance(data[keys.VALUES].flatten(), data[keys.RETURNS].flatten())
        metrics["ratio_dev_before_update"] = ratio_dev_before_update
        return metrics

    def _skip_update(self, loss: float, grad_norm: float) -> None:
        """Drop this minibatch's step: a non-finite loss or gradient would poison the weights and Adam's moments."""
        self.optimizer.zero_grad(set_to_none=True)
        self.state.skipped_updates += 1
        self._skipped_in_a_row += 1
        limit = self.config.trainer.max_skipped_updates_in_a_row
        where = f"epoch {self.state.epoch + 1}: loss {loss}, gradient norm {grad_norm}"
        if self._skipped_in_a_row >= limit:
            raise TrainingError(
                f"{self._skipped_in_a_row} updates in a row had a non-finite loss or gradient ({where}); stopping. "
                "Try a lower trainer.lr or trainer.max_grad_norm, or resume from an earlier checkpoint."
            )
        warnings.warn(f"skipped an update with a non-finite loss or gradient ({where})", RuntimeWarning, stacklevel=2)

    # ---- logs and checkpoints -----------------------------------------------------------------------------

    def _request_stop(self, signum, frame) -> None:
        self._stop_requested = True

    def _stop_agreed(self) -> bool:
        """Stop when any rank was asked to, so that every rank leaves at the same epoch boundary."""
        self._stop_requested = distributed.any_rank(self._stop_requested, self.world)
        return self._stop_requested

    def _open_logs(self) -> None:
        if self.run_dir is not None and self.world.is_main:
            self._run_log = RunLog(self.run_dir, self.config, self.state.epoch, self.state.agent_steps)
            record_games(self.run_dir, self.games)

    def _close_logs(self) -> None:
        if self._run_lock is not None:
            self._run_lock.release()
            self._run_lock = None
        if self._run_log is not None:
            self._run_log.close()
            self._run_log = None

    def _log(self, metrics: dict[str, Any]) -> None:
        self.state.history.append(metrics)
        if self._run_log is not None:
            self._run_log.write(metrics, self.state.agent_steps)

    def save_checkpoint(self) -> Path | None:
        if self.run_dir is None or self.state.epoch == 0 or not self.world.is_main:
            return None
        path = checkpoint_path(self.run_dir, self.state.epoch)
        if path.exists():
            return path
        bad = [name for name, value in self.agent.state_dict().items() if value.is_floating_point()
               and not bool(torch.isfinite(value).all())]
        if bad:
            warnings.warn(f"not writing checkpoint {path.name}: non-finite values in {', '.join(bad[:3])}",
                          RuntimeWarning, stacklevel=2)
            return None
        metadata, tensors = resume.trainer_checkpoint(self)
        return save_checkpoint(path, metadata, tensors, keep=self.config.trainer.keep_checkpoints)


def last_eval(history: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The run's last in-training eval point as ``{stat: value}`` (``eval/`` dropped), or None if none ran."""
    evaluated = [row for row in history if "eval/return" in row]
    if not evaluated:
        return None
    return {key.removeprefix("eval/"): value for key, value in evaluated[-1].items() if key.startswith("eval/")}


def _summarize_episodes(episodes: list[dict[str, float]]) -> dict[str, Any]:
    if not episodes:
        return {"episode_return": None, "episode_length": None, "episodes": 0}
    summary: dict[str, Any] = {"episodes": len(episodes)}
    # A mixture's episodes carry their own game's stats (and "<game>/..." copies): average each over those
    # that have it.
    for name in dict.fromkeys(name for episode in episodes for name in episode):
        summary[name] = float(np.mean([episode[name] for episode in episodes if name in episode]))
    return summary
