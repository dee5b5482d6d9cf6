"""Optional Weights & Biases logging (``--wandb`` / ``trainer.wandb``): the metrics TensorBoard gets, the config,
the learning curve and the final eval (docs/design.md, "PPO trainer").

wandb is an optional dependency (``pip install 'metta-agent[wandb]'``). It goes online only when an API key is
available (``WANDB_API_KEY`` or a ``wandb login``) and ``WANDB_MODE`` is not ``offline``/``disabled``; otherwise
it logs offline under ``<run>/wandb`` (``wandb sync`` uploads it later). It never prompts: an online start
that fails or times out falls back to offline, and an offline start that fails turns W&B off with a warning.
Training never stops because of W&B. A resumed run continues the same W&B run (its id is kept in
``<run>/wandb_id``).
"""

from __future__ import annotations

import math
import os
import uuid
import warnings
from pathlib import Path
from typing import Any

from metta_agent.errors import UsageError, first_line

INIT_TIMEOUT_SECONDS = 20
ID_FILE = "wandb_id"


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False


def wanted_mode() -> str:
    """``online`` with an API key and WANDB_MODE allowing it, else ``offline``."""
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if mode in ("offline", "dryrun", "disabled"):
        return "offline"
    return "online" if _has_api_key() else "offline"


class WandbLog:
    def __init__(self, run_dir: Path, project: str, config: dict[str, Any]):
        try:
            import wandb
        except ImportError:
            raise UsageError("--wandb needs the wandb package: pip install 'metta-agent[wandb]' (or pip install "
                             "wandb)") from None
        self._wandb = wandb
        id_path = run_dir / ID_FILE
        run_id = id_path.read_text(encoding="utf-8").strip() if id_path.is_file() else uuid.uuid4().hex[:12]
        id_path.write_text(run_id + "\n", encoding="utf-8")
        self.mode = wanted_mode()
        self.run = None
        for mode in (["online", "offline"] if self.mode == "online" else ["offline"]):
            try:
                self.run = wandb.init(
                    project=project, name=run_dir.name, id=run_id, resume="allow", dir=str(run_dir),
                    config=config, mode=mode, reinit="create_new",
                    settings=wandb.Settings(init_timeout=INIT_TIMEOUT_SECONDS, silent=True, console="off",
                                            x_disable_stats=True),
                )
                self.mode = mode
                break
            except Exception as error:  # the network, the service, a bad key: never fatal
                warnings.warn(f"W&B {mode} start failed ({type(error).__name__}: {first_line(error)})"
                              + ("; logging offline" if mode == "online" else "; W&B is off for this run"),
                              RuntimeWarning, stacklevel=2)
        self.directory = Path(self.run.dir).parent if self.run is not None else None

    def log(self, metrics: dict[str, Any], agent_steps: int) -> None:
        if self.run is None:
            return
        numbers = {name if "/" in name else f"train/{name}": value for name, value in metrics.items()
                   if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}
        self._call(self.run.log, numbers, step=agent_steps)

    def finish_run(self, curve: Path | None, final: dict[str, Any] | None) -> None:
        """The learning curve as an image and the final eval in the run summary."""
        if self.run is None:
            return
        if curve is not None and curve.is_file():
            self._call(self.run.log, {"curve": self._wandb.Image(str(curve))})
        for name, value in (final or {}).items():
            self.run.summary[f"final/{name}"] = value

    def close(self) -> None:
        if self.run is not None:
            self._call(self.run.finish)
            self.run = None

    def _call(self, function, *args, **kwargs) -> None:
        try:
            function(*args, **kwargs)
        except Exception as error:
            warnings.warn(f"W&B logging failed ({type(error).__name__}: {first_line(error)}); W&B is off for this "
                          "run", RuntimeWarning, stacklevel=3)
            self.run = None
