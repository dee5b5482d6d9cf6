"""Reading the user's text files and replacing the run's own files, each failure one line naming the path."""

from __future__ import annotations

import os
from pathlib import Path

from metta_agent.errors import UsageError


def read_text_file(path: Path, what: str) -> str:
    """The UTF-8 text of a user's file, or a one-line UsageError naming it."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise UsageError(f"{what} '{path}' is not UTF-8 text (byte {error.start}: {error.reason})") from None
    except OSError as error:
        raise UsageError(f"cannot read {what} '{path}': {error.strerror or error}") from None


def write_text_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` all at once: a reader (or a crash) sees the old file or the new one,
    never a half-written one. On failure (a full disk) the temporary file is removed and a one-line
    UsageError names the path; the old file is untouched. The temporary name carries the PID, so several
    writers (sweep workers) never share one."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as error:
        try:
            temporary.unlink(missing_ok=True)
        except OSError:
            pass
        raise UsageError(f"cannot write '{path}': {error.strerror or error}; it was left as it was") from None
