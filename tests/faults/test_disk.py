"""A full disk and a read-only filesystem (tmpfs mounts): one line, no temporary files left, nothing lost."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from metta_agent.checkpoint import list_checkpoints
from metta_agent.cli import main

TINY = ["--game", "heart", "--set", "trainer.num_envs=4", "--set", "trainer.batch_size=1024",
        "--set", "trainer.minibatch_size=512", "--set", "trainer.bptt_horizon=16", "--set", "trainer.eval_interval=0",
        "--set", "trainer.checkpoint_interval=1", "--quiet"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 2-epoch run with a checkpoint per epoch (~16 MB)."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", *TINY, "--steps", "2048", "--run-dir", str(run_dir)]) == 0
    return run_dir


def _digests(folder: Path) -> dict[str, str]:
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file() and path.name != ".writer.lock"}


def _temporaries(folder: Path) -> list[str]:
    return [path.name for path in folder.rglob("*") if ".tmp" in path.name]


def test_a_disk_too_small_for_the_first_checkpoint(tmpfs, one_line):
    disk = tmpfs("small", "3m")
    run_dir = disk / "run"
    line = one_line(["train", *TINY, "--steps", "2048", "--run-dir", run_dir], 1,
                    "cannot write checkpoint", "not enough space", "MiB")
    assert str(run_dir / "checkpoints") in line
    assert _temporaries(disk) == [], "the partial checkpoint must not keep the disk full"
    assert (run_dir / "metrics.jsonl").read_text().count("\n") == 1, "the epoch trained is logged"


def test_resume_on_a_full_disk_changes_nothing(trained, tmpfs, one_line):
    disk = tmpfs("full", "40m")
    run_dir = disk / "run"
    shutil.copytree(trained, run_dir)
    with open(disk / "filler", "wb") as filler:  # fill what is left
        try:
            while True:
                filler.write(b"\0" * 2**20)
                filler.flush()
        except OSError:
            pass
    before = _digests(run_dir)
    one_line(["train", "--run-dir", run_dir, "--resume", "--steps", "4096", "--quiet"], 2, "No space left on device")
    assert _digests(run_dir) == before and _temporaries(disk) == []


def test_read_only_filesystem_refuses_writers_and_serves_readers(trained, tmpfs, remount_read_only, one_line, capsys):
    disk = tmpfs("ro", "40m")
    shutil.copytree(trained, disk / "run")
    remount_read_only(disk)
    one_line(["train", *TINY, "--steps", "2048", "--run-dir", disk / "new"], 2, "Read-only file system")
    one_line(["train", "--run-dir", disk / "run", "--resume", "--steps", "4096", "--quiet"], 2, "Read-only file system")
    assert main(["eval", str(disk / "run"), "--episodes", "1", "--max-steps", "8", "--json"]) == 0
    assert '"mean_return"' in capsys.readouterr().out
    assert len(list_checkpoints(disk / "run")) == 2
