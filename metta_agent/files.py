"""Reading the user's text files and replacing the run's own files, each failure one line naming the path."""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Callable

from metta_agent.errors import UsageError


def read_text_file(path: Path, what: str) -> str:
    """The UTF-8 text of a user's file, or a one-line UsageError naming it."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise UsageError(f"{what} '{path}' is not UTF-8 text (byte {error.start}: {error.reason})") from None
    except OSError as error:
        raise UsageError(f"cannot read {what} '{path}': {error.strerror or error}") from None


def temporary_path(path: Path) -> Path:
    """Where ``replace_atomically`` writes before renaming: ``.NAME.tmp-PID`` beside ``path`` (the PID, so
    several writers such as sweep workers never share one, and a dead writer's file can be told apart)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def replace_atomically(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Replace ``path`` with what ``write`` puts into a binary file, all at once: a reader (or a crash) sees
    the old file or the new one, never a half-written one. On any failure (a full disk) the temporary file
    is removed and the error goes on; the old file is untouched."""
    path = Path(path)
    temporary = temporary_path(path)
    try:
        with open(temporary, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            temporary.unlink(missing_ok=True)
        except OSError:
            pass
        raise


def write_text_atomically(path: Path, text: str) -> None:
    """``replace_atomically`` with UTF-8 ``text``; a failure is a one-line UsageError naming the path."""
    try:
        replace_atomically(path, lambda handle: handle.write(text.encode("utf-8")))
    except OSError as error:
        raise UsageError(f"cannot write '{path}': {error.strerror or error}; it was left as it was") from None
