"""Shared by the fault suite: the one-line-error check and tmpfs mounts for full and read-only disks."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from metta_agent.cli import main


@pytest.fixture
def one_line(capsys):
    """``one_line(argv, code, *fragments)``: run the CLI in process; it must exit with ``code`` and print exactly
    one line on stderr, holding every fragment and no traceback. Returns that line."""

    def check(argv, code, *fragments):
        assert main([str(arg) for arg in argv]) == code, capsys.readouterr().err
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and "Traceback" not in err, err
        for fragment in fragments:
            assert fragment in err, err
        return lines[0]

    return check


@pytest.fixture
def tmpfs(tmp_path):
    """``tmpfs(name, size)``: a fresh tmpfs of ``size`` mounted at ``tmp_path/name`` (unmounted afterwards).
    CI runs as root, where ``chmod`` cannot make a folder read-only or small: a mount can. Where mounting is
    refused (no root, a container without the capability) the test is skipped, saying so."""
    mounted = []

    def mount(name: str, size: str = "3m"):
        target = tmp_path / name
        target.mkdir()
        if shutil.which("mount") is None:
            pytest.skip("the full-disk and read-only cases need the mount command")
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"the full-disk and read-only cases need a tmpfs mount, refused here: {result.stderr.strip()}")
        mounted.append(target)
        return target

    yield mount
    for target in reversed(mounted):
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


@pytest.fixture
def remount_read_only():
    """Make a ``tmpfs`` mount read-only (after the test has put files there)."""
    return lambda target: subprocess.run(["mount", "-o", "remount,ro", str(target)], check=True, capture_output=True)
