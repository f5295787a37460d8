"""``auditstream serve`` processes under faults, on the embedded broker: SIGTERM drains and
commits; SIGKILL of one of two group members loses nothing and duplicates only uncommitted work.
Also the ``auditstream broker`` CLI itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest
from tests.serving.kafka_readers import committed_offsets, read_topic, request_ids

from auditstream import topics as T
from auditstream.kafka import ensure_topics, make_producer
from auditstream.settings import Settings
from serving.app import group_id
from serving.loadgen import inputs_for, produce_requests

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
BATCH = 32


def env_for(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "AUDITSTREAM_BOOTSTRAP_SERVERS": settings.bootstrap_servers, "AUDITSTREAM_TOPIC_PREFIX": settings.topic_prefix,
        "AUDITSTREAM_MODELS_DIR": str(settings.models_dir), "AUDITSTREAM_STATE_DIR": str(settings.state_dir),
        "AUDITSTREAM_MAX_BATCH_SIZE": str(BATCH), "AUDITSTREAM_LOG_LEVEL": "WARNING",
    })
    return env


def start_serve(settings: Settings, log: Path) -> subprocess.Popen:
    with open(log, "ab") as f:
        return subprocess.Popen([sys.executable, "-m", "auditstream.cli", "serve", "--model", "tiny"],
                                env=env_for(settings), stdout=f, stderr=subprocess.STDOUT)


def wait_for_predictions(settings: Settings, count: int, timeout_s: float) -> list:
    """The predictions topic once it answers ``count`` distinct requests (or at the timeout).
    Distinct: a killed consumer's uncommitted batches are answered twice, and counting records
    returned before the last requests were answered (CI 2026-12-05: 3 of 3,000 "lost")."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        # every record (no until_count: the first `count` records may hold duplicates, not all ids)
        out = read_topic(settings, settings.topic(T.PREDICTIONS), timeout_s=10, idle_s=1)
        if len(set(request_ids(out))) >= count:
            return out
    return out


def test_sigterm_finishes_the_batch_commits_and_exits(stream_settings: Settings, tmp_path: Path) -> None:
    settings, n = stream_settings, 3000
    topic = settings.request_topic("tiny")
    ensure_topics(settings, [topic])
    proc = start_serve(settings, tmp_path / "serve.log")
    producer = make_producer(settings)
    try:
        produce_requests(producer, topic, "tiny", inputs_for(_card(settings)), 200, progress=False)
        wait_for_predictions(settings, 200, 60)  # the consumer has joined and is answering
        feeder = threading.Thread(target=produce_requests, args=(producer, topic, "tiny", inputs_for(_card(settings)),
                                                                 n - 200, 400.0), kwargs={"progress": False})
        feeder.start()
        time.sleep(2.0)
        proc.send_signal(signal.SIGTERM)  # while requests keep arriving
        assert proc.wait(timeout=60) == 0, (tmp_path / "serve.log").read_text()[-3000:]
        feeder.join()
    finally:
        producer.close()
        if proc.poll() is None:
            proc.kill()
    committed = committed_offsets(settings, group_id(settings, "tiny"))
    answered = set(request_ids(read_topic(settings, settings.topic(T.PREDICTIONS))))
    requests = read_topic(settings, topic, until_count=n)
    below_commit = [r for r in requests if r.offset < committed.get((topic, r.partition), 0)]
    assert len(below_commit) >= 200
    # the commit never passes a record whose prediction is not on the predictions topic
    assert {r.key.decode() for r in below_commit} <= answered


def test_sigkill_one_of_two_consumers_loses_nothing(stream_settings: Settings, tmp_path: Path) -> None:
    settings, n = stream_settings, 3000
    topic = settings.request_topic("tiny")
    ensure_topics(settings, [topic])
    victim = start_serve(settings, tmp_path / "a.log")
    survivor = start_serve(settings, tmp_path / "b.log")
    producer = make_producer(settings)
    try:
        sent = produce_requests(producer, topic, "tiny", inputs_for(_card(settings)), 300, progress=False)
        wait_for_predictions(settings, 300, 90)
        more = produce_requests(producer, topic, "tiny", inputs_for(_card(settings), seed=1), n - 300, rate_per_s=300,
                                id_prefix="late", progress=False)
        victim.send_signal(signal.SIGKILL)  # mid-run: no chance to finish, flush or commit
        out = wait_for_predictions(settings, n, 150)
        assert survivor.poll() is None, (tmp_path / "b.log").read_text()[-3000:]
    finally:
        producer.close()
        for p in (victim, survivor):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in (victim, survivor):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
    ids = request_ids(out)
    assert set(ids) == set(sent.request_ids) | set(more.request_ids)  # no request lost
    copies: dict[str, list[bytes]] = defaultdict(list)
    for r in out:
        copies[r.key.decode()].append(r.value)
    duplicates = sum(len(v) - 1 for v in copies.values())
    # only the victim's uncommitted work comes twice: at most its in-flight batches plus one open batch
    assert duplicates <= (settings.max_in_flight_batches + 1) * BATCH
    assert all(len(set(v)) == 1 for v in copies.values())  # and each copy is byte-identical


def test_broker_cli_start_status_stop(tmp_path: Path) -> None:
    env = dict(os.environ, AUDITSTREAM_STATE_DIR=str(tmp_path / "state"), AUDITSTREAM_BOOTSTRAP_SERVERS="")
    run = lambda *args: subprocess.run([sys.executable, "-m", "auditstream.cli", "broker", *args], env=env,  # noqa: E731
                                       capture_output=True, text=True, timeout=90)
    started = run("start", "--models", "tiny")
    try:
        assert started.returncode == 0, started.stderr
        status = run("status")
        assert status.returncode == 0 and '"bootstrap": "127.0.0.1:' in status.stdout
        settings = Settings(state_dir=tmp_path / "state")
        from auditstream.kafka import resolve_bootstrap

        bootstrap = resolve_bootstrap(settings)
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        assert {settings.topic(T.PREDICTIONS), settings.request_topic("tiny"), settings.episode_state_topic("tiny")} \
            <= set(admin.list_topics())
        admin.close()
    finally:
        stopped = run("stop")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert run("status").returncode == 1


def _card(settings: Settings):
    from auditstream.registry import ModelRegistry

    return ModelRegistry(settings.models_dir).card("tiny")
