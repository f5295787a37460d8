"""``auditstream serve --workers 2`` on the embedded broker: both workers join the group and
split the partitions, every request is answered once, SIGTERM stops all of them cleanly; a
worker killed from outside stops the service with exit 1 and a line naming it; ``--shadow
--version V --workers 2`` starts shadow workers, in the shadow group, that write flagged
predictions only (before, each worker was started as ``serve --model M --version V``: a live
consumer of the candidate in the live group, writing decisions). The thread share, the
per-worker environment and every serve option reaching each worker's command line are checked
without processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from tests.serving.kafka_readers import read_topic

from auditstream import topics as T
from auditstream.cli import build_parser, main
from auditstream.errors import BadArguments, ConfigError
from auditstream.kafka import make_producer
from auditstream.settings import Settings
from auditstream.wire import Prediction
from stack.broker import free_port
from serving import workers
from serving.app import group_id, shadow_group_id
from serving.loadgen import inputs_for, produce_requests
from serving.workers import Supervisor, threads_per_worker, worker_argv, worker_env
from tests.serving.kafka_readers import committed_offsets


@pytest.mark.parametrize("configured, cores, workers, expected", [(0, 16, 4, 4), (0, 2, 4, 1), (0, 16, 3, 5), (3, 16, 4, 3)])
def test_threads_per_worker(configured: int, cores: int, workers: int, expected: int) -> None:
    assert threads_per_worker(configured, cores, workers) == expected


def test_worker_env_gives_each_its_threads_and_metrics_port() -> None:
    env = worker_env(Settings(metrics_port=9100, max_batch_size=32), 2, 4, 16, base={"PATH": "/bin"})
    assert env["AUDITSTREAM_INTRA_OP_THREADS"] == "4" and env["AUDITSTREAM_METRICS_PORT"] == "9102"
    assert env["AUDITSTREAM_MAX_BATCH_SIZE"] == "32" and env["PATH"] == "/bin"
    assert worker_env(Settings(), 1, 2, 2, base={})["AUDITSTREAM_METRICS_PORT"] == "0"  # off stays off


def _serve_options(argv: list[str]) -> dict:
    """``serve``'s own options as the CLI parses ``argv`` (without --workers)."""
    parsed = vars(build_parser().parse_args(["serve", *argv]))
    return {k: v for k, v in parsed.items() if k not in ("command", "handler", "log_level", "workers")}


@pytest.mark.parametrize("argv", [
    ["--model", "tiny"],
    ["--model", "tiny", "--version", "5"],
    ["--model", "tiny", "--version", "5", "--shadow"],
    ["--shadow", "--version", "12", "--model=-odd"],  # a value that starts like an option
])
def test_each_worker_is_started_with_every_serve_option(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the CLI: the worker's command line, parsed as the worker parses it, is the same
    ``serve`` (workers = 1). Any serve option added later takes this path too, or is refused."""
    supervisors: list[Supervisor] = []
    monkeypatch.setattr(Supervisor, "run", lambda self: supervisors.append(self) or 0)
    assert main(["--log-level", "debug", "serve", *argv, "--workers", "3"]) == 0
    [supervisor] = supervisors
    assert _serve_options(supervisor.args) == _serve_options(argv)
    assert ("--shadow" in supervisor.args) == ("--shadow" in argv)
    assert supervisor.settings.log_level == "DEBUG"  # --log-level reaches the workers through their settings


def test_the_workers_of_a_shadow_run_are_started_as_shadows(monkeypatch: pytest.MonkeyPatch) -> None:
    launched: list[list[str]] = []

    class Started:
        pid, returncode = 4242, None

        def __init__(self, argv: list[str], env: dict[str, str]) -> None:
            launched.append(argv)

    monkeypatch.setattr(workers.subprocess, "Popen", Started)
    Supervisor(Settings(), {"model": "tiny", "version": "5", "shadow": True}, 2, command=["serve"]).start()
    assert launched == [["serve", "--model=tiny", "--version=5", "--shadow"]] * 2


def test_an_option_the_supervisor_cannot_pass_on_is_refused() -> None:
    assert worker_argv({"model": "m", "version": "", "shadow": False, "limit": None}) == ["--model=m"]
    with pytest.raises(BadArguments, match=r"cannot pass --tags=\['a'\] on to its workers"):
        worker_argv({"model": "m", "tags": ["a"]})


def test_a_metrics_port_without_room_for_every_worker_is_refused_before_any_starts() -> None:
    with pytest.raises(ConfigError, match="AUDITSTREAM_METRICS_PORT=65535: expected a port from 1 to 65534"):
        Supervisor(Settings(metrics_port=65535), {"model": "tiny"}, 2)
    assert Supervisor(Settings(metrics_port=65534), {"model": "tiny"}, 2).workers == 2
    with pytest.raises(ConfigError, match="--workers"):
        Supervisor(Settings(), {"model": "tiny"}, 0)


def test_shadow_without_a_version_is_one_line_before_anything_starts(monkeypatch, capsys) -> None:
    monkeypatch.setattr(Supervisor, "start", lambda self: pytest.fail("workers started"))
    monkeypatch.setattr("serving.app.ModelRegistry", lambda *a: pytest.fail("model loaded"))
    for workers_n in ("1", "2"):
        assert main(["serve", "--model", "tiny", "--shadow", "--workers", workers_n]) == 2
        err = capsys.readouterr().err
        assert err.startswith("auditstream: error: serve --shadow needs --version V") and len(err.splitlines()) == 1


def _free_port_pair() -> int:
    return free_port(2)  # below the ephemeral range: a Kafka client's connection cannot take it meanwhile


def _assigned(port: int, model: str = "tiny") -> float | None:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("auditstream_serve_assigned_partitions{") and f'model="{model}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def _start(settings: Settings, port: int, log: Path, *serve: str) -> subprocess.Popen:
    env = {**os.environ, **settings.to_env(), "AUDITSTREAM_METRICS_PORT": str(port), "AUDITSTREAM_MAX_BATCH_SIZE": "16",
           "AUDITSTREAM_LOG_LEVEL": "INFO"}
    with open(log, "ab") as f:
        return subprocess.Popen([sys.executable, "-m", "auditstream.cli", "serve", "--model", "tiny", "--workers", "2",
                                 *serve], env=env, stdout=f, stderr=subprocess.STDOUT)


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
    settings, log = stream_settings, tmp_path / "serve.log"
    _split_answer_and_stop(settings, log, 400)
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


@pytest.mark.kafka
@pytest.mark.slow
def test_a_shadow_run_starts_shadow_workers_in_the_shadow_group(stream_settings: Settings, tmp_path: Path) -> None:
    """Both workers read the live requests in the shadow group and write flagged predictions
    only: no decisions, no commits in the live group."""
    settings, log = stream_settings, tmp_path / "serve.log"
    predictions = _split_answer_and_stop(settings, log, 120, "--version", "1", "--shadow")
    assert all(Prediction.from_bytes(p.value).shadow for p in predictions)
    text = log.read_text()
    assert text.count(" in shadow from ") == 2 and "Traceback" not in text, text[-3000:]
    assert sum(committed_offsets(settings, shadow_group_id(settings, "tiny", "1")).values()) == 120
    assert committed_offsets(settings, group_id(settings, "tiny")) == {}
    assert read_topic(settings, settings.topic(T.DECISIONS), timeout_s=10) == []


def _split_answer_and_stop(settings: Settings, log: Path, count: int, *serve_args: str) -> list:
    """``serve --workers 2 [serve_args]``: the two workers split the 12 partitions, every one of
    ``count`` requests is answered, and SIGTERM stops the service with exit 0; the predictions."""
    port = _free_port_pair()
    proc = _start(settings, port, log, *serve_args)
    try:
        parts = _wait_split(port, 90)
        assert parts == [6, 6], f"assigned partitions per worker: {parts}; log:\n{log.read_text()[-3000:]}"
        producer = make_producer(settings)
        try:
            sent = produce_requests(producer, settings.request_topic("tiny"), "tiny",
                                    inputs_for(settings_card(settings), "random"), count, 0.0, progress=False)
        finally:
            producer.close()
        predictions = read_topic(settings, settings.topic(T.PREDICTIONS), until_count=count, timeout_s=90, idle_s=5)
        assert sorted({p.key.decode() for p in predictions}) == sorted(sent.request_ids)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    return predictions


def settings_card(settings: Settings):
    from auditstream.registry import ModelRegistry

    return ModelRegistry(settings.models_dir).card("tiny")
