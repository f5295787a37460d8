"""The outbox's publishing rounds (store/outbox.py), on SQLite and PostgreSQL: a round claims
pending rows and records the topics' positions in one transaction; finishing it marks the rows
that reached the broker and puts the others back; a key's rows wait while one of them is in an
open round; concurrent publishers never claim a row twice; a store of schema version 2 gains the
round column and table in place. The broker side (a crash after the acknowledgement) is in
tests/monitor/test_exactly_once.py."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from tests.store.store_factories import BACKENDS, add_users, audit_item, make_store

from auditstream import topics
from store import AuditStore, StoreConfig, open_store
from store.schema import SCHEMA_VERSION

T0 = 20_000.0
POSITIONS = {("t.verdicts", 0): 7, ("t.verdicts", 1): 0, ("t.decisions", 0): 3}


def _decide_all(store: AuditStore, *names: str, now: float = T0) -> None:
    for user in add_users(store, *names):
        while (claim := store.claim(user, 60, now)) is not None:
            store.record_verdict(store.new_verdict_id(), claim.item_id, user, "accept", None, now)


def test_a_round_claims_records_its_positions_and_finishing_marks_or_returns_each_row(store: AuditStore) -> None:
    store.ingest_many([audit_item("h1"), audit_item("h2")], T0)
    _decide_all(store, "alice")
    pending = store.pending_outbox()
    assert len(pending) == 4  # two verdicts, two human decisions
    first = store.start_outbox_round(10, T0 + 1, "pub-a", T0 + 36, POSITIONS)
    assert first is not None and first.rows == pending
    (stored,) = store.open_outbox_rounds()
    assert (stored.id, stored.owner, stored.fence_s, stored.positions, stored.rows) == (first.id, "pub-a", T0 + 36, POSITIONS, pending)
    assert store.start_outbox_round(10, T0 + 2, "pub-b", T0 + 37, POSITIONS) is None  # every row is in flight
    assert store.pending_outbox() == pending  # in flight is not published

    assert store.finish_outbox_round(first.id, [pending[0].id, pending[2].id], T0 + 3) == 2
    assert store.open_outbox_rounds() == [] and store.pending_outbox() == [pending[1], pending[3]]
    assert store.finish_outbox_round(first.id, [pending[1].id], T0 + 4) == 0  # finished already: no effect
    again = store.start_outbox_round(10, T0 + 5, "pub-b", T0 + 40, {})
    assert again is not None and again.rows == [pending[1], pending[3]] and again.id != first.id
    assert store.finish_outbox_round(again.id, [r.id for r in again.rows], T0 + 6) == 2
    assert store.pending_outbox() == [] and store.store_stats(T0).outbox_pending == 0


def test_a_keys_later_rows_wait_while_one_of_its_rows_is_in_an_open_round(backend: str, tmp_path: Path, fast_hashes: None) -> None:
    """Double review: two verdicts keyed by the same request id. While the first is in an open
    round (say one a crash left behind) the second is not sent, so the key's order holds; rows
    of other keys go on."""
    with make_store(backend, tmp_path, StoreConfig(double_review_rate=1.0)) as store:
        store.ingest_many([audit_item("h1"), audit_item("h2")], T0)
        _decide_all(store, "alice")
        first = store.start_outbox_round(1, T0 + 1, "pub-a", T0 + 36, POSITIONS)  # alice's verdict on h1 only
        assert [(r.topic, r.key) for r in first.rows] == [(topics.VERDICTS, b"h1")]
        _decide_all(store, "bob")  # the second reviews: another verdict keyed h1, and one keyed h2
        later = store.start_outbox_round(10, T0 + 2, "pub-b", T0 + 37, POSITIONS)
        assert (topics.VERDICTS, b"h1") not in [(r.topic, r.key) for r in later.rows]
        assert {(r.topic, r.key) for r in later.rows} == {(topics.DECISIONS, b"h1"), (topics.VERDICTS, b"h2"),
                                                           (topics.DECISIONS, b"h2")}  # fmt: skip
        store.finish_outbox_round(later.id, [r.id for r in later.rows], T0 + 3)
        assert store.start_outbox_round(10, T0 + 4, "pub-b", T0 + 38, POSITIONS) is None  # bob's h1 verdict waits
        store.finish_outbox_round(first.id, [r.id for r in first.rows], T0 + 5)
        last = store.start_outbox_round(10, T0 + 6, "pub-b", T0 + 39, POSITIONS)
        assert [(r.topic, r.key) for r in last.rows] == [(topics.VERDICTS, b"h1")]
        assert _auditors(first, last) == {"alice": 1, "bob": 1}


def _auditors(*rounds) -> dict[str, int]:
    from collections import Counter

    from auditstream.wire import Verdict

    return dict(Counter(Verdict.from_bytes(r.value).auditor for rnd in rounds for r in rnd.rows))


def test_concurrent_rounds_never_claim_a_row_twice(store: AuditStore) -> None:
    store.ingest_many([audit_item(f"h{i}") for i in range(40)], T0)
    _decide_all(store, "alice")
    claimed: list[list[int]] = [[], [], [], []]
    barrier = threading.Barrier(len(claimed))

    def publisher(i: int) -> None:
        barrier.wait()
        while (rnd := store.start_outbox_round(3, T0 + 1, f"pub-{i}", T0 + 36, POSITIONS)) is not None:
            claimed[i].extend(r.id for r in rnd.rows)
            store.finish_outbox_round(rnd.id, [r.id for r in rnd.rows], T0 + 2)

    threads = [threading.Thread(target=publisher, args=(i,)) for i in range(len(claimed))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    every = [i for ids in claimed for i in ids]
    assert len(every) == len(set(every)) == 80 and store.pending_outbox() == []


def test_a_fence_before_the_round_starts_is_refused(store: AuditStore) -> None:
    with pytest.raises(ValueError, match="fence_s"):
        store.start_outbox_round(10, T0, "pub-a", T0, POSITIONS)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_version_2_store_gains_the_rounds_in_place(backend: str, tmp_path: Path, fast_hashes: None) -> None:
    with make_store(backend, tmp_path) as store:
        store.ingest_many([audit_item("h1")], T0)
        _decide_all(store, "alice")
        with store._db.write() as cur:  # what a version-2 store looks like
            cur.run("DROP TABLE {p}outbox_rounds")
            cur.run("ALTER TABLE {p}outbox DROP COLUMN round_id")
            cur.run("UPDATE {p}meta SET value = '2' WHERE key = 'schema_version'")
        with open_store(store._db.url, table_prefix=store._db.prefix, create=True) as reopened:
            assert reopened._db.query("SELECT value FROM {p}meta WHERE key = 'schema_version'") == [(str(SCHEMA_VERSION),)]
            pending = reopened.pending_outbox()
            assert len(pending) == 2  # nothing lost in the upgrade
            rnd = reopened.start_outbox_round(10, T0 + 1, "pub-a", T0 + 36, POSITIONS)
            assert rnd.rows == pending and reopened.finish_outbox_round(rnd.id, [r.id for r in rnd.rows], T0 + 2) == 2
