"""The monitor process: audit ingest (with dead letters), outbox publishing (acknowledged, then
marked: published once), and end to end against the embedded broker."""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from tests.store.store_factories import BACKENDS, add_users, audit_item, make_store

from auditstream import topics
from auditstream.errors import DeliveryFailed
from auditstream.kafka import Delivery, Record
from auditstream.settings import Settings
from auditstream.wire import DeadLetter, Decision, Prediction, Route, Verdict
from store import accounts
from monitor.service import MonitorArgs, ingest_batch, publish_outbox, run_monitor
from store import AuditStore

T0 = 7_000.0


@pytest.fixture(autouse=True)
def _cheap_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accounts, "SCRYPT_N", 2**8)


def _record(topic: str, value: bytes, offset: int) -> Record:
    return Record(topic, 0, offset, value[:8], value, (("h", b"1"),), 1_700_000_000_000 + offset)


class RecordingProducer:
    """Unit-test producer: acknowledges everything, or nothing when ``fail`` is set. Also the
    :class:`~auditstream.kafka.TopicLog` of what it acknowledged (one partition per topic, the
    offset = the record's place in ``acked``), for the publisher's check after a crash."""

    def __init__(self, fail: bool = False) -> None:
        self.fail, self.sent, self.acked = fail, [], []

    def send(self, topic, key, value, headers=()):  # noqa: ANN001, ANN201
        self.sent.append((topic, key, value))
        return Delivery(topic, key)

    def flush(self, timeout_s: float) -> None:
        if self.fail:
            raise DeliveryFailed(self.sent[-1][0], self.sent[-1][1], "broker said no")
        self.acked, self.sent = self.acked + self.sent, []

    def _log(self, topic: str) -> list[tuple[bytes, bytes]]:
        return [(k, v) for t, k, v in self.acked if t == topic]

    def end_offsets(self, topics: list[str]) -> dict[tuple[str, int], int]:
        return {(t, 0): len(self._log(t)) for t in topics}

    def read_from(self, positions, topics, timeout_s):  # noqa: ANN001, ANN201
        return [Record(t, 0, o, k, v) for t in topics for o, (k, v) in enumerate(self._log(t)) if o >= positions.get((t, 0), 0)]

    def close(self) -> None:
        pass


def test_ingest_batch_stores_items_once_feeds_predictions_and_dead_letters_the_rest(tmp_path: Path) -> None:
    settings = Settings(topic_prefix="t")
    audit, preds = settings.topic(topics.AUDIT), settings.topic(topics.PREDICTIONS)
    good = [audit_item(f"r{i}").to_bytes() for i in range(2)]
    auto = dataclasses.replace(audit_item("auto"), prediction=dataclasses.replace(audit_item("auto").prediction, route=Route.AUTO))
    prediction = audit_item("p1").prediction
    records = [_record(audit, good[0], 0), _record(audit, good[1], 1), _record(audit, good[0], 2),  # a redelivery
               _record(audit, b"\xff not json", 3), _record(audit, auto.to_bytes(), 4),
               _record(preds, prediction.to_bytes(), 5), _record(preds, b"{}", 6), _record("t.elsewhere", good[0], 7)]  # fmt: skip
    seen: list[Prediction] = []
    with make_store("sqlite", tmp_path) as store:
        results = ingest_batch(store, settings, records, T0, seen.append)
        assert [len(r) for r in results] == [0, 0, 0, 1, 1, 0, 1, 1]
        letters = {i: DeadLetter.from_bytes(r[0].value) for i, r in enumerate(results) if r}
        assert {i: d.reason for i, d in letters.items()} == {3: "undecodable", 4: "bad_input", 6: "unsupported_version", 7: "bad_schema"}
        assert letters[3].value == b"\xff not json" and letters[3].headers == (("h", b"1"),)
        assert (letters[4].source_topic, letters[4].source_offset) == (audit, 4) and "route AUTO" in letters[4].detail
        assert all(r[0].topic == "t.dead-letter" for r in results if r)
        assert seen == [prediction]
        assert store.queue_depth() == 2
        assert ingest_batch(store, settings, records[:3], T0 + 1) == [[], [], []]  # the whole batch redelivered
        assert store.queue_depth() == 2


def test_a_dead_letter_too_large_for_its_topic_says_where_the_original_is(tmp_path: Path) -> None:
    """The monitor's letters fit the dead-letter topic's limit (read at start-up) like serve's: an
    audit item as large as its own topic takes would otherwise make a letter the broker refuses,
    and the monitor would stop on it for good."""
    settings = Settings(topic_prefix="t")
    audit = settings.topic(topics.AUDIT)
    big = _record(audit, b"\xff" + b"x" * 50_000, 0)
    small = _record(audit, b"\xff not json", 1)
    with make_store("sqlite", tmp_path) as store:
        results = ingest_batch(store, settings, [big, small], T0, dead_letter_limit=20_000)
    pointer, whole = (DeadLetter.from_bytes(r[0].value) for r in results)
    assert pointer.reason == "undecodable" and pointer.value is None and pointer.omitted_bytes == 8 + 50_001 + 2
    assert big.where in pointer.detail and len(results[0][0].value) < 20_000
    assert whole.value == small.value and not whole.omitted_bytes


def test_a_record_the_kafka_client_could_not_read_is_dead_lettered_alone(tmp_path: Path) -> None:
    """An audit item whose headers the client could not read (a header name that is not UTF-8):
    dead-lettered as undecodable with the key and value the client did read; the rest stored."""
    settings = Settings(topic_prefix="t")
    audit = settings.topic(topics.AUDIT)
    records = [_record(audit, audit_item(f"r{i}").to_bytes(), i) for i in range(3)]
    records[1] = dataclasses.replace(records[1], headers=(), unreadable="confluent-kafka cannot read its headers")
    with make_store("sqlite", tmp_path) as store:
        results = ingest_batch(store, settings, records, T0)
        assert [len(r) for r in results] == [0, 1, 0] and store.queue_depth() == 2
        letter = DeadLetter.from_bytes(results[1][0].value)
        assert letter.reason == "undecodable" and "could not read this record" in letter.detail
        assert letter.value == records[1].value and letter.key == records[1].key


def test_a_prediction_the_qc_tracker_fails_on_is_dead_lettered_alone(tmp_path: Path) -> None:
    settings = Settings(topic_prefix="t")
    preds = settings.topic(topics.PREDICTIONS)
    predictions = [audit_item(f"p{i}").prediction for i in range(3)]
    seen: list[str] = []

    def tracker(prediction: Prediction) -> None:
        if prediction.request_id == "p1":
            raise ZeroDivisionError("a tracker bug meets this prediction")
        seen.append(prediction.request_id)

    records = [_record(preds, p.to_bytes(), i) for i, p in enumerate(predictions)]
    with make_store("sqlite", tmp_path) as store:
        results = ingest_batch(store, settings, records, T0, tracker)
    assert [len(r) for r in results] == [0, 1, 0] and seen == ["p0", "p2"]
    letter = DeadLetter.from_bytes(results[1][0].value)
    assert letter.reason == "processing_failed" and "ZeroDivisionError" in letter.detail and letter.value == records[1].value


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_item_the_store_refuses_is_dead_lettered_alone(backend: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """An item the store refuses (its own content: what the wire's checks did not foresee, as a
    NUL character or a 64-bit step were until the wire refused them) fails the batch's
    transaction; the monitor then stores the others and dead-letters it alone, with its bytes."""
    settings = Settings(topic_prefix="t")
    audit = settings.topic(topics.AUDIT)
    values = [audit_item(r).to_bytes() for r in ("r0", "r-refused", "r2")]
    records = [_record(audit, v, i) for i, v in enumerate(values)]
    with make_store(backend, tmp_path) as store:
        ingest_many = store.ingest_many

        def refusing(items, now_s):  # noqa: ANN001, ANN202 - the real write, refusing one item's content
            if any(item.prediction.request_id == "r-refused" for item in items):
                raise ValueError("the store refuses this item's content")
            return ingest_many(items, now_s)

        monkeypatch.setattr(store, "ingest_many", refusing)
        results = ingest_batch(store, settings, records, T0)
        assert [len(r) for r in results] == [0, 1, 0] and store.queue_depth() == 2
        letter = DeadLetter.from_bytes(results[1][0].value)
        assert letter.reason == "processing_failed" and letter.value == values[1]
        assert "refuses this item" in letter.detail
        (single,) = ingest_batch(store, settings, records[1:2], T0)  # a batch of just the bad one: its own error
        assert DeadLetter.from_bytes(single[0].value).reason == "processing_failed"


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_reused_request_id_is_dead_lettered_and_a_redelivery_is_not(backend: str, tmp_path: Path) -> None:
    """The same bytes again: a redelivery, nothing happens. Another request under an id already
    audited: the store keeps the first and the second becomes a visible dead letter."""
    import numpy as np

    settings = Settings(topic_prefix="t")
    audit = settings.topic(topics.AUDIT)
    first = audit_item("r1")
    other = dataclasses.replace(first, input=np.full(4, 7, dtype=np.uint8))  # same id, another input
    later = dataclasses.replace(first, prediction=dataclasses.replace(first.prediction, created_at_s=T0 + 60))
    records = [_record(audit, first.to_bytes(), 0), _record(audit, first.to_bytes(), 1),
               _record(audit, other.to_bytes(), 2), _record(audit, later.to_bytes(), 3)]
    with make_store(backend, tmp_path) as store:
        results = ingest_batch(store, settings, records, T0)
        assert [len(r) for r in results] == [0, 0, 1, 1] and store.queue_depth() == 1
        for r, record in zip(results[2:], records[2:]):
            letter = DeadLetter.from_bytes(r[0].value)
            assert letter.reason == "duplicate_request_id" and letter.value == record.value
            assert "give every request its own id" in letter.detail
        assert ingest_batch(store, settings, records[:2], T0) == [[], []]  # redelivered again: still nothing


def test_a_broken_store_stops_the_ingest_instead_of_dead_lettering(tmp_path: Path, monkeypatch) -> None:
    """Every write fails, tried again too, not because of a record: the store is broken, and the error stops the
    monitor (nothing committed, the records come back) rather than dead-lettering good items."""
    import sqlite3

    settings = Settings(topic_prefix="t")
    records = [_record(settings.topic(topics.AUDIT), audit_item(f"r{i}").to_bytes(), i) for i in range(2)]
    with make_store("sqlite", tmp_path) as store:
        def down(*args, **kwargs):
            raise sqlite3.OperationalError("disk I/O error")

        monkeypatch.setattr(store, "ingest_many", down)
        monkeypatch.setattr("monitor.service.STORE_RETRY_DELAYS_S", (0.0, 0.0))  # tried three times, then raised
        with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
            ingest_batch(store, settings, records, T0)


def _decided_store(store: AuditStore) -> None:
    (alice,) = add_users(store, "alice")
    store.ingest_many([audit_item("h1"), audit_item("q1", Route.AUTO_QC)], T0)
    for _ in range(2):
        claim = store.claim(alice, 60, T0)
        store.record_verdict(store.new_verdict_id(), claim.item_id, alice, "accept", None, T0)


def test_the_outbox_is_marked_only_after_the_broker_acknowledged_and_published_once(tmp_path: Path) -> None:
    settings = Settings(topic_prefix="t")
    with make_store("sqlite", tmp_path) as store:
        _decided_store(store)
        failing = RecordingProducer(fail=True)
        with pytest.raises(DeliveryFailed):
            publish_outbox(store, failing, settings, T0, topic_log=failing)
        assert len(store.pending_outbox()) == 3  # nothing marked: it is all sent again
        (left_open,) = store.open_outbox_rounds()
        producer, verdicts = RecordingProducer(), []
        # Until the failed round's fence its records might still arrive: its rows wait.
        assert publish_outbox(store, producer, settings, left_open.fence_s - 1, topic_log=producer) == 0
        assert publish_outbox(store, producer, settings, left_open.fence_s, on_verdict=verdicts.append,
                              topic_log=producer) == 3  # fmt: skip
        assert publish_outbox(store, producer, settings, left_open.fence_s, topic_log=producer) == 0
        assert store.open_outbox_rounds() == []
        assert [(t, k) for t, k, _ in producer.acked] == [("t.verdicts", b"h1"), ("t.decisions", b"h1"), ("t.verdicts", b"q1")]
        assert [v.request_id for v in verdicts] == ["h1", "q1"] and store.pending_outbox() == []


@pytest.mark.kafka
@pytest.mark.slow
def test_monitor_end_to_end_on_the_embedded_broker(broker: Settings, tmp_path: Path) -> None:
    from auditstream.kafka import make_consumer, make_producer

    settings = dataclasses.replace(broker, topic_prefix=f"m{uuid.uuid4().hex[:8]}", state_dir=tmp_path / "state",
                                   models_dir=tmp_path / "models")  # fmt: skip
    items = [audit_item(f"h{i}") for i in range(3)] + [audit_item(f"q{i}", Route.AUTO_QC) for i in range(2)]
    with make_store("sqlite", tmp_path) as store:
        stop = threading.Event()
        args = MonitorArgs(outbox_interval_s=0.2, stats_interval_s=0.5)
        monitor = threading.Thread(target=run_monitor, args=(settings, args, store, stop, False, CollectorRegistry()))
        monitor.start()
        try:
            producer = make_producer(settings)
            for item in items + items:  # every audit record twice: a replay
                producer.send(settings.topic(topics.AUDIT), item.prediction.request_id.encode(), item.to_bytes())
            producer.send(settings.topic(topics.AUDIT), b"bad", b"not a record")
            for item in items:
                producer.send(settings.topic(topics.PREDICTIONS), item.prediction.request_id.encode(), item.prediction.to_bytes())
            producer.flush(30)
            producer.close()
            deadline = time.monotonic() + 90
            while store.queue_depth() < len(items) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert store.queue_depth() == len(items)

            (alice,) = add_users(store, "alice")
            while (claim := store.claim(alice, 60, time.time())) is not None:
                fix = "54321" if claim.item.request_id == "h0" else None
                store.record_verdict(store.new_verdict_id(), claim.item_id, alice, "correct" if fix else "accept", fix, time.time())

            names = [settings.topic(t) for t in (topics.VERDICTS, topics.DECISIONS, topics.DEAD_LETTER)]
            consumer = make_consumer(settings, f"verify-{uuid.uuid4().hex[:6]}", names)
            got: dict[str, list[bytes]] = {n: [] for n in names}
            deadline = time.monotonic() + 90
            while (len(got[names[0]]) < 5 or len(got[names[1]]) < 3 or not got[names[2]]) and time.monotonic() < deadline:
                for r in consumer.poll(100, 500):
                    got[r.topic].append(r.value)
            time.sleep(1.0)  # anything duplicated would arrive now
            for r in consumer.poll(100, 500):
                got[r.topic].append(r.value)
            consumer.close()
        finally:
            stop.set()
            monitor.join(timeout=60)
        assert not monitor.is_alive()
        assert store.pending_outbox() == []
        verdicts = sorted((Verdict.from_bytes(v) for v in got[names[0]]), key=lambda v: v.request_id)
        assert [v.request_id for v in verdicts] == ["h0", "h1", "h2", "q0", "q1"]
        decisions = {Decision.from_bytes(v).request_id: Decision.from_bytes(v) for v in got[names[1]]}
        assert len(got[names[1]]) == 3 and decisions["h0"].output == "54321" and decisions["h1"].source == "human"
        assert [DeadLetter.from_bytes(v).value for v in got[names[2]]] == [b"not a record"]


@pytest.mark.kafka
def test_a_monitor_that_fails_to_start_releases_its_control_view(broker: Settings, tmp_path: Path, monkeypatch) -> None:
    """Start-up fails after the control view's thread started (here: its metrics collide in one
    registry): the thread is stopped, not left running in an embedding process."""
    from prometheus_client import CollectorRegistry

    import monitor.service as service

    settings = dataclasses.replace(broker, topic_prefix=f"m{uuid.uuid4().hex[:8]}", state_dir=tmp_path / "state",
                                   models_dir=tmp_path / "models")  # fmt: skip
    registry = CollectorRegistry()
    with make_store("sqlite", tmp_path) as store:
        service.StatsHooks(settings, store, None, registry)  # its metric names are taken now
        with pytest.raises(ValueError, match="Duplicated timeseries"):
            run_monitor(settings, MonitorArgs(), store, threading.Event(), False, registry)
    assert not [t for t in threading.enumerate() if t.name == "control-view" and t.is_alive()]


def test_ingest_batch_keeps_shadow_answers_beside_the_items(tmp_path: Path) -> None:
    from store.shadow import ShadowAnswers

    settings = Settings(topic_prefix="t")
    audit, preds = settings.topic(topics.AUDIT), settings.topic(topics.PREDICTIONS)
    item = audit_item("r1")
    shadow = dataclasses.replace(item.prediction, model_version="v2", route=Route.AUTO, shadow=True)
    records = [_record(preds, shadow.to_bytes(), 0), _record(audit, item.to_bytes(), 1),
               _record(preds, item.prediction.to_bytes(), 2), _record(preds, shadow.to_bytes(), 3)]  # a redelivery
    with make_store("sqlite", tmp_path) as store:
        answers = ShadowAnswers(store)
        assert ingest_batch(store, settings, records, T0, shadow=answers) == [[], [], [], []]
        assert answers.candidates("zip") == {"v2": 1} and store.queue_depth() == 1
        assert answers.prune(T0 + 10_000, retention_s=60) == 0  # its request has an audit item: kept


_TEXT = st.characters(codec="utf-8", exclude_characters="\x00")  # the wire refuses NUL (test_ingest_guards.py)
_JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
                     | st.text(_TEXT, max_size=8), lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(_TEXT, max_size=5), inner, max_size=3), max_leaves=8)
_REFERENCE = st.one_of(_JSON, st.fixed_dictionaries({"version": _JSON, "same_answer": _JSON},
                                                     optional={"output": _JSON}))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(references=st.lists(_REFERENCE, min_size=1, max_size=6))
def test_any_live_reference_from_another_client_is_kept_or_ignored_never_fatal(tmp_path: Path, references) -> None:
    """A shadow prediction's ``details["live_reference"]`` comes from whoever wrote the record: any
    JSON there is ingested without an error; only a well-formed one becomes a comparison."""
    from store.shadow import ShadowAnswers

    settings = Settings(topic_prefix="t")
    preds = settings.topic(topics.PREDICTIONS)
    item = audit_item("r1")
    records = [_record(preds, dataclasses.replace(item.prediction, request_id=f"r{i}", model_version="v2",
                                                  shadow=True, details={"live_reference": ref}).to_bytes(), i)
               for i, ref in enumerate(references)]
    well_formed = sum(isinstance(r, dict) and isinstance(r.get("version"), str) and r["version"] != ""
                      and isinstance(r.get("same_answer"), bool) for r in references)
    with make_store("sqlite", tmp_path / uuid.uuid4().hex) as store:
        answers = ShadowAnswers(store)
        assert ingest_batch(store, settings, records, T0, shadow=answers) == [[] for _ in records]
        assert answers.candidates("zip") == {"v2": len(records)}
        assert answers.compared("zip", "v2") == well_formed


def test_the_flush_timeout_is_checked_against_the_settings_poll_interval() -> None:
    """It is also the outbox producer's delivery timeout (under max_poll_interval_ms): a raised
    setting admits a longer one; checked by run_monitor before it connects (test_cli_errors.py)."""
    from auditstream.errors import BadArguments

    args = MonitorArgs(flush_timeout_s=400, leader_lease_s=500)
    with pytest.raises(BadArguments, match="--flush-timeout-s 400 must be under AUDITSTREAM_MAX_POLL_INTERVAL_MS"):
        args.check_settings(Settings())
    args.check_settings(Settings(max_poll_interval_ms=600_000))
    MonitorArgs().check_settings(Settings())  # the defaults go together


def test_the_monitor_group_follows_the_topic_prefix_and_keeps_the_default_name() -> None:
    """The group was a fixed "auditstream-monitor": two deployments with different prefixes on one
    cluster shared it and split each other's partitions. The default prefix keeps that name, so
    an existing deployment's committed offsets stay its own."""
    from monitor.service import group_id

    assert group_id(Settings()) == "auditstream-monitor"
    assert group_id(Settings(topic_prefix="staging")) == "staging-monitor"
    assert group_id(Settings(topic_prefix="a")) != group_id(Settings(topic_prefix="b"))


@pytest.mark.kafka
def test_run_monitor_joins_its_prefixs_group_unless_told_another(broker: Settings, tmp_path: Path, monkeypatch) -> None:
    from auditstream.stream import StreamLoop

    class Joined(Exception):
        pass

    joined: list[str] = []

    def spy(settings, group, *args, **kwargs):
        joined.append(group)
        raise Joined

    monkeypatch.setattr(StreamLoop, "connect", spy)
    prefix = f"m{uuid.uuid4().hex[:8]}"
    settings = dataclasses.replace(broker, topic_prefix=prefix, state_dir=tmp_path / "state",
                                   models_dir=tmp_path / "models")  # fmt: skip
    with make_store("sqlite", tmp_path) as store:
        for args in (MonitorArgs(), MonitorArgs(group_id="chosen")):
            with pytest.raises(Joined):
                run_monitor(settings, args, store, threading.Event(), False, CollectorRegistry())
    assert joined == [f"{prefix}-monitor", "chosen"]
