"""Where training time goes: env stepping, rollout inference, the PPO update, and whole epochs.

``run_benchmark`` builds one :class:`~metta_agent.trainer.trainer.Trainer` from the run config and times the
trainer's *own* code in four pieces, all counted in agent steps per second:

``env_sps``
    ``VecEnv.step`` only, with uniform random actions (drawn beforehand), over a rollout's worth of steps
    (``batch_size / num_agents`` steps of all agents).
``inference_sps``
    The rollout forward only, ``Trainer.policy_step`` (``agent(td)`` on the ``[N]`` TensorDict the trainer
    builds) under ``torch.inference_mode``, plus ``Experience.store``, over a rollout's worth of steps. The
    observations and episode-start flags were captured from the real env during the warm-up epoch, so no env
    stepping is timed.
``train_step_sps``
    ``Trainer.update()`` (every minibatch of one PPO update) on a filled experience buffer; one update
    counts ``batch_size`` agent steps.
``train_sps``
    ``Trainer.run_epoch()``: ``batch_size`` / epoch wall time.

``train_sps_no_restarts``
    The same full epochs with in-segment episode restarts ignored in training (each segment runs one
    ``nn.LSTM`` call from its stored state, as the reference did; the importance ratio is then wrong). With
    restarts, ``lstm_kernel`` says what runs a minibatch that holds some: ``fused`` (one call with per-row
    resets, CPU) or one ``nn.LSTM`` call over the segments' episode pieces (CUDA). Its epochs alternate
    with the ``train_sps`` epochs in every repeat. ``restart_overhead``, the median over repeats of
    ``1 - train_sps / train_sps_no_restarts``, is what correct restarts cost;
    ``restart_segment_fraction`` says how many segments held a restart (use short episodes, e.g.
    ``--set game.max_steps=40``, for a figure that means something).
``train_sps_compiled`` / ``compile_speedup`` (with ``compare_compile``)
    Full epochs of a second trainer, identical but for ``trainer.compile``, timed right after the first
    one's in every repeat; ``compile_speedup``, the median over repeats of compiled / eager train_sps (below
    1: a slow-down). Its first (untimed) epoch, which compiles, is reported as ``compile_warmup_seconds``.
``train_sps_2ranks`` (with ``ranks=2``)
    ``metta-agent train --nproc-per-node 2`` run as a subprocess with the same config (``batch_size`` per
    rank, so twice the agent steps per epoch), after the repeats: the median of its own ``sps`` (counted over
    both ranks) over every epoch but the first two.

``peak_rss_mb`` / ``experience_mb`` (and ``peak_rss_mb_2ranks`` with ``ranks=2``)
    Memory: the benchmark process's peak resident set (every trainer it built, the Python runtime and torch
    included), the experience buffer's own tensors, and the largest process's peak resident set (``VmHWM``,
    read from /proc while the 2-rank run lives: a child's own accounting would start from this process's
    size at the fork).

``serial_bound = 1 / (1/env_sps + 1/inference_sps + 1/train_step_sps)`` is what an epoch would reach if it
did nothing but these three pieces one after another; ``bound_ratio = train_sps / serial_bound`` says how
much of that the real loop achieves (below 1: per-step overhead outside the pieces, such as building tensors
from the env's arrays, rewards, the bootstrap value and GAE; above 1 would mean overlap).

Each repeat measures the four pieces in turn (env, inference, train step, full epochs), repeats are
interleaved so that background load hits every piece alike, and the medians are reported. One untimed
epoch warms everything up first. ``epochs`` is the amount of work per piece in each repeat: ``epochs``
rollouts of env steps, ``epochs`` rollouts of inference, ``epochs`` updates and ``epochs`` full epochs.

The benchmark trains the agent for real (the update and full epochs change its weights) and moves the
env forward with random actions; it is meant for a throw-away trainer, not one whose run you keep.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import yaml

from metta_agent import contract as keys
from metta_agent.blocks import fused_lstm
from metta_agent.config import RunConfig

RESULT_RATES = ("env_sps", "inference_sps", "train_step_sps", "train_sps")


def run_benchmark(
    config: RunConfig,
    epochs: int = 3,
    repeats: int = 3,
    progress: Callable[[str], None] | None = None,
    compare_compile: bool = False,
    ranks: int = 0,
) -> dict[str, float | int | str]:
    """Measure env, inference, update and full-epoch throughput with the training config (see module doc).

    Returns the medians over ``repeats`` of ``env_sps``, ``inference_sps``, ``train_step_sps``,
    ``train_sps`` (agent steps per second), ``serial_bound``, ``bound_ratio``, plus ``rollout_sps`` and
    ``update_sps`` (the two halves of the full epochs, from the trainer's own metrics), ``train_sps_no_restarts``,
    ``restart_overhead`` and ``restart_segment_fraction`` (see the module doc), the per-piece
    seconds of one rollout's worth of work, and the config figures ``game``, ``agent``, ``num_envs``,
    ``batch_size``, ``minibatch_size``, ``bptt_horizon``, ``num_agents``, ``rollout_steps``,
    ``env_workers``, ``torch_threads``, ``epochs``, ``repeats``. ``compare_compile`` adds
    ``train_sps_compiled`` and ``compile_speedup``; ``ranks=2`` adds ``train_sps_2ranks``.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    from metta_agent.trainer.trainer import Trainer

    from metta_agent.agent.registry import pytorch_twin

    say = progress or (lambda message: None)
    trainer = Trainer(config, run_dir=None, show_progress=False)
    twin = flipped = None
    try:
        # A component architecture is measured side by side with its PyTorch twin (same config, same data).
        twin_name = None if config.agent.name.startswith("pytorch/") else pytorch_twin(config.agent.name)
        if twin_name is not None:
            twin_config = dataclasses.replace(config, agent=dataclasses.replace(config.agent, name=twin_name))
            twin = Trainer(twin_config, run_dir=None, show_progress=False)
        if compare_compile:  # the same trainer with trainer.compile flipped
            flipped_settings = dataclasses.replace(config.trainer, compile=not config.trainer.compile)
            flipped = Trainer(dataclasses.replace(config, trainer=flipped_settings), run_dir=None, show_progress=False)
        result = _measure(trainer, config, epochs, repeats, say, twin, flipped)
    finally:
        trainer.env.close()
        for other in (twin, flipped):
            if other is not None:
                other.env.close()
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes
    if ranks > 1:
        result[f"train_sps_{ranks}ranks"], result[f"peak_rss_mb_{ranks}ranks"] = _measure_ranks(
            config, ranks, epochs * repeats, say)
    return result


def _measure(
    trainer, config: RunConfig, epochs: int, repeats: int, say: Callable[[str], None], twin=None, flipped=None
) -> dict:
    cfg = config.trainer
    batch_size = cfg.batch_size
    num_agents = trainer.num_agents
    steps = trainer.rollout_steps
    say(
        f"benchmark: game {config.game.name}, agent {config.agent.name}, {trainer.env.num_envs} envs x "
        f"{trainer.env.agents_per_env} agents, batch {batch_size} ({steps} steps), minibatch "
        f"{cfg.minibatch_size}, bptt {cfg.bptt_horizon}, torch threads {torch.get_num_threads()}"
    )

    say("warm-up epoch (untimed)")
    trainer.run_epoch()
    if twin is not None:
        twin.run_epoch()
    compile_warmup_seconds = None
    if flipped is not None:
        say(f"warm-up epoch with trainer.compile={flipped.config.trainer.compile} (untimed)")
        start = time.perf_counter()
        flipped.run_epoch()
        compile_warmup_seconds = time.perf_counter() - start
    # Rollout inputs captured from the real env during the warm-up rollout, laid out [T, N, ...] so that each
    # step's observation is a contiguous [N, M, 3] tensor, as torch.from_numpy(env obs) is in the trainer.
    data = trainer.experience.data
    captured_obs = data[keys.ENV_OBS].transpose(0, 1).contiguous().cpu()
    captured_starts = data[keys.STARTS].transpose(0, 1).contiguous().cpu()
    num_actions = len(trainer.env_info.action_names)
    rng = np.random.default_rng(cfg.seed)

    extra = ("rollout_sps", "update_sps", "train_sps_no_restarts", "restart_segment_fraction")
    samples: dict[str, list[float]] = {name: [] for name in (*RESULT_RATES, *extra)}
    if twin is not None:
        samples.update({"pytorch_inference_sps": [], "pytorch_train_step_sps": []})
    if flipped is not None:
        samples["flipped_train_sps"] = []
    for repeat in range(repeats):
        # -- env only -------------------------------------------------------------------------------------
        actions = rng.integers(0, num_actions, size=(epochs * steps, num_agents), dtype=np.int64)
        seconds = _time_env(trainer, actions)
        samples["env_sps"].append(epochs * batch_size / seconds)

        # -- rollout inference + storing --------------------------------------------------------------------
        seconds = _time_inference(trainer, captured_obs, captured_starts, epochs)
        samples["inference_sps"].append(epochs * batch_size / seconds)

        if twin is not None:
            seconds = _time_inference(twin, captured_obs, captured_starts, epochs)
            samples["pytorch_inference_sps"].append(epochs * batch_size / seconds)

        # -- one PPO update on the filled buffer ------------------------------------------------------------
        start = time.perf_counter()
        for _ in range(epochs):
            trainer.update()
        seconds = time.perf_counter() - start
        samples["train_step_sps"].append(epochs * batch_size / seconds)
        if twin is not None:
            twin.experience.copy_from(trainer.experience)  # the same batch for both forms
            start = time.perf_counter()
            for _ in range(epochs):
                twin.update()
            samples["pytorch_train_step_sps"].append(epochs * batch_size / (time.perf_counter() - start))

        # -- full epochs, alternating with the same epochs with in-segment restarts ignored -------------------
        # Epoch by epoch, in an order that flips every repeat, so neither variant gets the warmer caches.
        seconds_by_variant = {True: 0.0, False: 0.0}
        rollout_seconds = update_seconds = 0.0
        order = (True, False) if repeat % 2 == 0 else (False, True)
        for _ in range(epochs):
            for restarts in order:
                with contextlib.nullcontext() if restarts else restarts_ignored(trainer):
                    start = time.perf_counter()
                    metrics = trainer.run_epoch()
                    seconds_by_variant[restarts] += time.perf_counter() - start
                if restarts:
                    rollout_seconds += float(metrics.get("rollout_seconds") or 0.0)
                    update_seconds += float(metrics.get("update_seconds") or 0.0)
                    samples["restart_segment_fraction"].append(_restart_segment_fraction(trainer))
        samples["train_sps"].append(epochs * batch_size / seconds_by_variant[True])
        samples["train_sps_no_restarts"].append(epochs * batch_size / seconds_by_variant[False])
        if rollout_seconds > 0:
            samples["rollout_sps"].append(epochs * batch_size / rollout_seconds)
        if update_seconds > 0:
            samples["update_sps"].append(epochs * batch_size / update_seconds)

        # -- the same full epochs with trainer.compile flipped, right after, so load hits both alike ---------
        if flipped is not None:
            start = time.perf_counter()
            for _ in range(epochs):
                flipped.run_epoch()
            samples["flipped_train_sps"].append(epochs * batch_size / (time.perf_counter() - start))

        say(
            f"repeat {repeat + 1}/{repeats}: env {samples['env_sps'][-1]:,.0f}  inference "
            f"{samples['inference_sps'][-1]:,.0f}  train step {samples['train_step_sps'][-1]:,.0f}  "
            f"full {samples['train_sps'][-1]:,.0f} agent steps/s"
        )

    result: dict[str, float | int | str] = {
        "game": config.game.name,
        "agent": config.agent.name,
        "num_envs": int(trainer.env.num_envs),
        "agents_per_env": int(trainer.env.agents_per_env),
        "num_agents": int(num_agents),
        "batch_size": int(batch_size),
        "minibatch_size": int(cfg.minibatch_size),
        "bptt_horizon": int(cfg.bptt_horizon),
        "rollout_steps": int(steps),
        "env_workers": int(cfg.env_workers),
        "torch_threads": int(torch.get_num_threads()),
        "lstm_kernel": _lstm_kernel(trainer),
        "epochs": int(epochs),
        "repeats": int(repeats),
        "experience_mb": trainer.experience.nbytes / 2**20,
    }
    for name, values in samples.items():
        if values:
            result[name] = float(statistics.median(values))
    if flipped is not None:
        flipped_sps = result.pop("flipped_train_sps")
        compiled, eager = samples["train_sps"], samples["flipped_train_sps"]
        if not config.trainer.compile:
            compiled, eager = eager, compiled
        result["train_sps_compiled"] = result["train_sps"] if config.trainer.compile else flipped_sps
        result["compile_speedup"] = _median_ratio(compiled, eager)
        result["compile_backend"] = config.trainer.compile_backend
        result["compile_warmup_seconds"] = compile_warmup_seconds
    env_sps, inference_sps, train_step_sps = (result[k] for k in ("env_sps", "inference_sps", "train_step_sps"))
    serial_bound = 1.0 / (1.0 / env_sps + 1.0 / inference_sps + 1.0 / train_step_sps)
    result["serial_bound"] = serial_bound
    result["bound_ratio"] = result["train_sps"] / serial_bound
    result["restart_overhead"] = 1.0 - _median_ratio(samples["train_sps"], samples["train_sps_no_restarts"])
    if twin is not None:
        result["pytorch_agent"] = twin.config.agent.name
        result["pytorch_inference_ratio"] = result["pytorch_inference_sps"] / result["inference_sps"]
        result["pytorch_train_step_ratio"] = result["pytorch_train_step_sps"] / result["train_step_sps"]
    # Seconds of one epoch's worth of each piece (from the medians), to read where an epoch goes.
    for name in RESULT_RATES:
        result[name.replace("_sps", "_seconds")] = batch_size / result[name]
    return result


def _median_ratio(numerators: list[float], denominators: list[float]) -> float:
    """Median over repeats of the paired ratios: both variants ran side by side within each repeat, so this is
    steadier than a ratio of two medians when background load changes between repeats."""
    return float(statistics.median(a / b for a, b in zip(numerators, denominators, strict=True)))


def _lstm_kernel(trainer) -> str:
    """What trains the LSTM core on minibatches with restarts: the fused kernel, or nn.LSTM over episode
    pieces (and why)."""
    weights = next(trainer.agent.parameters())
    if fused_lstm.usable(weights):
        return "fused"
    return f"nn.LSTM over episode pieces ({fused_lstm.failure() or f'{weights.device.type}, {weights.dtype}'})"


@contextlib.contextmanager
def restarts_ignored(trainer):
    """Only to measure what ignoring in-segment restarts would cost (and that it breaks the ratio): the
    trainer's minibatches show episode starts at each segment's step 0 only."""
    experience = trainer.experience
    every_segment = experience.minibatches

    def without_restarts(*args, **kwargs):
        for minibatch in every_segment(*args, **kwargs):
            starts = minibatch[keys.STARTS].clone()
            starts[:, 1:] = False
            minibatch[keys.STARTS] = starts
            yield minibatch

    experience.minibatches = without_restarts
    try:
        yield
    finally:
        del experience.minibatches


def _restart_segment_fraction(trainer) -> float:
    """Fraction of the last batch's training segments that hold an episode start after their first step."""
    starts = trainer.experience.segments()[keys.STARTS][:, 1:]
    return float(starts.any(dim=1).float().mean())


def _measure_ranks(config: RunConfig, ranks: int, timed_epochs: int, say: Callable[[str], None]
                   ) -> tuple[float, float]:
    """Median SPS (all ranks) of a ``ranks``-rank ``metta-agent train`` run over its epochs after the first two,
    and the peak resident set of its largest process in MB."""
    warmup_epochs = 2
    epochs = warmup_epochs + max(timed_epochs, 1)
    say(f"{ranks} ranks: {epochs} epochs of metta-agent train --nproc-per-node {ranks} (the first {warmup_epochs} untimed)")
    with tempfile.TemporaryDirectory(prefix="metta-bench-") as folder:
        config_file = Path(folder) / "config.yaml"
        config_file.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        run_dir = Path(folder) / "run"
        command = [
            sys.executable, "-m", "metta_agent.cli", "train", "--nproc-per-node", str(ranks),
            "--config", str(config_file), "--steps", str(epochs * ranks * config.trainer.batch_size),
            "--run-dir", str(run_dir), "--quiet",
        ]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [_project_root(), os.environ.get("PYTHONPATH")])))
        with tempfile.TemporaryFile("w+") as stderr:
            launcher = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, text=True, env=env)
            peaks: dict[int, float] = {}
            while launcher.poll() is None:  # the ranks' own high-water marks, read while they live
                for pid in _descendants(launcher.pid):
                    peaks[pid] = max(peaks.get(pid, 0.0), _high_water_mb(pid))
                time.sleep(0.2)
            if launcher.returncode != 0:
                stderr.seek(0)
                raise RuntimeError(f"the {ranks}-rank run failed (exit code {launcher.returncode}):\n"
                                   f"{stderr.read()[-4000:]}")
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return float(statistics.median(row["sps"] for row in rows[warmup_epochs:])), max(peaks.values(), default=0.0)


def _descendants(root: int) -> list[int]:
    """Every live process below ``root``, from /proc (Linux)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                # The field after the parenthesised command name (which may hold spaces) is the state, then ppid.
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        found += children
        frontier += children
    return found


def _high_water_mb(pid: int) -> float:
    """A process's peak resident set so far (``VmHWM``), 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0


def _project_root() -> str:
    """The folder holding this ``metta_agent`` package, so the subprocess runs this very code."""
    return str(Path(__file__).resolve().parent.parent)


def _time_env(trainer, actions: np.ndarray) -> float:
    """Seconds to step the trainer's env through ``actions`` ``[steps, N]`` (uniform random)."""
    env = trainer.env
    obs = rewards = terminals = truncations = None
    start = time.perf_counter()
    for row in actions:
        obs, rewards, terminals, truncations = env.step(row)
    seconds = time.perf_counter() - start
    # The trainer acts next where the env now is.
    trainer.continue_from(obs, terminals | truncations)
    return seconds


def _time_inference(trainer, obs: torch.Tensor, starts: torch.Tensor, epochs: int) -> float:
    """Seconds of ``epochs`` rollouts of ``policy_step`` + ``Experience.store`` on captured inputs."""
    experience = trainer.experience
    steps = obs.shape[0]
    with torch.inference_mode():
        start = time.perf_counter()
        for _ in range(epochs):
            for t in range(steps):
                step = trainer.policy_step(obs[t], starts[t])
                experience.store(t, step)
        if trainer.device.type == "cuda":
            torch.cuda.synchronize(trainer.device)
        return time.perf_counter() - start


def main() -> None:  # pragma: no cover - a convenience: python -m metta_agent.bench [game]
    import json
    import sys

    from metta_agent.config import build_config

    game = sys.argv[1] if len(sys.argv) > 1 else "arena"
    result = run_benchmark(build_config([{"game": {"name": game}}]), progress=lambda m: print(m, file=sys.stderr))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":  # pragma: no cover
    main()
