"""Two monitors on one store (a rolling-update surge): one leader publishes the outbox and keeps
the statistics, every outbox row is published once, and a crashed or stopped leader is
replaced. On SQLite and PostgreSQL; on PostgreSQL concurrent publishers also claim rows with
``FOR UPDATE SKIP LOCKED`` so they never send a row twice even without the leader lock."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import pytest
from tests.store.store_factories import add_users, audit_item, make_store
from tests.monitor.test_service import RecordingProducer

from auditstream.settings import Settings
from auditstream.wire import Route
from monitor.service import MonitorArgs, OutboxPublisher, StatsHooks, publish_outbox
from store import AuditStore

T0 = 5_000.0


def _decide(store: AuditStore, first: int, n: int) -> None:
    (alice,) = [store.accounts.get("alice")]
    store.ingest_many([audit_item(f"r{i}", Route.AUTO_QC if i % 2 else Route.HUMAN) for i in range(first, first + n)], T0)
    while (claim := store.claim(alice, 60, time.time())) is not None:
        store.record_verdict(store.new_verdict_id(), claim.item_id, alice, "accept", None, time.time())


def test_one_leader_at_a_time_and_a_clean_stop_hands_over(store: AuditStore) -> None:
    a, b = store.leadership(lease_s=30, owner="a"), store.leadership(lease_s=30, owner="b")
    try:
        assert a.hold(T0) and not b.hold(T0) and a.hold(T0 + 1) and not b.hold(T0 + 1)
        a.release()
        assert b.hold(T0 + 2) and not a.hold(T0 + 2)
        for step in range(3, 40):  # hand over at once, many times: a release is over when it returns
            b.release()
            assert a.hold(T0 + step), f"hand-over {step}: the released lock was still held"
            a, b = b, a
    finally:
        a.release()
        b.release()


def test_a_crashed_leader_is_replaced_and_steps_down(store: AuditStore, backend: str) -> None:
    a, b = store.leadership(lease_s=30, owner="a"), store.leadership(lease_s=30, owner="b")
    try:
        assert a.hold(T0)
        if backend == "sqlite":  # a crash leaves the lease row: it runs out
            assert not b.hold(T0 + 29)
            assert b.hold(T0 + 31)
        else:  # a crash ends the session, and the server drops its lock once the backend exits
            a._cx.close()
            deadline = time.monotonic() + 10
            while not b.hold(T0 + 1):
                assert time.monotonic() < deadline, "the crashed leader's lock outlived its session by 10 s"
                time.sleep(0.05)
        assert not a.hold(T0 + 32)  # the old leader notices and stays a follower
        assert b.hold(T0 + 33)
    finally:
        a.release()
        b.release()


def test_two_monitors_publish_every_row_once_and_only_the_leader_keeps_statistics(store: AuditStore, tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry

    add_users(store, "alice")
    settings = Settings(topic_prefix="t", models_dir=tmp_path / "models", metrics_port=0)
    args = MonitorArgs(outbox_interval_s=0.01, stats_interval_s=0.05, flush_timeout_s=1.0, leader_lease_s=5.0)
    monitors = []
    for name in ("first", "second"):
        stats = StatsHooks(settings, store, metrics_registry=CollectorRegistry())
        producer = RecordingProducer()
        monitors.append(OutboxPublisher(store, producer, producer, settings, args, stats, store.leadership(lease_s=5.0, owner=name)))
    for m in monitors:
        m.start()
    try:
        for k in range(4):  # verdicts keep arriving while both run
            _decide(store, 10 * k, 10)
            time.sleep(0.05)
        _wait_until(lambda: sum(m.published for m in monitors) >= 60)  # counted after the tracker saw them
        leader, follower = sorted(monitors, key=lambda m: not m.leading)
        assert leader.leading and not follower.leading
        sent = Counter(value for m in monitors for _, _, value in m.producer.acked)
        assert len(sent) == 40 + 20 and set(sent.values()) == {1}  # 40 verdicts, 20 human decisions: each once
        assert (leader.published, follower.published) == (60, 0) and store.pending_outbox() == []
        # every QC verdict, in one place, once the leader read their samples from the store (stream order)
        _wait_until(lambda: [s.audited for s in leader.stats.tracker.snapshot()] == [20])
        assert [s.audited for s in follower.stats.tracker.snapshot()] == []

        leader.stop()  # the old pod goes: the other one takes over, statistics included
        leader.join(timeout=30)
        _decide(store, 40, 10)
        _wait_until(lambda: follower.published >= 15)
        assert follower.leading and follower.published == 15 and store.pending_outbox() == []
        _wait_until(lambda: [s.audited for s in follower.stats.tracker.snapshot()] == [25])  # seeded 20 + 5 new
    finally:
        for m in monitors:
            m.stop()
        for m in monitors:
            m.join(timeout=30)
    assert all(not m.is_alive() and m.error is None for m in monitors)
    assert len({value for m in monitors for _, _, value in m.producer.acked}) == 75


def test_a_leader_that_loses_the_lead_withdraws_its_qc_metrics(store: AuditStore, backend: str, tmp_path: Path) -> None:
    """A follower's /metrics has no QC figures; a leader that loses the lead (its lock
    connection broke, or a stall let its SQLite lease run out) used to keep exporting its last
    ones, and a stale ``qc_over_budget == 1`` kept paging. Real leaderships, real metrics registry."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    settings = Settings(topic_prefix="t", models_dir=tmp_path / "models", metrics_port=0)
    stats = StatsHooks(settings, store, metrics_registry=registry)
    producer = RecordingProducer()
    lease = store.leadership(lease_s=0.3, owner="leader")  # SQLite: renewed every 0.1 s
    successor = store.leadership(lease_s=30, owner="successor")
    publisher = OutboxPublisher(store, producer, producer, settings, MonitorArgs(), stats, lease)
    mv = {"model": "zip", "version": "v1"}
    try:
        assert publisher._lead() and publisher.leading  # the publisher's own round: take the lead, seed
        store.ingest_many([audit_item("h1"), audit_item("q1", Route.AUTO_QC)], T0)
        stats.observe_prediction(audit_item("q1", Route.AUTO_QC).prediction)
        stats.tick(store, time.time())
        assert registry.get_sample_value("auditstream_qc_predictions", mv) == 1
        assert registry.get_sample_value("auditstream_audit_queue_depth", {**mv, "route": "HUMAN"}) == 1

        if backend == "sqlite":  # the leader stalled past its lease and the successor took it
            assert successor.hold(time.time() + 1.0)
            time.sleep(0.15)  # past the leader's renewal time: its next round looks at the lease
        else:  # the leader's lock connection broke and the successor got the lock
            lease._cx.close()
            _wait_until(lambda: successor.hold(time.time()), 10.0)
        assert not publisher._lead() and not publisher.leading
        exported = {(f.name, tuple(sorted(s.labels.items()))) for f in registry.collect() for s in f.samples
                    if s.labels.get("version") or s.labels.get("model")}
        assert not [e for e in exported if not e[0].startswith("auditstream_verdicts")], exported
        assert registry.get_sample_value("auditstream_outbox_pending_records") == 0

        successor.release()  # it leads again: seeded afresh, its figures back on the next tick
        assert publisher._lead()
        stats.tick(store, time.time())
        assert registry.get_sample_value("auditstream_qc_audited_items", mv) == 0  # v1 seeded from the store (q1 open)
        assert registry.get_sample_value("auditstream_audit_queue_depth", {**mv, "route": "HUMAN"}) == 1
    finally:
        lease.release()
        successor.release()


def _wait_until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


class SlowProducer(RecordingProducer):
    """Acknowledges after a pause, so two publishers' rounds overlap."""

    def flush(self, timeout_s: float) -> None:
        time.sleep(0.05)
        super().flush(timeout_s)


@pytest.mark.postgres
def test_concurrent_publishers_on_postgresql_skip_each_others_rows(tmp_path: Path) -> None:
    with make_store("postgres", tmp_path) as store:
        add_users(store, "alice")
        _decide(store, 0, 60)
        settings = Settings(topic_prefix="t")
        producers = [SlowProducer(), SlowProducer()]
        barrier = threading.Barrier(2)

        def publish(producer: SlowProducer) -> None:
            barrier.wait()
            while publish_outbox(store, producer, settings, T0, limit=7, topic_log=producer):
                pass

        threads = [threading.Thread(target=publish, args=(p,)) for p in producers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        sent = Counter(value for p in producers for _, _, value in p.acked)
        assert len(sent) == 90 and set(sent.values()) == {1}  # 60 verdicts + 30 decisions, none twice
        assert all(p.acked for p in producers)  # both really published: the rows were shared out
        assert store.pending_outbox() == []


@pytest.mark.postgres
def test_a_follower_whose_connection_was_terminated_reconnects_and_can_lead(tmp_path: Path,
                                                                            caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    """A follower's session killed on the server (pg_terminate_backend: a restart, an admin) used
    to fail every round for good; it reconnects on its next round, says so, and takes over when
    the leader goes."""
    import psycopg

    from tests.store.store_factories import POSTGRES_URL

    with make_store("postgres", tmp_path) as store:
        a, b = store.leadership(lease_s=30, owner="a"), store.leadership(lease_s=30, owner="b")
        try:
            assert a.hold(T0) and not b.hold(T0)
            (pid,) = b._cx.execute("SELECT pg_backend_pid()").fetchone()
            with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))  # waits until it is gone
            with caplog.at_level("WARNING", logger="store.leader"):
                assert not b.hold(T0 + 1)  # no exception: still a follower, on a new connection
            assert "leadership connection of 'monitor' broke" in caplog.text and "reconnecting" in caplog.text
            assert not b.hold(T0 + 2)  # and quiet from then on
            a.release()
            assert b.hold(T0 + 3)  # the reconnected follower takes over
        finally:
            a.release()
            b.release()


def test_a_follower_that_cannot_reach_the_server_does_not_lead_and_does_not_raise(tmp_path: Path) -> None:
    from store.backend import connect
    from store.leader import PostgresLeadership

    pytest.importorskip("psycopg")
    db = connect("postgresql://nobody@127.0.0.1:1/none?connect_timeout=2")  # nothing listens on port 1
    leadership = PostgresLeadership(db, "monitor", 30.0, "c")
    assert leadership.hold(T0) is False and leadership.hold(T0 + 1) is False


class _PausingProducer(RecordingProducer):
    """Acknowledges each round after ``pause_s``: a backlog of one-row rounds outlasts a short lease.
    ``after_flush`` runs after each acknowledgement (the test's hook into the drain)."""

    def __init__(self, pause_s: float, after_flush: Callable[[int], None] = lambda n: None) -> None:
        super().__init__()
        self.pause_s, self.after_flush, self.flushes = pause_s, after_flush, 0

    def flush(self, timeout_s: float) -> None:
        time.sleep(self.pause_s)
        super().flush(timeout_s)
        self.flushes += 1
        self.after_flush(self.flushes)


def _backlog(store: AuditStore, n: int) -> None:
    add_users(store, "alice")
    _decide(store, 0, n)
    assert len(store.pending_outbox(10_000)) >= n


def test_a_leader_draining_a_backlog_renews_its_lease_before_every_round(tmp_path: Path) -> None:
    """A backlog of rounds that takes longer than the lease: the leader renews before each round,
    so a second monitor never gets the lease while the first still drains (the lead was checked
    once per pass: after leader_lease_s the other monitor took it mid-drain)."""
    args = MonitorArgs(outbox_interval_s=0.1, outbox_batch=1, flush_timeout_s=1.0, leader_lease_s=1.5)
    with make_store("sqlite", tmp_path) as store:
        _backlog(store, 15)  # 30 one-row rounds of 0.1 s: twice the lease
        producer = _PausingProducer(0.1)
        a = OutboxPublisher(store, producer, producer, Settings(topic_prefix="t"), args, None,
                            store.leadership("monitor", args.leader_lease_s, owner="A"))
        b = store.leadership("monitor", args.leader_lease_s, owner="B")
        a.start()
        try:
            _wait_until(lambda: a.leading or a.error is not None, 10)
            started = time.monotonic()
            while store.pending_outbox(1):
                assert not b.hold(time.time()), f"B took the lead from a live leader after {time.monotonic() - started:.1f} s"
                assert time.monotonic() - started < 30
                time.sleep(0.1)
            assert time.monotonic() - started > args.leader_lease_s  # the drain did outlast a lease
        finally:
            a.stop()
            a.join(10)
        assert a.error is None and a.published == len(producer.acked)


def test_a_leader_that_lost_its_lease_mid_drain_leaves_the_drain(tmp_path: Path) -> None:
    """Another monitor holds the lease now (this one stalled past it): the drain stops at the
    next renewal instead of publishing on as a second leader."""
    args = MonitorArgs(outbox_interval_s=0.1, outbox_batch=1, flush_timeout_s=1.0, leader_lease_s=1.5)
    with make_store("sqlite", tmp_path) as store:
        _backlog(store, 15)
        b = store.leadership("monitor", args.leader_lease_s, owner="B")
        taken: list[int] = []

        def steal(flushes: int) -> None:  # after round 3, B's lease replaces A's (as if A's ran out)
            if flushes == 3:
                with store._db.write() as cur:
                    cur.run("UPDATE {p}meta SET value = ? WHERE key = 'leader:monitor'",
                            ('{"owner": "B", "expires_s": %f}' % (time.time() + 600),))
                taken.append(flushes)

        producer = _PausingProducer(0.1, steal)
        a = OutboxPublisher(store, producer, producer, Settings(topic_prefix="t"), args, None,
                            store.leadership("monitor", args.leader_lease_s, owner="A"))
        a.start()
        try:
            _wait_until(lambda: bool(taken) and not a.leading, 10)
            published = a.published
            time.sleep(0.5)
            # at most the rounds before the renewal came due (a third of the lease), then none
            assert a.published == published and published <= 3 + int(args.leader_lease_s / 3 / 0.1) + 1
            assert store.pending_outbox(1) and b.hold(time.time())  # the rest is B's to publish
        finally:
            a.stop()
            a.join(10)
        assert a.error is None
