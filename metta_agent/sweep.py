"""``metta-agent sweep``: a hyper-parameter search over training runs, on Optuna.

A sweep is an Optuna study in a database (SQLite by default, any SQLAlchemy URL such as PostgreSQL to share
it between machines). Every ``metta-agent sweep`` process pointed at the same storage and study name is one
*worker* of that study: it takes trials until the study holds ``--trials`` finished (complete or pruned)
trials in total, trains each one in process with :class:`~metta_agent.trainer.trainer.Trainer`, and scores
it by the in-training evaluation (``eval/hearts`` or ``eval/return``, the last eval point). Eval points are
reported to Optuna as they come, so a median pruner can stop a poor trial early.

Workers die (SIGKILL, a lost machine): each trial has a heartbeat in the database, and a trial whose
heartbeat goes stale is marked FAILED and queued once more with the same parameters by whichever worker
looks next. A worker never leaves while other workers' trials are still running, so the last one alive
picks up the trials of the dead and the study reaches its count.

Why the trial budget is enforced here rather than by ``n_trials``: Optuna's ``n_trials`` counts one worker's
trials, and its ``MaxTrialsCallback`` only checks after a trial, so two workers would overshoot. Here a
worker starts a trial only while the study's finished + running + queued trials are below the budget, and
right after Optuna hands it a trial it checks that fewer than ``--trials`` earlier-numbered trials hold a
slot; trial numbers are assigned by the storage, so when two workers race for the last slot exactly one
keeps it. The loser ends its trial (FAILED, user attribute ``surplus``, no parameters, never shown) and
waits like any worker whose study is full.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from metta_agent.config import AgentSettings, RunConfig, build_config
from metta_agent.errors import TrainingError, UsageError, first_line
from metta_agent.files import write_text_atomically

OBJECTIVES = {"hearts": "eval/hearts", "return": "eval/return"}
SECTIONS = ("agent", "game", "trainer")
DEFAULT_HEARTBEAT_INTERVAL = 60
"""Seconds between a running trial's heartbeats; a trial is stale (its worker dead) after twice that."""
# How often a worker whose study is full looks again at other workers' running trials.
WAIT_POLL_SECONDS = 1.0
# Keys a trial may not change: the sweep owns them (the trial length) or they make scores incomparable.
FIXED_KEYS = {
    "trainer.total_agent_steps": "it is set by --steps-per-trial",
    "game.name": "all trials of a study play one game (--game)",
}
_SPEC_KEYS = {
    "float": {"type", "low", "high", "log", "step"},
    "int": {"type", "low", "high", "log", "step"},
    "categorical": {"type", "choices"},
}


class _SurplusTrial(Exception):
    """Optuna handed this worker a trial after another worker filled the study's last slot."""


# ---- the search space ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dimension:
    """One searched config key (``trainer.lr``) and the distribution its values are drawn from."""

    key: str
    kind: str  # float, int or categorical
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.kind == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high, log=self.log, step=self.step or 1)
        return trial.suggest_categorical(self.key, list(self.choices))

    def extremes(self) -> list[Any]:
        """The values a valid key must accept: both bounds, or every choice."""
        return [self.low, self.high] if self.kind != "categorical" else list(self.choices)


def load_space(path: Path) -> list[Dimension]:
    """Read and check a space file: a mapping of dotted config keys to ``{type: float|int|categorical, ...}``."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"space file '{path}' does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise UsageError(f"space file '{path}' is not valid YAML: {first_line(error)}") from None
    if not isinstance(data, dict) or not data:
        raise UsageError(
            f"space file '{path}' must hold a mapping of config keys to distributions, "
            "e.g. 'trainer.lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}'"
        )
    try:
        return [parse_dimension(key, spec) for key, spec in data.items()]
    except UsageError as error:
        raise UsageError(f"space file '{path}': {error}") from None


def parse_dimension(key: Any, spec: Any) -> Dimension:
    if not isinstance(key, str) or "." not in key:
        raise UsageError(f"key {key!r} must be a dotted config key such as trainer.lr")
    section = key.split(".", 1)[0]
    if section not in SECTIONS:
        raise UsageError(f"{key}: unknown section '{section}'; sections are: {', '.join(SECTIONS)}")
    if key in FIXED_KEYS:
        raise UsageError(f"{key} cannot be searched: {FIXED_KEYS[key]}")
    if not isinstance(spec, dict) or "type" not in spec:
        raise UsageError(f"{key}: give a mapping with a type (float, int or categorical), got {spec!r}")
    kind = spec["type"]
    if kind not in _SPEC_KEYS:
        raise UsageError(f"{key}: unknown type {kind!r}; types are: float, int, categorical")
    unknown = sorted(set(spec) - _SPEC_KEYS[kind])
    if unknown:
        fields = ", ".join(sorted(_SPEC_KEYS[kind]))
        raise UsageError(f"{key}: unknown field '{unknown[0]}' for type {kind}; fields: {fields}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise UsageError(f"{key}: categorical needs a non-empty list of choices, got {choices!r}")
        for choice in choices:
            if choice is not None and not isinstance(choice, (bool, int, float, str)):
                raise UsageError(f"{key}: choices must be numbers, strings, booleans or null, got {choice!r}")
        return Dimension(key, kind, choices=tuple(choices))

    def number(name: str) -> float | int:
        value = spec.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UsageError(f"{key}: {name} must be a number, got {value!r}")
        if kind == "int" and float(value) != int(value):
            raise UsageError(f"{key}: {name} of an int must be a whole number, got {value!r}")
        return int(value) if kind == "int" else float(value)

    low, high = number("low"), number("high")
    if low >= high:
        raise UsageError(f"{key}: low {low} must be below high {high}")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise UsageError(f"{key}: log must be true or false, got {log!r}")
    if log and low <= 0:
        raise UsageError(f"{key}: a log scale needs low > 0, got low {low}")
    step = None
    if spec.get("step") is not None:
        step = number("step")
        if step <= 0:
            raise UsageError(f"{key}: step must be positive, got {step}")
        if log:
            raise UsageError(f"{key}: step and log cannot be combined")
    return Dimension(key, kind, low=low, high=high, log=log, step=step)


def nest(values: dict[str, Any]) -> dict[str, Any]:
    """``{"trainer.lr": 0.001}`` -> ``{"trainer": {"lr": 0.001}}`` (a config layer)."""
    layer: dict[str, Any] = {}
    for key, value in values.items():
        node = layer
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return layer


def check_space_against_config(space: list[Dimension], base_layers: list[dict[str, Any]]) -> None:
    """Every key must be one the run config knows, and take both its bounds (or every choice): the config
    builder rejects unknown keys and values of the wrong type; architecture parameters are checked against the
    architecture's own. The in-training evaluation must stay on, since it is what trials are scored by."""
    from metta_agent.agent.registry import resolve_architecture

    common_agent_keys = {f.name for f in dataclasses.fields(AgentSettings)}
    for dimension in space:
        for value in dimension.extremes():
            config = build_config([*base_layers, nest({dimension.key: value})])
            section, name = dimension.key.split(".", 1)
            if section == "agent" and name.split(".")[0] not in common_agent_keys:
                architecture_key = name.removeprefix("kwargs.")
                _, allowed = resolve_architecture(config.agent.name)
                if architecture_key not in allowed:
                    raise UsageError(f"unknown agent parameter '{architecture_key}' for '{config.agent.name}'; "
                                     f"allowed: {', '.join(allowed)}")
            elif section != "agent" and dimension.kind == "float":
                resolved = getattr(getattr(config, section), name)
                if isinstance(resolved, int) and not isinstance(resolved, bool):
                    raise UsageError(f"{dimension.key} takes whole numbers: use type: int")
            require_eval(config)


def require_eval(config: RunConfig) -> None:
    if config.trainer.eval_interval <= 0:
        raise UsageError("the sweep scores trials by the in-training evaluation: trainer.eval_interval must be "
                         f"a positive number of epochs, got {config.trainer.eval_interval}")


# ---- the study ---------------------------------------------------------------------------------------------


@dataclass
class SweepSettings:
    space: list[Dimension]
    study_name: str
    storage_url: str
    trials: int
    """Finished (complete or pruned) trials the study should hold, over all of its workers."""
    steps_per_trial: int
    sweep_dir: Path
    base_layers: list[dict[str, Any]]
    """defaults < --config < --game/--agent/--seed < --set; the trial length and sampled values go on top."""
    objective: str = "hearts"
    seed: int = 0
    heartbeat_interval: int = DEFAULT_HEARTBEAT_INTERVAL
    say: Callable[[str], None] | None = None
    """Where progress lines go (one per finished trial); None for none."""


@dataclass
class SweepResult:
    study_name: str
    storage_url: str
    objective: str
    trials: list[dict[str, Any]]
    best: dict[str, Any] | None
    best_config_path: Path | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"study": self.study_name, "storage": self.storage_url, "objective": self.objective,
                "trials": self.trials, "best": self.best,
                "best_config": str(self.best_config_path) if self.best_config_path else None}


def default_storage_url(sweep_dir: Path) -> str:
    return f"sqlite:///{sweep_dir / 'study.db'}"


def open_storage(url: str, heartbeat_interval: int) -> optuna.storages.RDBStorage:
    """An RDB storage whose running trials heartbeat; a stale trial is failed and retried once."""
    import sqlalchemy.exc

    # SQLite locks the whole file while one worker writes: wait for it rather than fail at 5 s.
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    error: Exception | None = None
    # Two workers starting on a fresh database both create its tables; the loser of that race may see an
    # error from the database once. A second attempt finds the tables.
    for attempt in range(3):
        try:
            with _quiet_optuna_warnings():
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat_interval,
                    grace_period=2 * heartbeat_interval,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
                )
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError) as caught:
            error = caught
            time.sleep(0.5 * (attempt + 1))
        except (ImportError, sqlalchemy.exc.ArgumentError, ValueError) as caught:
            raise UsageError(f"cannot open --storage '{url}': {first_line(caught)}") from None
    raise UsageError(f"cannot open --storage '{url}': {first_line(error)}")


class Sweep:
    """One worker of a study: runs trials until the study is full, then reports the study."""

    def __init__(self, settings: SweepSettings):
        self.settings = settings
        self.metric = OBJECTIVES[settings.objective]
        self.full_run_steps = build_config(settings.base_layers).trainer.total_agent_steps
        self.storage = open_storage(settings.storage_url, settings.heartbeat_interval)
        self.study = self._load_study()
        self._waiting_said = False
        # The trial this worker is on, and what its objective raised (None: it returned a value).
        self._current_trial: int | None = None
        self._objective_error: BaseException | None = None

    # ---- study set-up ----

    def _load_study(self) -> optuna.Study:
        s = self.settings
        pruner = optuna.pruners.MedianPruner(
            # A median needs trials to stand on: a quarter of the study's trials (1 to 5) must complete first.
            n_startup_trials=max(1, min(5, s.trials // 4)),
            # The first quarter of a trial is never pruned: early eval points say little about the end.
            n_warmup_steps=s.steps_per_trial // 4,
        )
        with _quiet_optuna_warnings():
            study = optuna.create_study(storage=self.storage, study_name=s.study_name, direction="maximize",
                                        sampler=self._sampler(None), pruner=pruner, load_if_exists=True)
        if len(study.directions) != 1 or study.direction != optuna.study.StudyDirection.MAXIMIZE:
            raise UsageError(f"study '{s.study_name}' in {s.storage_url} exists and does not maximize one value: "
                             "choose another --study")
        # Workers of one study must score alike: the first worker records what the study measures.
        for name, value in (("objective", s.objective), ("steps_per_trial", s.steps_per_trial)):
            recorded = study.user_attrs.get(name)
            if recorded is None:
                study.set_user_attr(name, value)
            elif recorded != value:
                flag = "--" + name.replace("_", "-")
                raise UsageError(f"study '{s.study_name}' was started with {flag} {recorded}, not {value}: "
                                 f"join it with the same {flag} or choose another --study")
        trials_dir = s.sweep_dir / "trials"
        # (Directory first, trials second: a trial's directory is made after the trial exists.)
        if trials_dir.is_dir() and any(trials_dir.iterdir()) and not study.get_trials(deepcopy=False):
            raise UsageError(f"'{trials_dir}' holds trial directories of another study: choose another --sweep-dir")
        return study

    def _sampler(self, trial_number: int | None) -> optuna.samplers.BaseSampler:
        # TPE keeps no state but its random stream: a fresh sampler per trial, seeded from --seed and the trial
        # number, makes one worker's sweep repeatable and keeps two workers from drawing the same first
        # parameters (a sampler seeded once per worker would give every worker the same random start).
        seed = self.settings.seed if trial_number is None else int(
            np.random.SeedSequence([self.settings.seed, trial_number]).generate_state(1)[0])
        with _quiet_optuna_warnings():
            return optuna.samplers.TPESampler(
                seed=seed,
                n_startup_trials=max(2, min(10, self.settings.trials // 3)),
                # Parameters of trials still running elsewhere count as poor, so parallel workers spread out.
                constant_liar=True,
            )

    # ---- the worker loop ----

    def run(self) -> SweepResult:
        s = self.settings
        with _quiet_optuna_warnings():
            while True:
                optuna.storages.fail_stale_trials(self.study)
                slots = self._slots()
                if slots["finished"] >= s.trials:
                    break
                if slots["waiting"] or slots["finished"] + slots["running"] < s.trials:
                    self._waiting_said = False
                    self._run_one_trial()
                    continue
                # The study is full but other workers' trials still run: wait for them, and take over any
                # whose worker died once its heartbeat goes stale (fail_stale_trials above queues it again).
                if not self._waiting_said:
                    self._say(f"waiting for {slots['running']} trial(s) running in other workers")
                    self._waiting_said = True
                time.sleep(WAIT_POLL_SECONDS)
        return self.result()

    def _slots(self) -> dict[str, int]:
        counts = {"finished": 0, "running": 0, "waiting": 0}
        for trial in self.study.get_trials(deepcopy=False):
            if trial.user_attrs.get("surplus"):
                continue
            if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
                counts["finished"] += 1
            elif trial.state == TrialState.RUNNING:
                counts["running"] += 1
            elif trial.state == TrialState.WAITING:
                counts["waiting"] += 1
        return counts

    def _run_one_trial(self) -> None:
        self._current_trial, self._objective_error = None, None
        try:
            self.study.optimize(self._objective, n_trials=1, catch=(_SurplusTrial,), gc_after_trial=True,
                                callbacks=[self._report_trial])
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError):
            if not self._taken_over():
                raise
            self._say(f"trial {self._current_trial} was failed by another worker (its heartbeat went stale); "
                      "its result is discarded and its retry runs it again")

    def _taken_over(self) -> bool:
        """Whether another worker failed this worker's trial as stale (this process stalled past the grace
        period): then reporting to it, or telling its result, fails because it is already finished. An error
        of the objective's own (a ValueError in training...) is not that, and still ends the worker."""
        if self._current_trial is None or self._trial(self._current_trial).state != TrialState.FAIL:
            return False
        error = self._objective_error
        return error is None or isinstance(error, (optuna.exceptions.UpdateFinishedTrialError, optuna.TrialPruned))

    def _objective(self, trial: optuna.Trial) -> float:
        self._current_trial = trial.number
        try:
            return self._train_trial(trial)
        except BaseException as error:
            self._objective_error = error
            raise

    def _train_trial(self, trial: optuna.Trial) -> float:
        from metta_agent.game_source import game_mix, resolve_games
        from metta_agent.trainer.trainer import Trainer

        s = self.settings
        if not self._holds_slot(trial):
            trial.set_user_attr("surplus", True)
            raise _SurplusTrial(f"the study already holds {s.trials} trials")
        trial.study.sampler = self._sampler(trial.number)
        values = {dimension.key: dimension.suggest(trial) for dimension in s.space}
        run_dir = s.sweep_dir / "trials" / f"trial_{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("full_run_steps", self.full_run_steps)
        if run_dir.exists() and any(run_dir.iterdir()):
            raise UsageError(f"trial directory '{run_dir}' already exists: choose another --sweep-dir")
        try:
            # The trial's own values go last: defaults < --config < flags < --set < trial length < sampled values.
            config = build_config([*s.base_layers, {"trainer": {"total_agent_steps": s.steps_per_trial}}, nest(values)])
            require_eval(config)
            config.validate(game_mix(resolve_games(config.game)).info.agents_per_env)
            trial.set_user_attr("config", config.to_dict())
            trainer = Trainer(config, run_dir=run_dir, show_progress=False)
        except UsageError as error:
            # A combination the config refuses (a minibatch that does not divide the batch...) is a dead end
            # for this trial only: prune it and go on with the next.
            raise self._pruned(trial, f"invalid config: {first_line(error)}")

        last_value: float | None = None
        epochs = trainer.epochs()
        try:
            for row in epochs:
                if self.metric not in row:
                    continue
                last_value, step = float(row[self.metric]), int(row["agent_steps"])
                trial.report(last_value, step=step)
                trial.set_user_attr("agent_steps", step)
                # The last eval point is the trial's result; pruning there would throw it away.
                if step < config.trainer.total_agent_steps and trial.should_prune():
                    epochs.close()  # saves a checkpoint of what was trained
                    raise self._pruned(trial, f"below the median at step {step:,}")
        except TrainingError as error:
            raise self._pruned(trial, f"training failed: {first_line(error)}")
        finally:
            epochs.close()
        trained = trainer.state.agent_steps
        del trainer
        if trained < config.trainer.total_agent_steps:
            raise KeyboardInterrupt  # Ctrl-C: the trainer stopped at an epoch boundary (the trial fails)
        if last_value is None:
            raise TrainingError(f"trial {trial.number} finished without an eval point ({self.metric})")
        return last_value

    def _pruned(self, trial: optuna.Trial, reason: str) -> optuna.TrialPruned:
        """The exception that ends ``trial`` as pruned; the reason shows in the table."""
        trial.set_user_attr("note", reason)
        return optuna.TrialPruned(reason)

    def _holds_slot(self, trial: optuna.Trial) -> bool:
        """Whether fewer than ``--trials`` earlier trials hold a slot (finished, running or queued)."""
        taken = 0
        for other in self.study.get_trials(deepcopy=False):
            if other.number >= trial.number or other.user_attrs.get("surplus"):
                continue
            if other.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING):
                taken += 1
        return taken < self.settings.trials

    def _trial(self, number: int) -> FrozenTrial:
        return next(t for t in self.study.get_trials(deepcopy=False) if t.number == number)

    # ---- reporting ----

    def _report_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.user_attrs.get("surplus"):
            return
        row = trial_row(trial, self.study.get_trials(deepcopy=False))
        value = f" {self.settings.objective} {row['value']:.3f}" if row["value"] is not None else ""
        steps = f" after {row['agent_steps']:,} steps" if row["agent_steps"] is not None else ""
        note = f" ({row['note']})" if row["note"] else ""
        slots = self._slots()
        self._say(f"trial {trial.number} {row['state']}{value}{steps}{note} [{slots['finished']}/"
                  f"{self.settings.trials} finished]: {format_params(row['params'])}")

    def _say(self, message: str) -> None:
        if self.settings.say is not None:
            self.settings.say(message)

    def result(self) -> SweepResult:
        trials = self.study.get_trials(deepcopy=False)
        rows = [trial_row(t, trials) for t in trials if not t.user_attrs.get("surplus")]
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        if not complete:
            return SweepResult(self.settings.study_name, self.settings.storage_url, self.settings.objective,
                               rows, None, notes=["no trial completed, so there is no best.yaml"])
        best = max(complete, key=lambda t: (t.value, -t.number))
        path = write_best_config(best, self.settings.sweep_dir / "best.yaml", self.settings)
        best_row = next(row for row in rows if row["number"] == best.number)
        return SweepResult(self.settings.study_name, self.settings.storage_url, self.settings.objective, rows,
                           best_row, best_config_path=path)


def trial_row(trial: FrozenTrial, all_trials: list[FrozenTrial]) -> dict[str, Any]:
    """What the table shows of one trial; a failed trial says whether it was queued again."""
    note = trial.user_attrs.get("note", "")
    if trial.state == TrialState.FAIL and not note:
        retries = [t.number for t in all_trials if t.system_attrs.get("failed_trial") is not None
                   and trial.number in t.system_attrs.get("retry_history", [])]
        note = f"worker lost; retried as trial {retries[0]}" if retries else "failed"
    elif trial.system_attrs.get("retry_history"):
        note = (note + "; " if note else "") + f"retry of trial {trial.system_attrs['retry_history'][-1]}"
    steps = trial.user_attrs.get("agent_steps")
    if steps is None and trial.intermediate_values:
        steps = max(trial.intermediate_values)
    return {
        "number": trial.number,
        "state": trial.state.name,
        "value": trial.value if trial.state == TrialState.COMPLETE else None,
        "params": dict(trial.params),
        "agent_steps": steps,
        "run_dir": trial.user_attrs.get("run_dir"),
        "note": note,
    }


def write_best_config(best: FrozenTrial, path: Path, settings: SweepSettings) -> Path:
    """The best trial's full config, in a run's ``config.yaml`` layout, for ``train --config``. Its
    ``trainer.total_agent_steps`` is the full run's (defaults < --config < --set), not the short trial's."""
    config = dict(best.user_attrs["config"])
    config["trainer"] = {**config["trainer"], "total_agent_steps": best.user_attrs["full_run_steps"]}
    header = (
        f"# Best trial of sweep '{settings.study_name}': trial {best.number}, {settings.objective} {best.value:.4g}\n"
        f"# after {settings.steps_per_trial:,} agent steps. trainer.total_agent_steps is the full run's length;\n"
        f"# train it with: metta-agent train --config {path}\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, header + yaml.safe_dump(config, sort_keys=False))
    return path


def format_params(params: dict[str, Any]) -> str:
    return " ".join(f"{key}={_format_value(value)}" for key, value in params.items()) or "-"


def _format_value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def format_table(result: SweepResult) -> str:
    lines = [f"study '{result.study_name}' ({result.storage_url}), objective {result.objective}"]
    header = f"{'trial':>5}  {'state':<8}  {result.objective:>9}  {'steps':>9}  params"
    lines.append(header)
    for row in result.trials:
        value = f"{row['value']:.4f}" if row["value"] is not None else "-"
        steps = f"{row['agent_steps']:,}" if row["agent_steps"] is not None else "-"
        note = f"  ({row['note']})" if row["note"] else ""
        params = format_params(row["params"])
        lines.append(f"{row['number']:>5}  {row['state']:<8}  {value:>9}  {steps:>9}  {params}{note}")
    if result.best is not None:
        lines.append(f"best: trial {result.best['number']}, {result.objective} {result.best['value']:.4f}; "
                     f"its config: {result.best_config_path}")
    lines.extend(result.notes)
    return "\n".join(lines)


class _quiet_optuna_warnings(warnings.catch_warnings):
    """Heartbeats, stale-trial handling and the constant liar are marked experimental in Optuna; the
    sweep relies on them knowingly, so their warnings would only be noise on every worker's stderr."""

    def __enter__(self):
        result = super().__enter__()
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return result


def run_sweep(settings: SweepSettings) -> SweepResult:
    """Check the space against the config, join (or create) the study and work on it until it is full."""
    base = build_config(settings.base_layers)
    require_eval(base)
    check_space_against_config(settings.space, settings.base_layers)
    from metta_agent.trainer import distributed

    distributed.resolve_device(base.trainer.device, distributed.World())
    settings.sweep_dir.mkdir(parents=True, exist_ok=True)
    # Optuna logs every trial at INFO and a warning for each failed one; the worker prints its own line per
    # trial, and an unexpected error still ends the worker with its traceback.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return Sweep(settings).run()
