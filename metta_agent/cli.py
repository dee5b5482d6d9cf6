"""The ``metta-agent`` command line. Bad input prints one line and exits with code 2 (no traceback)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from metta_agent.errors import TrainingError, UsageError

EXIT_USAGE = 2
EXIT_TRAINING = 1


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors: one line, exit 2
        raise UsageError(f"{self.prog}: {message}")


GAME_HELP = ("game: a built-in name (default arena; see 'metta-agent games'), FILE.py:FUNCTION or MODULE:FUNCTION "
             "(a function returning a MettaGridConfig: loading a Python file runs its code), or a .yaml/.json "
             "MettaGridConfig file")


def config_label(game_settings) -> str:
    """A run's game as named in its default run directory: the game's label, or 'mixture'."""
    from metta_agent.game_source import source_label

    return "mixture" if game_settings.mixture else source_label(game_settings.name)

def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="metta-agent",
        description="Train and evaluate recurrent agents on MettaGrid games.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'metta-agent COMMAND --help' for a command's options.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    train = commands.add_parser(
        "train",
        help="train an agent",
        description=(
            "Train an agent with PPO. The run directory receives config.yaml, metrics.jsonl, TensorBoard events,\n"
            "checkpoints/ and, at the end, curve.png. Ctrl-C saves a checkpoint and exits cleanly; --resume\n"
            "continues a stopped or killed run from its newest checkpoint.\n"
            "Config precedence: defaults < --config < flags < --set.\n"
            "--nproc-per-node K runs K data-parallel ranks through torchrun (gloo on CPU, NCCL on CUDA);\n"
            "trainer.batch_size is per rank, --steps and SPS count all ranks, rank 0 logs and checkpoints."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # the launcher removes its own options from the ranks' command line by exact name
    )
    train.add_argument("--agent", help="architecture (default pytorch/fast; see 'metta-agent agents')")
    train.add_argument("--game", help=GAME_HELP)
    train.add_argument("--steps", type=int, help="total agent steps over all agents (default 10,000,000)")
    train.add_argument("--run-dir", type=Path, help="output directory (default runs/<agent>-<game>-<time>)")
    train.add_argument("--seed", type=int, help="seed for weights, maps and sampling (default 0)")
    train.add_argument("--config", type=Path, help="YAML file with sections agent, game, trainer")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key by dotted path, e.g. trainer.bptt_horizon=16 (repeatable)")
    train.add_argument("--wandb", action="store_true",
                       help="also log to Weights & Biases (trainer.wandb; needs pip install 'metta-agent[wandb]'; "
                       "offline under the run directory unless an API key is set)")
    train.add_argument("--quiet", action="store_true", help="no progress output")
    train.add_argument("--json", action="store_true",
                       help="at the end print one JSON line (run directory, final eval, baselines) instead of the summary")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in --run-dir from its newest checkpoint, with its config.yaml "
                            "(--steps stays the total; --set may change trainer.* keys)")
    train.add_argument("--device", help="cpu (default), cuda (each rank its local GPU) or cuda:N")
    ranks = train.add_argument_group("data-parallel ranks (torchrun)")
    ranks.add_argument("--nproc-per-node", type=int, default=1, metavar="K",
                       help="ranks on this node (default 1: train in this process)")
    ranks.add_argument("--nnodes", type=int, default=1, metavar="N", help="nodes (default 1)")
    ranks.add_argument("--node-rank", type=int, default=0, metavar="R", help="this node's index, 0..N-1")
    ranks.add_argument("--master-addr", help="address of node 0 (several nodes)")
    ranks.add_argument("--master-port", type=int, help="port on node 0 (several nodes)")

    evaluate = commands.add_parser(
        "eval",
        help="evaluate a trained agent beside the random and scripted baselines",
        description=(
            "Run the trained agent and, on the same maps and seeds, a uniform-random and a scripted policy; one\n"
            "episode per env. Every mean comes with its standard error over episodes.\n"
            "On another game (--game) features are matched by name (unknown ones are dropped) and action\n"
            "embeddings by action name (an action the agent never trained with gets an untrained row)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    evaluate.add_argument("path", type=Path, help="run directory (newest checkpoint) or checkpoint file")
    evaluate.add_argument("--game", help="game to evaluate on, named as for train (default: the run's recorded game, "
                          "each game of a mixture in turn)")
    evaluate.add_argument("--max-steps", type=int,
                          help="episode length (default: the training run's for its game, else the game's own)")
    evaluate.add_argument("--against", metavar="OTHER",
                          help="head-to-head: seat OTHER in the same episodes, half the agents each (random, scripted, "
                          "a run directory or checkpoint, mettagrid:NAME, or a full class path of a mettagrid policy)")
    evaluate.add_argument("--as-agent", metavar="NAME",
                          help="load the checkpoint as the other form of its architecture (fast <-> pytorch/fast)")
    evaluate.add_argument("--episodes", type=int, default=8, help="episodes per policy (default 8)")
    evaluate.add_argument("--seed", type=int, default=0, help="seed for maps and sampling (default 0)")
    evaluate.add_argument("--greedy", action="store_true",
                          help="take the most probable action (default: sample from the policy)")
    evaluate.add_argument("--replay-dir", type=Path, metavar="DIR",
                          help="write one MettaScope replay (.json.z) per episode of the trained agent into DIR")
    evaluate.add_argument("--render", choices=["ascii", "unicode"],
                          help="ascii: print the map of the agent's first env as its episode runs (any output: a "
                          "file, a log, CI); unicode: mettagrid's interactive viewer (miniscope) for one episode, "
                          "in a terminal only (it starts paused: space plays, ? shows its keys)")
    evaluate.add_argument("--gif", type=Path, metavar="FILE",
                          help="draw the agent's first episode (env 0) into FILE: an animated .gif, or a .png strip "
                          "of frames spread over the episode, with a legend")
    evaluate.add_argument("--render-every", type=int, default=1, metavar="K",
                          help="with --render or --gif, draw every K-th step only (default 1)")
    evaluate.add_argument("--render-fps", type=float, default=10.0,
                          help="with --render on a terminal, at most this many frames per second (default 10)")
    evaluate.add_argument("--json", action="store_true",
                          help="print one JSON object (with --render the frames go to stderr)")

    plot = commands.add_parser(
        "plot",
        help="compare runs' eval points on one picture and print their final figures",
        description=(
            "Draw the eval points (eval/<metric> of metrics.jsonl) of each run against agent steps. Runs whose\n"
            "config.yaml differ only in trainer.seed form a group: the mean over seeds with a min-max band.\n"
            "The game's stored random and scripted baselines are drawn when all runs share a game.\n"
            "Prints, per run and per group, the last eval point, its agent steps and the training return."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    plot.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="run directories (with metrics.jsonl)")
    plot.add_argument("--out", type=Path, required=True, metavar="FILE.png", help="image to write (.png, .svg, .pdf)")
    plot.add_argument("--metric", help="hearts, return or another game stat (default: hearts when every run has "
                                       "it, else return)")
    plot.add_argument("--json", action="store_true", help="print one JSON object instead of the table")

    export = commands.add_parser(
        "export",
        help="write a mettagrid submission folder (policy_spec.json, cogames.toml, the agent)",
        description=(
            "Write DIR so that mettagrid's loader (load_policy_spec_from_path + initialize_or_load_policy) plays the\n"
            "agent: policy_spec.json (full class path, data_path relative to DIR, the game's policy_env_interface),\n"
            "the cogames.toml manifest and agent.pt (weights only). The metta_agent source is not bundled: the\n"
            "folder loads where metta-agent is installed."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export.add_argument("path", type=Path, help="run directory (newest checkpoint) or checkpoint file")
    export.add_argument("out", type=Path, metavar="DIR", help="folder to write (new or empty)")
    export.add_argument("--game", help="the game the policy will play (default: the run's recorded game)")
    export.add_argument("--json", action="store_true", help="print one JSON object")

    games = commands.add_parser("games", help="list the games")
    games.add_argument("--json", action="store_true", help="print JSON")

    bench = commands.add_parser(
        "bench",
        help="measure env, inference, train-step and full training speed",
        description="Measures, in one run with the training config, agent steps per second of env stepping,\n"
        "inference, the PPO update and full training, and the ratio of training to the serial bound;\n"
        "also training with trainer.compile flipped (compile_speedup) and with 2 data-parallel ranks\n"
        "(train_sps_2ranks), unless --no-compile / --no-distributed.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_argument("--agent", help="architecture (default pytorch/fast)")
    bench.add_argument("--game", help="game (default arena)")
    bench.add_argument("--config", type=Path, help="YAML file with sections agent, game, trainer")
    bench.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    bench.add_argument("--repeats", type=int, default=3, help="interleaved repeats; medians are reported")
    bench.add_argument("--no-compile", action="store_true",
                       help="skip the side-by-side run with trainer.compile flipped (compile_speedup)")
    bench.add_argument("--no-distributed", action="store_true",
                       help="skip the 2-rank training run (train_sps_2ranks)")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    parity = commands.add_parser(
        "parity",
        help="check that each architecture's component and PyTorch forms are the same network",
        description="For every architecture (or --agent), on observations from the real engine: identical initial\n"
        "weights and weight transfer, identical outputs in rollout and training mode, PPO gradients,\n"
        "clip_weights(), l2_init_loss(), weight-metric names, and the first training epoch.\n"
        "Exit code 1 if any check fails.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parity.add_argument("--agent", help="one architecture (default: all)")
    parity.add_argument("--seed", type=int, default=0, help="torch seed for the weights (default 0)")
    parity.add_argument("--json", action="store_true", help="print a JSON list, one object per architecture")

    sweep = commands.add_parser(
        "sweep",
        help="search hyper-parameters with Optuna (several workers may share one study)",
        description=(
            "Train one short run per trial (--steps-per-trial agent steps) with values drawn from --space and\n"
            "score it by the in-training evaluation (the last eval point's eval/hearts or eval/return; maximized).\n"
            "Every invocation on the same --storage and --study is a worker of one study: the study stops when it\n"
            "holds --trials finished (complete or pruned) trials in total, so two workers with --trials 4 run 4\n"
            "trials together. A worker whose study is full waits for the trials still running elsewhere; a\n"
            "killed worker's trial is marked FAILED once its heartbeat is 2 x --heartbeat-interval old and run\n"
            "once more with the same values. At the end: a table of the study's trials and DIR/best.yaml, the best\n"
            "trial's full config with the full run's trainer.total_agent_steps (for 'train --config').\n"
            "Trial config: defaults < --config < --game/--agent/--seed < --set < --steps-per-trial < sampled values."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sweep.add_argument("--space", type=Path, required=True,
                       help="YAML mapping of config keys to distributions, e.g. "
                            "'trainer.lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}' "
                            "(types: float, int, categorical; see docs/sweep-space.example.yaml)")
    sweep.add_argument("--study", required=True, help="study name (workers of one study share it)")
    sweep.add_argument("--trials", type=int, required=True, metavar="N",
                       help="finished trials the study should hold, over all its workers")
    sweep.add_argument("--steps-per-trial", type=int, required=True, metavar="K",
                       help="agent steps each trial trains (trainer.total_agent_steps of the trial)")
    sweep.add_argument("--storage", metavar="URL",
                       help="SQLAlchemy URL of the study's database (default sqlite:///DIR/study.db; "
                            "e.g. postgresql://user@host/db to share a study between machines)")
    sweep.add_argument("--sweep-dir", type=Path, metavar="DIR",
                       help="trial run directories (DIR/trials/trial_NNNN) and best.yaml (default sweeps/<study>)")
    sweep.add_argument("--objective", choices=["hearts", "return"], default="hearts",
                       help="eval metric to maximize: eval/hearts or eval/return (default hearts)")
    sweep.add_argument("--game", help="game (default arena)")
    sweep.add_argument("--agent", help="architecture (default pytorch/fast)")
    sweep.add_argument("--config", type=Path, help="YAML file with sections agent, game, trainer")
    sweep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key in every trial (repeatable)")
    sweep.add_argument("--seed", type=int, help="trainer.seed of every trial and the sampler's seed (default 0)")
    sweep.add_argument("--heartbeat-interval", type=int, default=60, metavar="SECONDS",
                       help="seconds between a running trial's heartbeats; a trial is stale after twice this "
                            "(default 60)")
    sweep.add_argument("--quiet", action="store_true", help="no progress lines (one per finished trial) on stderr")
    sweep.add_argument("--json", action="store_true", help="print the study's trials and the best one as JSON")

    agents = commands.add_parser("agents", help="list the architectures with both forms' parameter counts")
    agents.add_argument("--game", default="arena", help="game the counts are for (default arena)")
    agents.add_argument("--json", action="store_true", help="print JSON")
    return parser


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings the way the CLI prints errors: one line, no source excerpt."""
    return f"warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    # torch's OpenMP threads spin while they wait for each other; on a 2-core machine shared with env
    # stepping or another process that spinning slowed training 2-3x. A short spin costs nothing when the
    # machine is quiet (measured in BENCHMARKS.md). It must be set before torch is imported.
    if "torch" not in sys.modules:
        os.environ.setdefault("GOMP_SPINCOUNT", "1000")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        _quiet_mettagrid_logging()
        warnings.formatwarning = _one_line_warning
        return COMMANDS[args.command](args)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except TrainingError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_TRAINING
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as error:
        # A path the user gave that the system refuses (a run directory that is a file, a read-only or full
        # filesystem, ...): one line naming it, not a traceback.
        where = f" '{error.filename}'" if error.filename else ""
        print(f"error: cannot use{where}: {error.strerror or error}", file=sys.stderr)
        return EXIT_USAGE


def _quiet_mettagrid_logging() -> None:
    import mettagrid  # noqa: F401 - importing it lowers the root logger to INFO; undo that

    logging.getLogger().setLevel(logging.WARNING)


def resolve_run_config(args: argparse.Namespace):
    from metta_agent.config import build_config, load_yaml, parse_set

    layers: list[dict[str, Any]] = []
    if getattr(args, "config", None):
        layers.append(load_yaml(args.config))
    flags: dict[str, Any] = {}
    if getattr(args, "agent", None):
        flags.setdefault("agent", {})["name"] = args.agent
    if getattr(args, "game", None):
        flags.setdefault("game", {})["name"] = args.game
    if getattr(args, "steps", None) is not None:
        flags.setdefault("trainer", {})["total_agent_steps"] = args.steps
    if getattr(args, "seed", None) is not None:
        flags.setdefault("trainer", {})["seed"] = args.seed
    if getattr(args, "device", None) is not None:
        flags.setdefault("trainer", {})["device"] = args.device
    if getattr(args, "wandb", False):
        flags.setdefault("trainer", {})["wandb"] = True
    layers.append(flags)
    layers.append(parse_set(args.set))
    return build_config(layers)


def resume_run_config(args: argparse.Namespace):
    """The saved ``config.yaml`` of ``--run-dir``, with ``--steps`` and ``--set trainer.*`` applied (the rules
    live in ``trainer/resume.py``)."""
    from metta_agent.trainer import resume

    given = [flag for flag in resume.FIXED_FLAGS if getattr(args, flag, None) is not None]
    sets = [*args.set, *(["trainer.wandb=true"] if getattr(args, "wandb", False) else [])]
    return resume.resume_config(args.run_dir, given, sets, args.steps, getattr(args, "device", None))


def cmd_train(args: argparse.Namespace) -> int:
    import time

    from metta_agent.game_source import run_label
    from metta_agent.trainer import distributed

    _check_launcher_args(args)
    resume_from = None
    run_dir = args.run_dir
    if args.resume:
        config = resume_run_config(args)
        # The trainer picks the newest checkpoint once it holds the run directory's writer lock.
        resume_from = run_dir
    else:
        config = resolve_run_config(args)
        if run_dir is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            run_dir = Path("runs") / f"{config.agent.name.replace('/', '-')}-{config_label(config.game)}-{stamp}"
    if not distributed.launched_by_torchrun() and (args.nproc_per_node > 1 or args.nnodes > 1):
        return _launch_ranks(args, config, run_dir)

    from metta_agent.trainer.trainer import Trainer

    with distributed.process_group(config.trainer.device) as world:
        # Under torchrun the launcher (or rank 0) checked the run directory; other ranks write nothing there.
        if not args.resume and world.is_main:
            _check_run_dir_free(run_dir)
        trainer = Trainer(config, run_dir, show_progress=not args.quiet, resume_from=resume_from)
        if not args.quiet and world.is_main:
            start = f"resuming at epoch {trainer.state.epoch} ({trainer.state.agent_steps:,} steps), " if args.resume else ""
            ranks = f" x {world.world_size} ranks" if world.distributed else ""
            print(
                f"{start}training {config.agent.name} ({trainer.agent.total_params:,} parameters) on "
                f"{run_label(trainer.games)}: {trainer.num_agents} agents{ranks}, "
                f"{trainer.total_epochs * trainer.steps_per_epoch:,} steps ({trainer.total_epochs} epochs of "
                f"{trainer.steps_per_epoch:,}) "
                f"-> {run_dir}",
                file=sys.stderr,
            )
        state = trainer.train()
        games = trainer.games
        del trainer  # its DDP wrapper holds the process group: free it while every rank is still in the group
    if not world.is_main:
        return 0
    summary = run_summary(run_dir, config, state, world.world_size, games)
    if args.json:
        print(json.dumps(summary))
    else:
        print(describe_run_summary(summary))
    return 0


def run_summary(run_dir: Path, config, state, world_size: int, games) -> dict[str, Any]:
    """The end of a run in numbers: its last eval beside the game's stored baselines (built-in games only)."""
    from metta_agent.baselines import stored_baselines
    from metta_agent.game_source import run_label
    from metta_agent.trainer.trainer import last_eval

    last = state.history[-1] if state.history else {}
    final_eval = last_eval(state.history)
    baselines = stored_baselines(games[0].source) if len(games) == 1 and games[0].builtin else {}
    curve = Path(run_dir) / "curve.png"
    return {
        "run_dir": str(run_dir),
        "game": run_label(games),
        "epochs": state.epoch,
        "agent_steps": state.agent_steps,
        "episode_return": last.get("episode_return"),
        "sps": last.get("sps"),
        "world_size": world_size,
        "eval": final_eval,
        "eval_episodes": config.trainer.eval_episodes if final_eval else None,
        "baselines": {name: baselines[name] for name in ("random", "scripted") if name in baselines},
        "curve": str(curve) if curve.exists() else None,
        "next": f"metta-agent eval {run_dir} --episodes 16",
    }


def describe_run_summary(summary: dict[str, Any]) -> str:
    lines = [f"trained {summary['agent_steps']:,} agent steps ({summary['epochs']} epochs) on {summary['game']}"]
    final = summary["eval"]
    if final is None:
        lines.append("  no evaluation ran (trainer.eval_interval is 0)")
    else:
        stat = next((name for name in ("hearts", *final) if name in final and not name.endswith("_stderr")
                     and "/" not in name and name not in ("return", "length")), "return")
        lines.append(f"  final eval ({summary['eval_episodes']} episodes, fresh maps): {stat} {final[stat]:.2f} "
                     f"+- {final.get(stat + '_stderr', 0.0):.2f} per agent per episode")
        if not summary["baselines"]:
            lines.append("  no stored baselines (built-in games only): 'metta-agent eval' plays random beside "
                         "the agent")
        for name, figures in summary["baselines"].items():
            value = figures.get(f"mean_{stat}")
            if value is not None:
                ratio = f" ({final[stat] / value:.2f}x)" if value > 0 else ""
                lines.append(f"  {name:<8} baseline: {stat} {value:.2f} +- {figures.get(f'mean_{stat}_stderr', 0.0):.2f}"
                             f"{ratio}")
    if summary["curve"]:
        lines.append(f"  learning curve: {summary['curve']}")
    lines.append(f"  next: {summary['next']}")
    return "\n".join(lines)


# Options of the launcher itself: not passed on to the ranks (the run directory is, resolved).
_LAUNCHER_OPTIONS = ("--nproc-per-node", "--nnodes", "--node-rank", "--master-addr", "--master-port", "--run-dir")


def _check_run_dir_free(run_dir: Path) -> None:
    """A new run never writes into a directory that already holds files (``--resume`` continues one)."""
    if run_dir.exists() and any(run_dir.iterdir()):
        raise UsageError(f"run directory '{run_dir}' already exists; choose another --run-dir or add --resume")


def _check_launcher_args(args: argparse.Namespace) -> None:
    if args.nproc_per_node < 1:
        raise UsageError(f"--nproc-per-node must be at least 1, got {args.nproc_per_node}")
    if args.nnodes < 1:
        raise UsageError(f"--nnodes must be at least 1, got {args.nnodes}")
    if not 0 <= args.node_rank < args.nnodes:
        raise UsageError(f"--node-rank must be in 0..{args.nnodes - 1} (--nnodes {args.nnodes}), got {args.node_rank}")
    if args.nnodes > 1 and args.master_addr is None:
        raise UsageError("--nnodes > 1 needs --master-addr (the address of node 0), as torchrun does")


def _launch_ranks(args: argparse.Namespace, config, run_dir: Path) -> int:
    """Re-run this command under torchrun, one process per rank, after checking what a rank would reject."""
    from metta_agent.game_source import game_mix, resolve_games
    from metta_agent.trainer import distributed

    config.validate(game_mix(resolve_games(config.game)).info.agents_per_env)
    distributed.resolve_device(config.trainer.device, distributed.World())
    if not args.resume and args.node_rank == 0:
        _check_run_dir_free(run_dir)
    child_args = [*_without_options(args.argv, _LAUNCHER_OPTIONS), "--run-dir", str(run_dir)]
    command = distributed.torchrun_command(
        child_args, args.nproc_per_node, args.nnodes, args.node_rank, args.master_addr, args.master_port
    )
    if not args.quiet:
        print(f"launching {args.nproc_per_node * args.nnodes} ranks: {' '.join(command)}", file=sys.stderr)
    code, failure = distributed.launch(command, args.nproc_per_node)
    if failure is not None:
        print(f"error: {failure.describe()}{_stopped_at(run_dir)}; the other ranks stopped with it. Resume with: "
              f"metta-agent train --run-dir {run_dir} --resume --nproc-per-node {args.nproc_per_node}", file=sys.stderr)
        return EXIT_TRAINING
    return code


def _stopped_at(run_dir: Path) -> str:
    """`` during epoch N (newest checkpoint: epoch M)`` from the run directory, as far as it tells."""
    from metta_agent.checkpoint import checkpoint_epoch, list_checkpoints
    from metta_agent.plot import read_metrics

    try:
        rows = read_metrics(Path(run_dir) / "metrics.jsonl")
        epoch = rows[-1]["epoch"] + 1 if rows else 1
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    saved = list_checkpoints(run_dir)
    newest = f"epoch {checkpoint_epoch(saved[-1])}" if saved else "none yet"
    return f" during epoch {epoch} (newest checkpoint: {newest})"


def _without_options(argv: list[str], names: tuple[str, ...]) -> list[str]:
    """``argv`` without the options ``names`` and their values (``--name value`` or ``--name=value``)."""
    kept: list[str] = []
    skip_value = False
    for token in argv:
        if skip_value:
            skip_value = False
            continue
        name, has_value, _ = token.partition("=")
        if name in names:
            skip_value = not has_value
            continue
        kept.append(token)
    return kept


def cmd_eval(args: argparse.Namespace) -> int:
    from metta_agent.agent.loading import load_agent
    from metta_agent.checkpoint import load_checkpoint
    from metta_agent.evaluate import BASELINES, evaluate

    if args.episodes < 1:
        raise UsageError(f"--episodes must be at least 1, got {args.episodes}")
    if args.render_every < 1:
        raise UsageError(f"--render-every must be at least 1, got {args.render_every}")
    if args.max_steps is not None and args.max_steps < 1:
        raise UsageError(f"--max-steps must be at least 1, got {args.max_steps}")
    metadata, _ = load_checkpoint(args.path)
    entries = _eval_games(metadata, args.game, args.max_steps)
    agent = load_agent(args.path, as_agent=args.as_agent)
    observers = []
    if args.render == "unicode":
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            raise UsageError("--render unicode is mettagrid's interactive viewer (it starts paused and reads keys): it "
                             "needs a terminal on stdin and stdout; use --render ascii or --gif otherwise")
        if len(entries) > 1:
            raise UsageError("--render unicode plays one game: choose it with --game (this run trained on a mixture)")
        from metta_agent.mettagrid_policy import play_interactive

        rewards = play_interactive(args.path, entries[0].config, args.seed, greedy=args.greedy)
        print(f"episode over: mean return {sum(rewards) / len(rewards):.2f} per agent")
        return 0
    if args.render == "ascii":
        from metta_agent.render import AsciiRenderer

        observers.append(AsciiRenderer(sys.stderr if args.json else sys.stdout, every=args.render_every,
                                       fps=args.render_fps))
    if args.against is not None:
        from metta_agent.head_to_head import describe, head_to_head

        matches = [{"game": entry.label, **head_to_head(agent, agent.settings.name, args.against, entry.config,
                                                        args.episodes, args.seed, greedy=args.greedy)}
                   for entry in entries]
        if args.json:
            print(json.dumps(matches[0] if len(matches) == 1 else {"games": matches}))
        else:
            print("\n".join(f"on {match['game']}: {describe(match)}" for match in matches))
        return 0
    picture = None
    if args.gif is not None:
        from metta_agent.render import EpisodeImage

        if args.gif.suffix.lower() not in (".gif", ".png"):
            raise UsageError(f"--gif takes a .gif or .png file, got '{args.gif}'")
        if len(entries) > 1:
            raise UsageError("--gif draws one game: choose it with --game (this run trained on a mixture)")
        picture = EpisodeImage(args.gif, every=args.render_every, fps=args.render_fps)
        observers.append(picture)
    results = []
    for entry in entries:
        # The scripted policy knows the built-in games' stations only.
        baselines = BASELINES if entry.builtin else tuple(b for b in BASELINES if b != "scripted")
        result = {"game": entry.label, "agent": agent.settings.name,
                  **evaluate(agent, entry.config, args.episodes, args.seed, greedy=args.greedy,
                             replay_dir=args.replay_dir, observers=observers, baselines=baselines)}
        if not entry.builtin:
            result["scripted"] = "not available: the scripted baseline plays the built-in games only"
        results.append(result)
    if picture is not None:
        results[0]["picture"] = str(args.gif)
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else {"agent": agent.settings.name, "games": results}))
        return 0
    for result in results:
        _print_eval(result, args)
    if picture is not None:
        print(f"  episode of env 0 drawn to {args.gif} ({picture.frames} frames)")
    return 0


def _eval_games(metadata: dict[str, Any], source: str | None, max_steps: int | None):
    """The games ``eval`` plays: ``--game``, else those the checkpoint recorded (a checkpoint from before games
    were recorded names a built-in game)."""
    from metta_agent.game_source import GameEntry, check_game, games_from_metadata, load_game, source_label

    if source is not None:
        entry = GameEntry(source, source_label(source), 1.0, load_game(source, max_steps))
        check_game(entry.config, entry.label)
        return [entry]
    recorded = games_from_metadata(metadata)
    if recorded is None:
        name = metadata.get("game", "arena")
        steps = max_steps or metadata.get("config", {}).get("game", {}).get("max_steps")
        return [GameEntry(name, name, 1.0, load_game(name, steps))]
    if max_steps is not None:
        recorded = [entry.with_max_steps(max_steps) for entry in recorded]
    return recorded


def _print_eval(result: dict[str, Any], args: argparse.Namespace) -> None:
    policy = "greedy" if args.greedy else "sampled"
    print(f"{result['agent']} on {result['game']}, {args.episodes} episodes x {result['agents_per_episode']} agents, "
          f"{policy} actions")
    if result["dropped_features"]:
        print(f"  features the agent was not built with (dropped): {', '.join(result['dropped_features'])}")
    if result["untrained_actions"]:
        print(f"  actions the agent never trained with (untrained embeddings): "
              f"{', '.join(result['untrained_actions'])}")
    print(f"  {'':<16} {'trained':>17}   {'random':>17}   {'scripted':>17}   (mean +- standard error)")
    for name in sorted(k for k in result if k.startswith("mean_") and not k.endswith("_stderr")):
        cells = [f"{result[prefix + name]:9.3f} +- {result[prefix + name + '_stderr']:5.3f}"
                 if prefix + name in result else "n/a" for prefix in ("", "random_", "scripted_")]
        print(f"  {name.removeprefix('mean_'):<16} {cells[0]:>17}   {cells[1]:>17}   {cells[2]:>17}")
    if "scripted" in result:
        print(f"  scripted baseline {result['scripted']}")
    if "replays" in result:
        print(f"  {len(result['replays'])} replays written to {args.replay_dir}/ (open them in MettaScope)")


def cmd_export(args: argparse.Namespace) -> int:
    from metta_agent.mettagrid_policy import export_submission

    result = export_submission(args.path, args.out, args.game)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"exported {result['agent']} for {result['game']} to {result['folder']}/ (policy_spec.json, "
              f"cogames.toml, agent.pt); load it where metta-agent is installed (the source is not bundled)")
    return 0


def cmd_games(args: argparse.Namespace) -> int:
    from metta_agent.games import GAME_NAMES, describe_game

    from metta_agent.baselines import stored_baselines

    rows = [describe_game(name) for name in GAME_NAMES]
    for row in rows:
        row["baselines"] = stored_baselines(row["name"])
    if args.json:
        print(json.dumps(rows))
        return 0
    for row in rows:
        print(f"{row['name']:<10} {row['agents']:>3} agents  map {row['map']:<26} {len(row['actions'])} actions  "
              f"{row['num_features']} features  max_steps {row['max_steps']}")
        print(f"           {row['description']}")
        print(f"           actions: {', '.join(row['actions'])}")
        baselines = row["baselines"]
        for name in ("random", "scripted"):
            figures = baselines.get(name)
            if figures:
                stats = ", ".join(f"{key.removeprefix('mean_')} {value:.2f} +- {figures[key + '_stderr']:.2f}"
                                  for key, value in figures.items()
                                  if not key.endswith("_stderr") and key != "mean_length")
                print(f"           {name}: {stats} per agent per episode ({baselines['episodes']} episodes)")
        if baselines.get("command"):
            print(f"           measured by: {baselines['command']}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from metta_agent.bench import run_benchmark

    config = resolve_run_config(args)
    if args.repeats < 1:
        raise UsageError(f"--repeats must be at least 1, got {args.repeats}")
    say = None if args.json else (lambda message: print(message, file=sys.stderr))
    result = run_benchmark(config, repeats=args.repeats, progress=say, compare_compile=not args.no_compile,
                           ranks=0 if args.no_distributed else 2)
    if args.json:
        print(json.dumps(result))
    else:
        for name, value in result.items():
            print(f"{name:<20} {value:,.3f}" if isinstance(value, float) else f"{name:<20} {value}")
    return 0


def cmd_parity(args: argparse.Namespace) -> int:
    from metta_agent.parity import ARCHITECTURES, PARITY_GAME, check_architecture

    names = list(ARCHITECTURES)
    if args.agent:
        name = args.agent.removeprefix("pytorch/")
        if name not in ARCHITECTURES:
            raise UsageError(f"unknown architecture '{args.agent}'; choose one of: {', '.join(ARCHITECTURES)}")
        names = [name]
    reports = []
    for name in names:
        if not args.json:
            print(f"checking {name} ...", file=sys.stderr, flush=True)
        reports.append(check_architecture(name, seed=args.seed))
    if args.json:
        print(json.dumps([report.to_dict() for report in reports]))
    else:
        for report in reports:
            status = "ok" if report.ok else "FAILED"
            print(f"{report.agent}: {status}  ({report.params_component:,} parameters in each form on the "
                  f"{PARITY_GAME} game; 'metta-agent agents --game GAME' counts them on another)")
            for check in report.checks:
                mark = "ok" if check.ok else "FAIL"
                print(f"  {mark:<4} {check.name:<26} diff {check.difference:.2e}  (tolerance {check.tolerance:.0e})"
                      f"  {check.detail}")
    return 0 if all(report.ok for report in reports) else 1


def cmd_agents(args: argparse.Namespace) -> int:
    import torch

    from metta_agent.agent.registry import PYTORCH_AGENTS, build_agent, pytorch_twin
    from metta_agent.config import AgentSettings
    from metta_agent.env.info import EnvInfo
    from metta_agent.game_source import load_game
    from metta_agent.policies.component.graph import shipped_architectures

    env = EnvInfo.from_game(load_game(args.game))

    def params(name: str) -> int:
        torch.manual_seed(0)
        return build_agent(AgentSettings(name=name), env).total_params

    rows = []
    for name in shipped_architectures():
        twin = pytorch_twin(name)
        rows.append({"agent": name, "component": name, "pytorch": twin, "params_component": params(name),
                     "params_pytorch": params(twin) if twin else None})
    for name in sorted(PYTORCH_AGENTS):
        if not any(row["pytorch"] == name for row in rows):
            rows.append({"agent": name, "component": None, "pytorch": name, "params_component": None,
                         "params_pytorch": params(name)})
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"parameter counts on {args.game} ({env.num_features} features)")
    for row in rows:
        component = f"{row['params_component']:,}" if row["params_component"] else "-"
        pytorch = f"{row['params_pytorch']:,}" if row["params_pytorch"] else "-"
        print(f"  {row['component'] or '-':<26} component {component:>10}   {row['pytorch'] or '-':<28} {pytorch:>10}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from metta_agent.plot import compare_runs, format_final_figures

    summary = compare_runs(args.runs, args.out, metric=args.metric)
    if args.json:
        print(json.dumps(summary))
    else:
        print(format_final_figures(summary))
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from metta_agent.config import build_config, load_yaml, parse_set
    from metta_agent.sweep import SweepSettings, default_storage_url, format_table, load_space, run_sweep

    for flag, value in (("--trials", args.trials), ("--steps-per-trial", args.steps_per_trial),
                        ("--heartbeat-interval", args.heartbeat_interval)):
        if value < 1:
            raise UsageError(f"{flag} must be at least 1, got {value}")
    if not args.study.strip():
        raise UsageError("--study must name the study")
    space = load_space(args.space)
    overrides = parse_set(args.set)
    if "total_agent_steps" in overrides.get("trainer", {}):
        raise UsageError("the sweep sets trainer.total_agent_steps from --steps-per-trial; do not --set it")
    flags: dict[str, Any] = {}
    if args.agent:
        flags.setdefault("agent", {})["name"] = args.agent
    if args.game:
        flags.setdefault("game", {})["name"] = args.game
    if args.seed is not None:
        flags.setdefault("trainer", {})["seed"] = args.seed
    layers = [*([load_yaml(args.config)] if args.config else []), flags, overrides]
    sweep_dir = args.sweep_dir or Path("sweeps") / args.study
    settings = SweepSettings(
        space=space, study_name=args.study, storage_url=args.storage or default_storage_url(sweep_dir),
        trials=args.trials, steps_per_trial=args.steps_per_trial, sweep_dir=sweep_dir, base_layers=layers,
        objective=args.objective, seed=build_config(layers).trainer.seed, heartbeat_interval=args.heartbeat_interval,
        say=None if args.quiet else (lambda message: print(message, file=sys.stderr, flush=True)),
    )
    result = run_sweep(settings)
    print(json.dumps(result.to_dict()) if args.json else format_table(result))
    return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "export": cmd_export, "games": cmd_games, "bench": cmd_bench,
            "parity": cmd_parity, "agents": cmd_agents, "plot": cmd_plot, "sweep": cmd_sweep}


if __name__ == "__main__":
    sys.exit(main())
