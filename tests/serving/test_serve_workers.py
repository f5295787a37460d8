"""``auditstream serve --workers 2`` on the embedded broker: both workers join the group and
split the partitions, every request is answered once, SIGTERM stops all of them cleanly; a
worker killed from outside stops the service with exit 1 and a line naming it. The thread
share and per-worker environment are checked without processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from tests.serving.kafka_readers import read_topic

from auditstream import topics as T
from auditstream.kafka import make_producer
from auditstream.settings import Settings
from serving.loadgen import inputs_for, produce_requests
from serving.workers import threads_per_worker, worker_env


@pytest.mark.parametrize("configured, cores, workers, expected", [(0, 16, 4, 4), (0, 2, 4, 1), (0, 16, 3, 5), (3, 16, 4, 3)])
def test_threads_per_worker(configured: int, cores: int, workers: int, expected: int) -> None:
    assert threads_per_worker(configured, cores, workers) == expected


def test_worker_env_gives_each_its_threads_and_metrics_port() -> None:
    env = worker_env(Settings(metrics_port=9100, max_batch_size=32), 2, 4, 16, base={"PATH": "/bin"})
    assert env["AUDITSTREAM_INTRA_OP_THREADS"] == "4" and env["AUDITSTREAM_METRICS_PORT"] == "9102"
    assert env["AUDITSTREAM_MAX_BATCH_SIZE"] == "32" and env["PATH"] == "/bin"
    assert worker_env(Settings(), 1, 2, 2, base={})["AUDITSTREAM_METRICS_PORT"] == "0"  # off stays off


def _free_port_pair() -> int:
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise RuntimeError("no two consecutive free ports")


def _assigned(port: int, model: str = "tiny") -> float | None:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("auditstream_serve_assigned_partitions{") and f'model="{model}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def _start(settings: Settings, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, **settings.to_env(), "AUDITSTREAM_METRICS_PORT": str(port), "AUDITSTREAM_MAX_BATCH_SIZE": "16",
           "AUDITSTREAM_LOG_LEVEL": "INFO"}
    with open(log, "ab") as f:
        return subprocess.Popen([sys.executable, "-m", "auditstream.cli", "serve", "--model", "tiny", "--workers", "2"],
                                env=env, stdout=f, stderr=subprocess.STDOUT)


def _wait_split(port: int, timeout_s: float) -> list[float | None]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        parts = [_assigned(port), _assigned(port + 1)]
        if all(p for p in parts) and sum(parts) == 12:  # type: ignore[arg-type]
            return parts
        time.sleep(0.5)
    return parts


@pytest.mark.kafka
@pytest.mark.slow
def test_two_workers_split_the_group_answer_everything_and_stop_on_sigterm(stream_settings: Settings,
                                                                           tmp_path: Path) -> None:
    settings, port, log = stream_settings, _free_port_pair(), tmp_path / "serve.log"
    proc = _start(settings, port, log)
    try:
        parts = _wait_split(port, 90)
        assert parts == [6, 6], f"assigned partitions per worker: {parts}; log:\n{log.read_text()[-3000:]}"
        producer = make_producer(settings)
        try:
            sent = produce_requests(producer, settings.request_topic("tiny"), "tiny",
                                    inputs_for(settings_card(settings), "random"), 400, 0.0, progress=False)
        finally:
            producer.close()
        predictions = read_topic(settings, settings.topic(T.PREDICTIONS), until_count=400, timeout_s=90, idle_s=5)
        answered = [p.key.decode() for p in predictions]
        assert sorted(set(answered)) == sorted(sent.request_ids)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert text.count("worker ") >= 2 and " ERROR " not in text and "Traceback" not in text
    assert text.count("stopped after") == 2  # each worker drained and said so


@pytest.mark.kafka
@pytest.mark.slow
def test_a_dead_worker_stops_the_service_with_exit_1(stream_settings: Settings, tmp_path: Path) -> None:
    settings, port, log = stream_settings, _free_port_pair(), tmp_path / "serve.log"
    proc = _start(settings, port, log)
    try:
        assert all(_wait_split(port, 90)), log.read_text()[-3000:]
        victim = int(subprocess.check_output(["pgrep", "-P", str(proc.pid)]).split()[0])
        os.kill(victim, signal.SIGKILL)
        assert proc.wait(timeout=90) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
    assert f"(pid {victim}) exited with status -9" in log.read_text()


def settings_card(settings: Settings):
    from auditstream.registry import ModelRegistry

    return ModelRegistry(settings.models_dir).card("tiny")
