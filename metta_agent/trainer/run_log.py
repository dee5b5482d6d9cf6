"""What a run writes as it trains: ``config.yaml``, ``metrics.jsonl`` (one JSON row per epoch, flushed as it
is written) and TensorBoard events. A resumed run first drops the rows and events of the epochs after its
checkpoint, which it is about to train again, so no epoch appears twice."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

from metta_agent.config import RunConfig
from metta_agent.files import write_text_atomically


class RunLog:
    def __init__(self, run_dir: Path, config: RunConfig, epoch: int, agent_steps: int):
        """Open the logs of a run at ``epoch`` (0 for a new run) and ``agent_steps`` (and W&B when the config
        asks for it)."""
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomically(run_dir / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
        metrics_path = run_dir / "metrics.jsonl"
        if epoch > 0:
            truncate_metrics(metrics_path, epoch)
        self._metrics = open(metrics_path, "a", encoding="utf-8")
        from torch.utils.tensorboard import SummaryWriter

        # purge_step makes TensorBoard discard events logged at or after it by the run before the resume.
        self._writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=agent_steps + 1 if epoch > 0 else None)
        self.wandb = None
        if config.trainer.wandb:
            from metta_agent.trainer.wandb_log import WandbLog

            self.wandb = WandbLog(run_dir, config.trainer.wandb_project, config.to_dict())

    def write(self, metrics: dict[str, Any], agent_steps: int) -> None:
        self._metrics.write(json.dumps(json_safe(metrics)) + "\n")
        self._metrics.flush()
        for name, value in metrics.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self._writer.add_scalar(name if "/" in name else f"train/{name}", value, agent_steps)
        if self.wandb is not None:
            self.wandb.log(metrics, agent_steps)

    def finish(self, curve: Path | None, final_eval: dict[str, Any] | None) -> None:
        """The end of a run: its learning curve and final eval go to W&B too."""
        if self.wandb is not None:
            self.wandb.finish_run(curve, final_eval)

    def close(self) -> None:
        self._metrics.close()
        self._writer.close()
        if self.wandb is not None:
            self.wandb.close()


def truncate_metrics(path: Path, last_epoch: int) -> None:
    """Keep only the rows of ``metrics.jsonl`` up to ``last_epoch`` (and drop a torn last line)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        if isinstance(row, dict) and int(row.get("epoch", 0)) <= last_epoch:
            kept.append(line)
    write_text_atomically(path, "".join(line + "\n" for line in kept))


def json_safe(metrics: dict[str, Any]) -> dict[str, Any]:
    """Non-finite floats as null (JSON has no NaN)."""
    return {name: None if isinstance(value, float) and not math.isfinite(value) else value
            for name, value in metrics.items()}
