"""An outbox round's send window counts from the moment its fence counts from (the claim's start),
and no send may outlive it: a claim that waited (SQLite's writer lock, the pool) eats the window
instead of pushing it past the fence, and the outbox producer's sends block at most
OUTBOX_MAX_BLOCK_S (kafka-python's default max_block_ms was 60 s)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.monitor.test_service import RecordingProducer
from tests.store.store_factories import add_users, audit_item, make_store

import monitor.service as service
from auditstream.errors import SendBlocked
from auditstream.settings import Settings
from store import accounts

SETTINGS = Settings(topic_prefix="t")


@pytest.fixture(autouse=True)
def _cheap_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accounts, "SCRYPT_N", 2**8)


class Clock:
    """The module's clock: every monotonic read takes ``step_s``; wall and monotonic move together."""

    def __init__(self, step_s: float) -> None:
        self.wall, self.mono, self.step_s = 50_000.0, 1_000.0, step_s

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        self.advance(self.step_s)
        return self.mono

    def advance(self, s: float) -> None:
        self.wall += s
        self.mono += s

    def sleep(self, s: float) -> None:
        self.advance(s)


class TimedProducer(RecordingProducer):
    def __init__(self, clock: Clock, block_at: int | None = None) -> None:
        super().__init__()
        self.clock, self.times, self.block_at = clock, [], block_at

    def send(self, topic, key, value, headers=()):  # noqa: ANN001, ANN201
        if self.block_at is not None and len(self.times) == self.block_at:
            self.clock.advance(service.OUTBOX_MAX_BLOCK_S)
            raise SendBlocked(topic, key, "not sent: the producer did not take it in time")
        self.times.append(self.clock.wall)
        return super().send(topic, key, value, headers)


def _rounds(store, clock: Clock, claim_wait_s: float) -> list:  # noqa: ANN001
    """Decide some items; make the claim wait ``claim_wait_s`` (the writer lock) and record its rounds."""
    (alice,) = add_users(store, "alice")
    store.ingest_many([audit_item(f"h{i}") for i in range(12)], clock.wall)
    while (c := store.claim(alice, 60, clock.wall)) is not None:
        store.record_verdict(store.new_verdict_id(), c.item_id, alice, "accept", None, clock.wall)
    real, rounds = store.start_outbox_round, []

    def slow_claim(*a, **k):  # noqa: ANN002, ANN003, ANN202
        clock.advance(claim_wait_s)
        r = real(*a, **k)
        rounds.append(r)
        return r

    store.start_outbox_round = slow_claim
    return rounds


@pytest.mark.parametrize("claim_wait_s", [0.0, 3.0, 20.0])
def test_no_send_outlives_the_window_its_fence_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      claim_wait_s: float) -> None:
    clock = Clock(0.5)
    monkeypatch.setattr(service, "time", clock)
    with make_store("sqlite", tmp_path) as store:
        rounds = _rounds(store, clock, claim_wait_s)
        pending = len(store.pending_outbox(100))
        producer = TimedProducer(clock)
        # now_s: the wall time at the function's first clock read (a caller's time.time() just
        # before the call; this clock moves on every read)
        n = service.publish_outbox(store, producer, SETTINGS, clock.wall + clock.step_s, 100, 30.0, topic_log=producer,
                                   owner="A")
        (r,) = rounds
        assert r.fence_s == r.started_at_s + service.SEND_WINDOW_S + 30.0
        # each send, blocking at most OUTBOX_MAX_BLOCK_S, ends inside the window the fence allows for
        assert all(t + service.OUTBOX_MAX_BLOCK_S <= r.started_at_s + service.SEND_WINDOW_S for t in producer.times), (r.started_at_s, producer.times)
        assert n == len(producer.times) and len(store.pending_outbox(100)) == pending - n
        if claim_wait_s >= service.SEND_WINDOW_S:
            assert n == 0  # the claim ate the window: its rows wait for the next round, unsent
        else:
            assert 0 < n < pending


def test_a_send_the_producer_did_not_take_ends_the_round_and_its_rest_waits(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(0.0)
    monkeypatch.setattr(service, "time", clock)
    with make_store("sqlite", tmp_path) as store:
        _rounds(store, clock, 0.0)
        pending = len(store.pending_outbox(100))
        producer = TimedProducer(clock, block_at=3)
        n = service.publish_outbox(store, producer, SETTINGS, clock.wall, 100, 30.0, topic_log=producer, owner="A")
        assert n == 3 and len(producer.acked) == 3 and len(store.pending_outbox(100)) == pending - 3
        assert not store.open_outbox_rounds()  # finished with the three it sent


def test_the_outbox_producer_blocks_at_most_its_max_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """kafka-python gets max_block_ms (default 60 s); its send timeout becomes SendBlocked."""
    kafka = pytest.importorskip("kafka")
    from auditstream.kafka.clients import KafkaPythonProducer

    seen: dict = {}

    class FakeKafkaProducer:
        def __init__(self, **kwargs) -> None:  # noqa: ANN003
            seen.update(kwargs)

        def send(self, *a, **k):  # noqa: ANN002, ANN003, ANN202
            raise kafka.errors.KafkaTimeoutError("Failed to update metadata after 1.0 secs.")

    monkeypatch.setattr(kafka, "KafkaProducer", FakeKafkaProducer)
    producer = KafkaPythonProducer(Settings(delivery_timeout_s=30.0), "127.0.0.1:1", "x",
                                   max_block_s=service.OUTBOX_MAX_BLOCK_S)
    assert seen["max_block_ms"] == 1000
    with pytest.raises(SendBlocked, match="not sent"):
        producer.send("t.verdicts", b"k", b"v")
    seen.clear()
    KafkaPythonProducer(Settings(delivery_timeout_s=30.0), "127.0.0.1:1", "x")
    assert seen and "max_block_ms" not in seen  # other producers keep the client's default
