"""Checkpoints that refuse corruption and untrusted content: per-tensor digests, fallback to an older readable
checkpoint of a run directory, zip records checked before torch reads them, embedded YAML architectures,
clean-up of temporary files after failed saves and dead writers."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import metta_agent
from metta_agent import checkpoint as ckpt
from metta_agent.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from metta_agent.cli import main
from metta_agent.errors import TrainingError, UsageError
from metta_agent.policies.component.graph import SHIPPED_DIR

EVAL = ["--episodes", "1", "--max-steps", "8"]


def _checkpoint_parts(agent, epoch=1):
    """Metadata and tensors as the trainer writes them: model, Adam state after one step, RNG states."""
    optimizer = torch.optim.Adam(agent.parameters(), lr=1e-3)
    for parameter in agent.parameters():
        parameter.grad = torch.full_like(parameter, 1e-3)
    optimizer.step()
    metadata = {"agent": agent.metadata(), "game": "heart", "config": {"game": {"max_steps": 8}},
                "trainer": {"epoch": epoch, "agent_steps": 256 * epoch, "skipped_updates": 0}}
    tensors = {"model": agent.state_dict(), "optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state()}
    return metadata, tensors


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """One intact checkpoint of a small heart agent (built, not trained: the checks do not need learning)."""
    agent = metta_agent.make_agent("pytorch/fast", game="heart", seed=0)
    metadata, tensors = _checkpoint_parts(agent)
    path = tmp_path_factory.mktemp("good") / "epoch_000001.pt"
    save_checkpoint(path, metadata, tensors)
    return path


def _run_dir(tmp_path, good, epochs):
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    metadata, payload = load_checkpoint(good)
    tensors = {key: value for key, value in payload.items() if key not in ckpt._FORMAT_KEYS}
    for epoch in epochs:
        save_checkpoint(ckpt.checkpoint_path(tmp_path / "run", epoch), {**metadata, "trainer": {"epoch": epoch}},
                        tensors)
    return tmp_path / "run"


def _record_span(path: Path, name_suffix: str) -> tuple[int, int]:
    """(offset, size) of the data of the zip record whose name ends with ``name_suffix``."""
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(name_suffix))
    with open(path, "rb") as handle:
        handle.seek(info.header_offset)
        header = handle.read(30)
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_length + extra_length, info.compress_size


def _tensor_record(path: Path, key: str) -> str:
    """The zip record holding the bytes of model tensor ``key``."""
    _, payload = load_checkpoint(path)
    wanted = payload["model"][key].contiguous().view(-1).view(torch.uint8).numpy().tobytes()
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if "/data/" in info.filename and archive.read(info) == wanted:
                return info.filename
    raise AssertionError(f"no record holds {key}")


def _xor(path: Path, offset: int, size: int) -> None:
    data = bytearray(path.read_bytes())
    for index in range(offset, offset + size):
        data[index] ^= 0xFF
    path.write_bytes(bytes(data))


def _one_line(capsys, argv, code, *fragments):
    assert main(argv) == code
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    return err


def test_flipped_bytes_in_a_tensor_record_are_a_one_line_error(good, tmp_path, capsys):
    _, payload = load_checkpoint(good)
    key = next(k for k in payload["model"] if k.endswith("cnn2.weight"))
    broken = tmp_path / "broken.pt"
    shutil.copy(good, broken)
    offset, size = _record_span(broken, _tensor_record(broken, key))
    _xor(broken, offset + size // 4, min(4096, size // 2))
    err = _one_line(capsys, ["eval", str(broken), *EVAL], 2, str(broken), f"tensor 'model.{key}'", "SHA-256")
    assert err.startswith("error: ")
    # Every tensor is covered, the optimizer's moments included.
    metadata, _ = _read_raw(good)
    assert any(name.startswith("optimizer.state.") for name in metadata["tensor_sha256"])
    assert "torch_rng" in metadata["tensor_sha256"]


def _read_raw(path):
    payload = torch.load(path, weights_only=True)
    return json.loads(payload["metadata"]), payload


def test_version_1_loads_with_a_warning_and_a_future_version_is_refused(good, tmp_path, capsys):
    metadata, payload = _read_raw(good)
    assert payload["format_version"] == ckpt.FORMAT_VERSION == 2
    del metadata["tensor_sha256"], metadata["values_sha256"]
    del payload["metadata_sha256"]
    old = tmp_path / "v1.pt"
    torch.save({**payload, "format_version": 1, "metadata": json.dumps(metadata)}, old)
    assert main(["eval", str(old), *EVAL]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "cannot be verified" in warnings[0] and str(old) in warnings[0], warnings

    future = tmp_path / "v3.pt"
    torch.save({**payload, "format_version": 3}, future)
    _one_line(capsys, ["eval", str(future), *EVAL], 2, "format version 3")


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(good, tmp_path, capsys):
    run = _run_dir(tmp_path, good, [1, 2, 3])
    first, second, newest = list_checkpoints(run)
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # truncated
    offset, size = _record_span(second, _tensor_record(second, next(iter(load_checkpoint(good)[1]["model"]))))
    _xor(second, offset, min(size, 4096))  # digest mismatch
    capsys.readouterr()

    assert main(["eval", str(run), *EVAL]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, warnings
    assert newest.name in warnings[0] and second.name in warnings[0] and f"using {first.name}" in warnings[0]
    metadata, _ = load_checkpoint(run)  # as resume reads it
    assert metadata["trainer"]["epoch"] == 1
    assert ckpt.resolve_checkpoint(run) == first

    _one_line(capsys, ["eval", str(newest), *EVAL], 2, "truncated or corrupt")  # a file given by name: no fallback
    _one_line(capsys, ["eval", str(second), *EVAL], 2, "SHA-256")
    first.write_bytes(b"")
    _one_line(capsys, ["eval", str(run), *EVAL], 2, "no readable checkpoint")


def test_compressed_or_oversized_zip_records_are_refused_before_torch_reads_them(good, tmp_path, capsys, monkeypatch):
    deflated = tmp_path / "deflated.pt"
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            target.writestr(info.filename, source.read(info))
    # Overstated size: the central directory claims a 256 MiB record in a small file.
    oversized = tmp_path / "oversized.pt"
    data = bytearray(good.read_bytes())
    central = data.index(b"PK\x01\x02")
    data[central + 24: central + 28] = struct.pack("<I", 256 * 2**20)
    oversized.write_bytes(bytes(data))

    loads = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a))
    _one_line(capsys, ["eval", str(deflated), *EVAL], 2, "is compressed", "refusing to load")
    _one_line(capsys, ["eval", str(oversized), *EVAL], 2, "truncated or corrupt")
    assert loads == []


def test_yaml_architectures_load_from_the_embedded_graph_never_from_a_path(tmp_path, capsys, monkeypatch):
    graph = tmp_path / "my_graph.yaml"
    graph.write_text((SHIPPED_DIR / "fast.yaml").read_text().replace("hidden_size: 128", "hidden_size: 32"))
    agent = metta_agent.make_agent(str(graph), game="heart", seed=0)
    metadata, tensors = _checkpoint_parts(agent)
    path = tmp_path / "yaml.pt"
    save_checkpoint(path, metadata, tensors)
    assert "hidden_size: 32" in load_checkpoint(path)[0]["agent"]["architecture_yaml"]

    from metta_agent.agent import registry
    from metta_agent.policies.component import graph as graph_module

    opened = []
    for module in (registry, graph_module):
        original = module.load_spec
        monkeypatch.setattr(module, "load_spec", lambda name, original=original: (opened.append(name), original(name))[1])
    graph.write_text("this: [is not the graph")  # the file changed or was replaced after training
    assert main(["eval", str(path), *EVAL]) == 0, capsys.readouterr().err
    assert opened == []

    # A checkpoint naming a YAML path without embedding it is refused, and the path is never opened: a forger
    # who removes the embedded graph (and recomputes the metadata digest), or a version-1 file.
    trap = tmp_path / "trap.yaml"
    trap.write_text("components: []")
    metadata, payload = _read_raw(path)
    metadata["agent"].pop("architecture_yaml")
    metadata["agent"]["settings"]["name"] = str(trap)
    text = json.dumps(metadata)
    forged = tmp_path / "forged.pt"
    torch.save({**payload, "metadata": text, "metadata_sha256": hashlib.sha256(text.encode()).hexdigest()}, forged)
    _one_line(capsys, ["eval", str(forged), *EVAL], 2, "does not embed its graph")
    old = tmp_path / "old.pt"
    torch.save({**payload, "format_version": 1, "metadata": text}, old)
    err = capsys.readouterr().err
    assert main(["eval", str(old), *EVAL]) == 2
    err = capsys.readouterr().err
    assert "does not embed its graph" in err and "Traceback" not in err, err
    assert opened == []


def _dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_temporary_files_of_dead_processes_are_removed_at_the_next_save(good, tmp_path):
    metadata, payload = load_checkpoint(good)
    tensors = {key: value for key, value in payload.items() if key not in ckpt._FORMAT_KEYS}
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    dead = folder / f".epoch_000003.pt.tmp-{_dead_pid()}"
    alive = folder / f".epoch_000003.pt.tmp-{os.getppid()}"
    other = folder / "notes.tmp-1"
    for path in (dead, alive, other):
        path.write_bytes(b"partial")
    save_checkpoint(ckpt.checkpoint_path(tmp_path / "run", 4), metadata, tensors, keep=2)
    assert not dead.exists() and alive.exists() and other.exists()


def test_a_failed_save_removes_its_temporary_file_and_is_one_line(good, tmp_path, monkeypatch):
    metadata, payload = load_checkpoint(good)
    tensors = {key: value for key, value in payload.items() if key not in ckpt._FORMAT_KEYS}
    run = tmp_path / "run"
    folder = run / "checkpoints"
    seen = []
    real_save = torch.save

    def counting_save(obj, handle):
        seen.append(len(list_checkpoints(run)))
        real_save(obj, handle)

    monkeypatch.setattr(torch, "save", counting_save)
    for epoch in range(1, 5):
        save_checkpoint(ckpt.checkpoint_path(run, epoch), metadata, tensors, keep=2)
    assert seen == [0, 1, 1, 1]  # pruned before writing: at most keep - 1 older files beside the temporary one
    assert [p.name for p in list_checkpoints(run)] == ["epoch_000003.pt", "epoch_000004.pt"]

    for failure in (OSError(errno.ENOSPC, "No space left on device"),
                    RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 5056 vs 4992")):
        def failing_save(obj, handle, failure=failure):
            handle.write(b"x" * 1000)
            raise failure

        monkeypatch.setattr(torch, "save", failing_save)
        target = ckpt.checkpoint_path(run, 5)
        with pytest.raises(TrainingError) as caught:
            save_checkpoint(target, metadata, tensors, keep=2)
        message = str(caught.value)
        assert len(message.splitlines()) == 1 and str(target) in message and "MiB" in message, message
        assert ("No space left on device" in message) == isinstance(failure, OSError), message
        assert [p.name for p in folder.iterdir() if ".tmp-" in p.name] == []
        assert not target.exists() and list_checkpoints(run)[-1].name == "epoch_000004.pt"
        # The CLI prints it as one "error: ..." line with exit code 1 (a TrainingError, not a usage error).
        assert not isinstance(caught.value, UsageError)
