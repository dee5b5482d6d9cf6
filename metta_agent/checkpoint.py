"""Checkpoints: tensors in a torch file read with ``weights_only=True`` (no arbitrary unpickling), plus JSON
metadata (format version, agent config, game features and actions, trainer counters).

Writes are atomic: the file is written under a temporary name and renamed, so a kill during a save never
leaves a broken checkpoint behind.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from metta_agent.errors import UsageError

FORMAT = "metta-agent-checkpoint"
FORMAT_VERSION = 1
CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^epoch_(\d{6,})\.pt$")


def checkpoint_path(run_dir: Path, epoch: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"epoch_{epoch:06d}.pt"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints of a run, oldest first."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(path: Path, metadata: dict[str, Any], tensors: dict[str, Any], keep: int | None = None) -> Path:
    """Write ``tensors`` (state dicts) and JSON ``metadata`` atomically; prune to the newest ``keep``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "metadata": json.dumps(metadata), **tensors}
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(temporary, "wb") as handle:
        torch.save(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    if keep is not None:
        for old in list_checkpoints(path.parent.parent)[:-keep]:
            old.unlink(missing_ok=True)
    return path


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or the newest checkpoint of a run directory."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"'{path}' does not exist: give a run directory or a checkpoint file")
    if path.is_dir():
        found = list_checkpoints(path)
        if not found:
            raise UsageError(f"run directory '{path}' has no checkpoints under {CHECKPOINT_DIR}/")
        return found[-1]
    return path


def load_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return ``(metadata, payload)``; refuses anything that is not a plain-tensor checkpoint of our format."""
    path = resolve_checkpoint(path)
    # torch.save writes a zip archive; anything else (a cut-off file, garbage) would reach the legacy pickle path.
    if not zipfile.is_zipfile(path):
        raise UsageError(f"'{path}' is not a readable checkpoint (truncated or corrupt: not a complete torch archive)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise UsageError(f"refusing to load '{path}': it holds objects other than tensors ({_reason(error)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as error:
        raise UsageError(f"'{path}' is not a readable checkpoint (truncated or corrupt: {type(error).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UsageError(f"'{path}' is not a metta-agent checkpoint")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise UsageError(f"'{path}' has checkpoint format version {version}; this metta-agent reads {FORMAT_VERSION}")
    try:
        metadata = json.loads(payload["metadata"])
    except (KeyError, TypeError, json.JSONDecodeError):
        raise UsageError(f"'{path}' has unreadable metadata") from None
    return metadata, payload


def _reason(error: Exception) -> str:
    """The line of torch's long weights-only message that names what was refused."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    named = [line for line in lines if "Unsupported" in line or "WeightsUnpickler error" in line]
    reason = (named or lines or ["unsafe content"])[0]
    return reason.split(". Please")[0][:160]
