"""Review 2026-12-05: the files the registry reads (LIVE, card.json, model.onnx) may be anything
a directory entry can be. A FIFO made every read wait for a writer for ever (a hot reload stayed
"loading"); a symlink to /dev/zero or an 8 GiB sparse file was read whole (a MemoryError
traceback, exit 1). Each is now one ModelRefused line. Every test here fails on the code before
that review but two: the one on symlinks to regular files (it documents what keeps working) and the
one on the new helper's cap for a file that grows while it is read."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from tests.conftest import tiny_card, tiny_classifier_onnx

from auditstream.errors import ModelRefused
from auditstream.registry import CARD_FILE, LIVE_FILE, MAX_LIVE_BYTES, ONNX_FILE, ModelRegistry, sha256_file
from auditstream.registry_files import MAX_ONNX_BYTES, read_regular

TARGETS = {LIVE_FILE: "live pointer", CARD_FILE: "card.json", ONNX_FILE: "model.onnx"}


def _registry(tmp_path: Path) -> tuple[ModelRegistry, dict[str, Path]]:
    registry = ModelRegistry(tmp_path / "models")
    published = registry.publish(tiny_card(), tiny_classifier_onnx())
    registry.set_live("tiny", "1")
    return registry, {LIVE_FILE: registry.root / "tiny" / LIVE_FILE, CARD_FILE: published.directory / CARD_FILE,
                      ONNX_FILE: published.onnx_path}


def _load_in_thread(registry: ModelRegistry, fifo: Path | None = None) -> list:
    """registry.load('tiny', '1') (LIVE read first through live_version) in a thread: what it raised, or
    [] if it did not return within 20 s (then the FIFO gets a writer, so the thread ends)."""
    done: list = []

    def load() -> None:
        try:
            registry.live_version("tiny")
            registry.load("tiny", "1")
            done.append(None)
        except Exception as e:  # noqa: BLE001 - what it raised is the result
            done.append(e)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(20)
    if thread.is_alive() and fifo is not None:  # the old code: blocked in open(); unblock it
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        thread.join(20)
        return []
    return done


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path, target: str) -> None:
    registry, paths = _registry(tmp_path)
    paths[target].unlink()
    os.mkfifo(paths[target])
    done = _load_in_thread(registry, fifo=paths[target])
    assert done, f"reading a FIFO at {target} blocked"
    assert isinstance(done[0], ModelRefused), done
    assert f"{TARGETS[target]} cannot be read: it is a FIFO (named pipe), not a regular file" in str(done[0])


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_a_symlink_to_a_device_is_refused_without_reading_it(tmp_path: Path, target: str) -> None:
    registry, paths = _registry(tmp_path)
    paths[target].unlink()
    paths[target].symlink_to("/dev/zero")
    with pytest.raises(ModelRefused, match=f"{TARGETS[target]} cannot be read: it is a character device"):
        registry.live_version("tiny")
        registry.load("tiny", "1")


@pytest.mark.parametrize(("target", "limit"), [(LIVE_FILE, MAX_LIVE_BYTES), (ONNX_FILE, MAX_ONNX_BYTES)])
def test_a_file_past_its_cap_is_refused_from_its_size(tmp_path: Path, target: str, limit: int) -> None:
    """A sparse file one byte past the cap (model.onnx: 2 GiB, what protobuf parses) uses no disk
    and is refused before a byte of it is read; card.json's cap has its own test."""
    registry, paths = _registry(tmp_path)
    with open(paths[target], "r+b") as f:
        f.truncate(limit + 1)
    with pytest.raises(ModelRefused, match=f"{TARGETS[target]} is over {limit:,} bytes"):
        registry.live_version("tiny")
        registry.load("tiny", "1")


def test_a_file_that_grows_past_its_cap_while_read_is_refused(tmp_path: Path) -> None:
    """The cap holds on what is read, not only on the size fstat saw (/proc files say 0 bytes)."""
    with pytest.raises(ModelRefused, match="is over 100 bytes"):
        read_regular("/proc/self/status", 100, "status", "-")
    assert read_regular("/proc/self/status", 1 << 20, "status", "-").startswith(b"Name:")


def test_a_card_that_is_a_fifo_is_refused_not_reported_missing(tmp_path: Path) -> None:
    """card() used is_file(): a version whose card.json is a FIFO read as 'not found'."""
    registry, paths = _registry(tmp_path)
    paths[CARD_FILE].unlink()
    os.mkfifo(paths[CARD_FILE])
    with pytest.raises(ModelRefused, match="card.json cannot be read: it is a FIFO"):
        registry.card("tiny", "1")


def test_sha256_file_refuses_a_fifo(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(ModelRefused, match="FIFO"):
        sha256_file(tmp_path / "pipe")


def test_files_that_are_symlinks_to_regular_files_still_load(tmp_path: Path) -> None:
    """Documents what keeps working: operators may deploy each file as a link to a regular file."""
    registry, paths = _registry(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for target, path in paths.items():
        (elsewhere / target).write_bytes(path.read_bytes())
        path.unlink()
        path.symlink_to(elsewhere / target)
    assert registry.live_version("tiny") == "1"
    assert registry.load("tiny").card.version == "1"


@pytest.mark.parametrize("case", ["live-devzero", "onnx-fifo"])
def test_serve_refuses_a_special_file_with_one_line_and_exit_code_2(tmp_path: Path, case: str) -> None:
    """The real command: the /dev/zero LIVE ended in a MemoryError traceback (exit 1), the FIFO
    model.onnx in a process waiting for ever."""
    registry, paths = _registry(tmp_path)
    target = paths[LIVE_FILE] if case == "live-devzero" else paths[ONNX_FILE]
    target.unlink()
    if case == "live-devzero":
        target.symlink_to("/dev/zero")
    else:
        os.mkfifo(target)
    env = {**os.environ, "AUDITSTREAM_MODELS_DIR": str(registry.root), "AUDITSTREAM_STATE_DIR": str(tmp_path / "state"),
           "AUDITSTREAM_BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    try:
        done = subprocess.run([sys.executable, "-m", "auditstream.cli", "serve", "--model", "tiny"], env=env,
                              capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail(f"serve did not return with {case}")
    assert done.returncode == 2, done.stderr
    assert "refusing model" in done.stderr and "not a regular file" in done.stderr
    assert "Traceback" not in done.stderr
