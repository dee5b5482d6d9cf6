"""One writer per run directory: the training process holds an OS lock on ``RUN_DIR/.writer.lock``.

Two trainers, or two ``--resume``, writing one run directory would interleave metrics rows and race on
checkpoints. ``fcntl.flock`` is released by the kernel when its holder exits or is killed, so a crashed run
never leaves a lock behind. The file holds the holder's PID, for the message the second writer gets.
Readers (``eval``, ``plot``) never take it: they work on a run that is training.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from metta_agent.errors import UsageError

LOCK_NAME = ".writer.lock"


class RunDirLock:
    """Held from :meth:`acquire` until :meth:`release` (or the process's end)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self._file = None
        self.created_folder = False

    def acquire(self) -> None:
        self.created_folder = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise UsageError(f"run directory '{self.path.parent}' is being written by another training process "
                             f"(PID {holder}); wait for it to end or stop it first") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def abandon(self) -> None:
        """Release after a start that failed: a run directory this lock created, and that holds nothing but
        the lock file, is removed again."""
        self.release()
        folder = self.path.parent
        try:
            if self.created_folder and [entry.name for entry in folder.iterdir()] == [LOCK_NAME]:
                self.path.unlink()
                folder.rmdir()
        except OSError:
            pass
