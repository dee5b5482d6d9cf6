"""Checkpoints: tensors in a torch file read with ``weights_only=True`` (no arbitrary unpickling), plus JSON
metadata (format version, agent config, game features and actions, trainer counters).

Integrity (format version 2): the metadata holds a SHA-256 digest of every tensor's bytes (model, optimizer
state, RNG states...) and one of every other value, and the payload a digest of the metadata itself; a
loader checks them all, so a flipped byte anywhere in the file is an error naming the file and the tensor.
Version-1 files (no digests) still load, with a warning that they cannot be verified.

Untrusted files: before ``torch.load`` the zip directory is checked: torch writes uncompressed records, so a
compressed record (a decompression bomb) or sizes that do not fit in the file are refused unread. An
agent built from a user's YAML graph carries that YAML in the checkpoint and is rebuilt from it: a
checkpoint never makes the loader open a path it names.

Writes are atomic: the file is written under a temporary name and renamed, so a kill during a save never
leaves a broken checkpoint behind. A failed write (a full disk) removes its temporary file and is a one-line
error; temporary files left by dead processes are removed at the next save.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import sys
import zipfile
from pathlib import Path
from typing import Any, Iterator

import torch

from metta_agent.errors import TrainingError, UsageError, first_line
from metta_agent.files import replace_atomically

FORMAT = "metta-agent-checkpoint"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: no digests (loads unverified, with a warning)
CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^epoch_(\d{6,})\.pt$")
_TEMPORARY = re.compile(r"^\.epoch_\d{6,}\.pt\.tmp-(\d+)$")  # files.temporary_path of a checkpoint
_FORMAT_KEYS = ("format", "format_version", "metadata", "metadata_sha256")
ARCHITECTURE_YAML = "architecture_yaml"  # metadata["agent"][...]: the YAML graph of a user-file architecture
MAX_RECORDS = 100_000


class UnreadableCheckpoint(UsageError):
    """A damaged file (truncated, corrupt, digest mismatch): a run directory falls back to an older checkpoint."""


def checkpoint_path(run_dir: Path, epoch: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"epoch_{epoch:06d}.pt"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints of a run, oldest first."""
    return _checkpoints_in(Path(run_dir) / CHECKPOINT_DIR)


def checkpoint_epoch(path: Path) -> int | None:
    """The epoch a checkpoint file's name gives (``epoch_000012.pt`` -> 12), or None for another name."""
    match = _NAME.match(Path(path).name)
    return int(match.group(1)) if match else None


def _checkpoints_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    found = [(epoch, p) for p in folder.iterdir() if (epoch := checkpoint_epoch(p)) is not None]
    return [p for _, p in sorted(found)]


# ---- writing -----------------------------------------------------------------------------------------------

def save_checkpoint(path: Path, metadata: dict[str, Any], tensors: dict[str, Any], keep: int | None = None) -> Path:
    """Write ``tensors`` (state dicts) and JSON ``metadata`` atomically, with digests; keep the newest ``keep``.

    Older checkpoints beyond ``keep`` are removed before the write (never the last one), so the folder peaks
    at ``keep`` checkpoints counting the one being written (two for ``keep=1``).
    """
    path = Path(path)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder)
    stored = _embed_architecture(dict(metadata))
    stored.pop("tensor_sha256", None)
    stored.pop("values_sha256", None)
    stored["tensor_sha256"] = {name: _sha256(tensor) for name, tensor in _named_tensors(tensors)}
    stored["values_sha256"] = _values_digest(tensors)
    text = json.dumps(stored)
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "metadata": text,
               "metadata_sha256": hashlib.sha256(text.encode()).hexdigest(), **tensors}
    if keep is not None:
        _prune(folder, max(keep - 1, 1), spare=path)
    try:
        replace_atomically(path, lambda handle: torch.save(payload, handle))
    except (OSError, RuntimeError) as error:
        raise TrainingError(_write_failure(path, error, _estimated_size(tensors, text))) from None
    _sync_folder(folder)
    if keep is not None:
        _prune(folder, keep)
    return path


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove ``.epoch_*.pt.tmp-PID`` files whose writing process is gone; returns the paths removed."""
    removed = []
    if not Path(folder).is_dir():
        return removed
    for entry in Path(folder).iterdir():
        match = _TEMPORARY.match(entry.name)
        if match and not _pid_alive(int(match.group(1))):
            try:
                entry.unlink()
                removed.append(entry)
            except OSError:
                pass
    return removed


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid() or os.name != "posix":
        return True  # our own file (a save in progress), or no cheap way to tell: keep it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def _prune(folder: Path, keep: int, spare: Path | None = None) -> None:
    found = [p for p in _checkpoints_in(folder) if p != spare]
    for old in found[:-keep] if keep > 0 else found:
        old.unlink(missing_ok=True)


def _sync_folder(folder: Path) -> None:
    """Make the rename durable (best effort: not every platform can open a directory)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _estimated_size(tensors: dict[str, Any], metadata_text: str) -> int:
    storages: dict[tuple[str, int], int] = {}
    count = 0
    for _, tensor in _named_tensors(tensors):
        storage = tensor.untyped_storage()
        storages[(str(tensor.device), storage.data_ptr())] = storage.nbytes()
        count += 1
    return sum(storages.values()) + len(metadata_text) + 1024 * count + 65536


def _write_failure(path: Path, error: BaseException, needed: int) -> str:
    try:
        free_bytes = shutil.disk_usage(path.parent).free
        free = f", {_megabytes(free_bytes)} free"
    except OSError:
        free_bytes, free = None, ""
    # torch reports a full disk as an "unexpected pos" in its zip writer, not as ENOSPC.
    if free_bytes is not None and free_bytes < needed:
        reason = "not enough space on its filesystem"
    else:
        reason = (getattr(error, "strerror", None) or first_line(error))[:160]
    return (f"cannot write checkpoint '{path}': {reason} (it needs about {_megabytes(needed)} "
            f"in '{path.parent}'{free}); the temporary file was removed")


def _megabytes(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def _embed_architecture(metadata: dict[str, Any]) -> dict[str, Any]:
    """An agent built from a user's YAML file carries that YAML: loaders build from it, never from the path."""
    agent = metadata.get("agent")
    if not isinstance(agent, dict):
        return metadata
    name = (agent.get("settings") or {}).get("name")
    if not isinstance(name, str) or not name.endswith((".yaml", ".yml")) or isinstance(agent.get(ARCHITECTURE_YAML), str):
        return metadata
    from metta_agent.policies.component.graph import loaded_spec_text

    text = loaded_spec_text(name)
    if text is None:
        try:
            text = Path(name).read_text()
        except OSError as error:
            raise UsageError(f"cannot embed architecture '{name}' in the checkpoint: {first_line(error)}") from None
    return {**metadata, "agent": {**agent, ARCHITECTURE_YAML: text}}


# ---- digests -----------------------------------------------------------------------------------------------

def _walk(value: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    """Leaves of nested dicts / lists / tuples with dotted names, in order."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _walk(item, f"{prefix}.{index}" if prefix else str(index))
    else:
        yield prefix, value


def _leaves(payload: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    for key, value in payload.items():
        if key not in _FORMAT_KEYS:
            yield from _walk(value, str(key))


def _named_tensors(payload: dict[str, Any]) -> list[tuple[str, torch.Tensor]]:
    named: list[tuple[str, torch.Tensor]] = []
    seen: dict[str, int] = {}
    for name, value in _leaves(payload):
        if isinstance(value, torch.Tensor):
            seen[name] = seen.get(name, 0) + 1
            named.append((name if seen[name] == 1 else f"{name}#{seen[name]}", value))
    return named


def _sha256(tensor: torch.Tensor) -> str:
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    if flat.numel() == 0:
        return hashlib.sha256(b"").hexdigest()
    return hashlib.sha256(flat.view(torch.uint8).numpy().data).hexdigest()


def _values_digest(payload: dict[str, Any]) -> str:
    """One digest of every non-tensor value (learning rates, schedule counters...) with its name and type."""
    digest = hashlib.sha256()
    for name, value in _leaves(payload):
        if not isinstance(value, torch.Tensor):
            digest.update(f"{name}={type(value).__name__}:{value!r}\n".encode())
    return digest.hexdigest()


def _verify(path: Path, payload: dict[str, Any], metadata: dict[str, Any]) -> None:
    tensor_digests = metadata.pop("tensor_sha256", None)
    values_digest = metadata.pop("values_sha256", None)
    if not isinstance(tensor_digests, dict) or not isinstance(values_digest, str):
        raise UnreadableCheckpoint(f"'{path}' is corrupt: its metadata has no digests, which its format "
                                   f"version requires")
    named = _named_tensors(payload)
    names = {name for name, _ in named}
    for name in tensor_digests:
        if name not in names:
            raise UnreadableCheckpoint(f"'{path}' is corrupt: tensor '{name}' is missing")
    for name, tensor in named:
        expected = tensor_digests.get(name)
        if expected is None:
            raise UnreadableCheckpoint(f"'{path}' is corrupt: tensor '{name}' has no digest")
        if _sha256(tensor) != expected:
            raise UnreadableCheckpoint(f"'{path}' is corrupt: tensor '{name}' does not match its SHA-256 digest")
    if _values_digest(payload) != values_digest:
        raise UnreadableCheckpoint(f"'{path}' is corrupt: its non-tensor values (optimizer settings, counters) "
                                   f"do not match their SHA-256 digest")


# ---- reading -----------------------------------------------------------------------------------------------

def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or the newest readable checkpoint of a run directory (see ``load_checkpoint``)."""
    path = _existing(path)
    if path.is_dir():
        return _newest_readable(path)[0]
    return path


def load_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return ``(metadata, payload)``; refuses anything that is not an intact plain-tensor checkpoint of our
    format. For a run directory, the newest checkpoint that reads; skipped unreadable (truncated, corrupt)
    newer ones are named in a warning. A file given by its path is never replaced by another."""
    path = _existing(path)
    if path.is_dir():
        return _newest_readable(path)[1:]
    return _load_file(path)


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise UsageError(f"'{path}' does not exist: give a run directory or a checkpoint file")
    return path


def _newest_readable(run_dir: Path) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    found = list_checkpoints(run_dir)
    if not found:
        raise UsageError(f"run directory '{run_dir}' has no checkpoints under {CHECKPOINT_DIR}/")
    skipped: list[tuple[Path, UnreadableCheckpoint]] = []
    for candidate in reversed(found):
        try:
            metadata, payload = _load_file(candidate)
        except UnreadableCheckpoint as error:
            skipped.append((candidate, error))
            continue
        if skipped:
            names = ", ".join(p.name for p, _ in skipped)
            _warn_once(candidate, f"skipped unreadable checkpoint(s) {names} in '{run_dir}' "
                                  f"({first_line(skipped[0][1])}); using {candidate.name}")
        return candidate, metadata, payload
    if len(skipped) == 1:
        raise skipped[0][1]
    raise UsageError(f"run directory '{run_dir}' has no readable checkpoint ({len(skipped)} tried; newest: "
                     f"{first_line(skipped[0][1])})")


def _load_file(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    _check_archive(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise UsageError(f"refusing to load '{path}': it holds objects other than tensors ({_reason(error)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as error:
        raise UnreadableCheckpoint(f"'{path}' is not a readable checkpoint (truncated or corrupt: "
                                   f"{type(error).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UsageError(f"'{path}' is not a metta-agent checkpoint")
    version = payload.get("format_version")
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        raise UsageError(f"'{path}' has checkpoint format version {version}; this metta-agent reads versions "
                         f"{READABLE_VERSIONS[0]} to {FORMAT_VERSION}")
    text = payload.get("metadata")
    if version >= 2 and (not isinstance(text, str)
                         or hashlib.sha256(text.encode()).hexdigest() != payload.get("metadata_sha256")):
        raise UnreadableCheckpoint(f"'{path}' is corrupt: its metadata does not match its SHA-256 digest")
    try:
        metadata = json.loads(text)
    except (TypeError, json.JSONDecodeError):
        raise UnreadableCheckpoint(f"'{path}' has unreadable metadata") from None
    if not isinstance(metadata, dict):
        raise UnreadableCheckpoint(f"'{path}' has unreadable metadata")
    if version >= 2:
        _verify(path, payload, metadata)
    else:
        _warn_once(path, f"'{path}' is a format-1 checkpoint without digests: its contents cannot be verified")
    return metadata, payload


def _check_archive(path: Path) -> None:
    """Look at the zip directory before torch does: torch.save writes uncompressed ("stored") records whose
    sizes add up to less than the file, so a compressed record or implausible sizes are refused unread."""
    # torch.save writes a zip archive; anything else (a cut-off file, garbage) would reach the legacy pickle path.
    unreadable = f"'{path}' is not a readable checkpoint (truncated or corrupt: not a complete torch archive)"
    if not zipfile.is_zipfile(path):
        raise UnreadableCheckpoint(unreadable)
    try:
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError):
        raise UnreadableCheckpoint(unreadable) from None
    file_size = path.stat().st_size
    if len(records) > MAX_RECORDS:
        raise UsageError(f"refusing to load '{path}': {len(records)} zip records (torch writes a few per tensor)")
    total = 0
    for record in records:
        if record.compress_type != zipfile.ZIP_STORED:
            raise UsageError(f"refusing to load '{path}': zip record '{record.filename}' is compressed "
                             f"(method {record.compress_type}); torch writes uncompressed records")
        if record.file_size != record.compress_size or record.header_offset + record.compress_size > file_size:
            raise UnreadableCheckpoint(f"'{path}' is not a readable checkpoint (truncated or corrupt: zip record "
                                       f"'{record.filename}' claims {record.file_size} bytes that the file cannot hold)")
        total += record.file_size
    if total > file_size:
        raise UsageError(f"refusing to load '{path}': its zip records claim {total} bytes, more than the file's "
                         f"{file_size}")


_WARNED: set[tuple[str, int, int, str]] = set()


def _warn_once(path: Path, message: str) -> None:
    """One line on stderr, once per file version and message (``eval`` reads a checkpoint twice)."""
    try:
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, message)
    except OSError:
        key = (str(path), 0, 0, message)
    if key in _WARNED:
        return
    _WARNED.add(key)
    print(f"warning: {message}", file=sys.stderr)


def _reason(error: Exception) -> str:
    """The line of torch's long weights-only message that names what was refused."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    named = [line for line in lines if "Unsupported" in line or "WeightsUnpickler error" in line]
    reason = (named or lines or ["unsafe content"])[0]
    return reason.split(". Please")[0][:160]
