"""An outbox row its topic cannot take (review r5): the producer refuses it on every round, and it
is claimed first (oldest first) -- the outbox used to fail for good, no verdict published again.
The ingest now refuses such items (tests/monitor/test_ingest_guards.py), but a row can still be
over its topic's limit: a store written before that check, or a topic whose max.message.bytes was
lowered since. Such a row is dead-lettered (``too_large``) instead of sent, marked with its round,
and the others go out."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from pathlib import Path

import pytest
from tests.monitor.test_service import RecordingProducer
from tests.store.store_factories import BACKENDS, add_users, audit_item, make_store

from auditstream import topics
from auditstream.settings import Settings
from auditstream.wire import DeadLetter, Verdict
from monitor.service import MonitorArgs, OutboxPublisher, publish_outbox
from store import AuditStore, accounts

T0 = 7_000.0
SETTINGS = Settings(topic_prefix="t")
VERDICTS, DECISIONS, DEAD = (SETTINGS.topic(t) for t in (topics.VERDICTS, topics.DECISIONS, topics.DEAD_LETTER))
BIG_OUTPUT = "x" * 40_000  # its verdict and decision are ~40 KB: over a topic that takes 30 KB
LIMITS = {VERDICTS: 30_000, DECISIONS: 30_000, DEAD: 200_000}


@pytest.fixture(autouse=True)
def _cheap_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accounts, "SCRYPT_N", 2**8)


def _accept_all(store: AuditStore, *items) -> None:
    (alice,) = add_users(store, "alice")
    store.ingest_many(list(items), T0)
    for _ in items:
        claim = store.claim(alice, 60, T0)
        store.record_verdict(store.new_verdict_id(), claim.item_id, alice, "accept", None, T0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_row_over_its_topics_limit_is_dead_lettered_and_the_rest_published(backend: str, tmp_path: Path) -> None:
    with make_store(backend, tmp_path) as store:
        _accept_all(store, audit_item("big", output=BIG_OUTPUT), audit_item("ok-1"), audit_item("ok-2"))
        rows = store.pending_outbox()
        assert [(r.topic, r.key) for r in rows][:2] == [("verdicts", b"big"), ("decisions", b"big")]  # first in line
        producer, seen, reasons = RecordingProducer(), [], []
        published = publish_outbox(store, producer, SETTINGS, T0, on_verdict=seen.append, topic_log=producer,
                                   topic_limits=LIMITS, on_dead_letter=reasons.append)  # fmt: skip
        assert reasons == ["too_large", "too_large"]  # the monitor's dead-letter counter hears of each
        assert published == 6 and store.pending_outbox() == [] and store.open_outbox_rounds() == []
        sent = [(t, k) for t, k, _ in producer.acked]
        assert sent == [(DEAD, b"big"), (DEAD, b"big"), (VERDICTS, b"ok-1"), (DECISIONS, b"ok-1"), (VERDICTS, b"ok-2"),
                        (DECISIONS, b"ok-2")]
        letters = [DeadLetter.from_bytes(v) for t, _, v in producer.acked if t == DEAD]
        assert [(x.reason, x.source_topic, x.source_offset, x.value) for x in letters] == [
            ("too_large", VERDICTS, rows[0].id, rows[0].value), ("too_large", DECISIONS, rows[1].id, rows[1].value)]
        assert "over the 30000" in letters[0].detail and "stays in the audit store" in letters[0].detail
        # the statistics see every recorded verdict, as a tracker seeded from the store would
        assert [v.request_id for v in seen] == ["big", "ok-1", "ok-2"]
        assert publish_outbox(store, producer, SETTINGS, T0 + 1, topic_log=producer, topic_limits=LIMITS) == 0


def test_one_row_per_round_still_gets_past_it(tmp_path: Path) -> None:
    """A round of one row, the oversize one first: the next round goes on to the others (it was
    claimed first by every round, for good)."""
    with make_store("sqlite", tmp_path) as store:
        _accept_all(store, audit_item("big", output=BIG_OUTPUT), audit_item("ok"))
        producer = RecordingProducer()
        counts = [publish_outbox(store, producer, SETTINGS, T0 + i, limit=1, topic_log=producer, topic_limits=LIMITS)
                  for i in range(5)]
        assert counts == [1, 1, 1, 1, 0]
        assert [t for t, _, _ in producer.acked] == [DEAD, DEAD, VERDICTS, DECISIONS]


def test_a_row_too_large_for_the_dead_letter_topic_too_is_named_not_carried(tmp_path: Path) -> None:
    with make_store("sqlite", tmp_path) as store:
        _accept_all(store, audit_item("big", output=BIG_OUTPUT))
        rows = store.pending_outbox()
        producer = RecordingProducer()
        limits = {**LIMITS, DEAD: 20_000}
        assert publish_outbox(store, producer, SETTINGS, T0, topic_log=producer, topic_limits=limits) == 2
        letter = DeadLetter.from_bytes(producer.acked[0][2])
        assert letter.reason == "too_large" and letter.value is None and letter.source_offset == rows[0].id
        assert letter.omitted_bytes == len(rows[0].key) + len(rows[0].value)
        assert letter.value_sha256 == hashlib.sha256(rows[0].value).hexdigest()
        assert "stays in the store's outbox" in letter.detail
        assert all(len(v) < 20_000 for _, _, v in producer.acked)


def test_the_publisher_passes_its_topics_limits(tmp_path: Path) -> None:
    """run_monitor reads each topic's limit (topic_limits) and gives them to the publisher; the
    rows it dead-letters are counted in auditstream_monitor_dead_letters_total{source="outbox"}."""
    from prometheus_client import CollectorRegistry

    from monitor.service import StatsHooks

    with make_store("sqlite", tmp_path) as store:
        _accept_all(store, audit_item("big", output=BIG_OUTPUT), audit_item("ok"))
        producer, registry = RecordingProducer(), CollectorRegistry()
        stats = StatsHooks(dataclasses.replace(SETTINGS, models_dir=tmp_path / "models"), store, None, registry)
        publisher = OutboxPublisher(store, producer, producer, SETTINGS, MonitorArgs(outbox_interval_s=0.05), stats,
                                    topic_limits=LIMITS)  # fmt: skip
        publisher.start()
        deadline = time.monotonic() + 30
        while publisher.published < 4 and publisher.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        publisher.stop()
        publisher.join(30)
        assert publisher.error is None and publisher.published == 4 and store.pending_outbox() == []
        assert [t for t, _, _ in producer.acked] == [DEAD, DEAD, VERDICTS, DECISIONS]
    assert registry.get_sample_value("auditstream_monitor_dead_letters_total", {"reason": "too_large", "source": "outbox"}) == 2
    assert registry.get_sample_value("auditstream_monitor_dead_letters_total", {"reason": "too_large", "source": "ingest"}) == 0


def test_a_verdict_record_larger_than_a_wire_record_is_still_observed(tmp_path: Path, monkeypatch) -> None:
    """A row over the decoders' 8 MiB but under its topic's limit (a store from before the ingest
    check, which refuses such items now) is sent; observing it must not stop the publisher."""
    import store.store

    monkeypatch.setattr(store.store, "check_audit_item", lambda item: None)  # as before the check
    big = audit_item("big")
    with make_store("sqlite", tmp_path) as audit_store:
        _accept_all(audit_store, dataclasses.replace(big, prediction=dataclasses.replace(big.prediction,
                                                                                         output="y" * 9_000_000)))
        producer, seen = RecordingProducer(), []
        assert publish_outbox(audit_store, producer, SETTINGS, T0, on_verdict=seen.append, topic_log=producer) == 2
        assert [t for t, _, _ in producer.acked] == [VERDICTS, DECISIONS]
        assert isinstance(seen[0], Verdict) and len(seen[0].model_output) == 9_000_000
