"""The reads ``certify --from-audits`` makes (stack/recertify.py), each test on SQLite and on
PostgreSQL: the items' positions without inputs (stream order, keyset pages, gold items and other
models left out), the inputs of a chunk of requests (each request's lowest-id item), label rows
without inputs, and the one snapshot they are all read in (``read_snapshot``: what another
connection commits after it began is seen by none of them, and by all of them after it; one
pinned connection, given back when it ends)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from tests.store.store_factories import BACKENDS, add_users, audit_item, make_store

from auditstream.wire import AuditItem, Route, VerdictKind, encode_input
from store import AuditStore, ItemPosition, StoreConfig, open_store
from store import backend as store_backend
from store.accounts import Role, User
from store.backend import StoreBusy, connect
from store.reads import INPUT_CHUNK

T0 = 50_000.0


@pytest.fixture
def store(backend: str, tmp_path: Path, fast_hashes: None) -> Iterator[AuditStore]:
    """The conftest's store on both backends, but claims never serve a gold item: which items
    the tests decide is fixed."""
    with make_store(backend, tmp_path, StoreConfig(gold_rate=0.0)) as s:
        yield s


def item(request_id: str, fill: float, version: str = "v1", route: Route = Route.HUMAN, model: str = "zip") -> AuditItem:
    """An audit item whose input is a 2x3 tensor of ``fill``: inputs tell the items apart."""
    base = audit_item(request_id, route, model=model, version=version, inclusion_prob=1.0 if route is Route.HUMAN else 0.25)
    return AuditItem(base.prediction, np.full((2, 3), fill, dtype=np.float32))


def wire(fill: float) -> dict:
    return encode_input(np.full((2, 3), fill, dtype=np.float32))


def add_gold(store: AuditStore, request_id: str, fill: float, version: str = "gold") -> None:
    admin = add_users(store, f"admin-{request_id}")[0]
    store.accounts.set_role(admin.name, Role.ADMIN)
    store.add_gold(item(request_id, fill, version), "12345", store.accounts.get(admin.name), T0)


def recorded_queries(store: AuditStore, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple]]:
    """Every query the store runs from now on (SQL text, parameters)."""
    seen: list[tuple[str, tuple]] = []
    query = store._db.query

    def recording(text: str, params=()):
        seen.append((text, tuple(params)))
        return query(text, params)

    monkeypatch.setattr(store._db, "query", recording)
    return seen


def test_positions_come_in_stream_order_in_keyset_pages_without_gold_or_other_models(
        store: AuditStore, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    store.ingest_many([item(f"r{k}", k, route=Route.AUTO_QC if k % 3 == 0 else Route.HUMAN) for k in range(5)], T0)
    add_gold(store, "g0", 100.0)  # model zip too, but gold: never in the stream
    store.ingest_many([item("o0", 200.0, model="other")], T0)
    store.ingest_many([item(f"r{k}", k) for k in range(5, 11)] + [item("r2", 2.0, version="v2")], T0)
    alice = add_users(store, "alice")[0]
    for _ in range(3):  # the first three items by queue order (HUMAN first, then id) are decided
        claim = store.claim(alice, 60, T0, model="zip")
        store.record_verdict(store.new_verdict_id(), claim.item_id, alice, VerdictKind.ACCEPT, None, T0 + 1)

    expected = sorted(store.items(model="zip", limit=100), key=lambda it: it.item_id)  # the display read, inputs and all
    assert len(expected) == 12 and not any(it.is_gold for it in expected)
    queries = recorded_queries(store, monkeypatch)
    positions = list(store.audit_positions("zip", page=5))
    assert positions == [ItemPosition(it.item_id, it.request_id, it.state == "done", it.route, it.qc_inclusion_prob)
                         for it in expected]
    assert [p.item_id for p in positions] == sorted(p.item_id for p in positions)
    assert sum(p.done for p in positions) == 3 and {p.route for p in positions} == {Route.HUMAN, Route.AUTO_QC}
    assert [p.request_id for p in positions].count("r2") == 2  # one item per version of the request
    # three pages of at most 5 rows, each after the last id of the one before: no OFFSET, no input column
    assert len(queries) == 3 and all("OFFSET" not in sql and "input" not in sql for sql, _ in queries)
    assert [params[1] for _, params in queries] == [-1, positions[4].item_id, positions[9].item_id]
    assert all(params[-1] == 5 for _, params in queries)

    # an item ingested while the pages are read comes once, at the end
    reading = store.audit_positions("zip", page=5)
    head = [next(reading) for _ in range(6)]
    store.ingest_many([item("r11", 11.0)], T0)
    assert [p.request_id for p in head + list(reading)] == [p.request_id for p in positions] + ["r11"]
    assert list(store.audit_positions("nobody")) == []
    with pytest.raises(ValueError, match="page"):
        list(store.audit_positions("zip", page=0))


def test_request_inputs_give_each_requests_lowest_id_non_gold_item_of_the_model(store: AuditStore) -> None:
    add_gold(store, "r1", 100.0, version="v0")  # gold, and first: never the request's input
    store.ingest_many([item("r1", 1.0, version="v2")], T0)  # r1's lowest-id real item: its v2 one
    store.ingest_many([item("r0", 0.0), item("r1", 11.0, version="v1"), item("r2", 2.0)], T0)
    store.ingest_many([item("r0", 99.0, model="other", version="o1")], T0)  # another model's item of r0
    inputs = store.request_inputs("zip", ["r1", "r0", "missing", "r1"])
    assert inputs == {"r0": wire(0.0), "r1": wire(1.0)}
    assert store.request_inputs("other", ["r0", "r1"]) == {"r0": wire(99.0)}
    assert store.request_inputs("zip", []) == {}
    # a bounded chunk per call: the caller never holds more inputs than that
    many = [f"x{k}" for k in range(INPUT_CHUNK + 1)]
    assert store.request_inputs("zip", many[:INPUT_CHUNK]) == {}
    with pytest.raises(ValueError, match="at most"):
        store.request_inputs("zip", many)


def test_label_rows_without_inputs_are_the_same_rows_less_the_input(store: AuditStore,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    store.ingest_many([item(f"r{k}", k, route=Route.AUTO_QC if k % 2 else Route.HUMAN) for k in range(6)], T0)
    alice = add_users(store, "alice")[0]
    for k, kind in enumerate((VerdictKind.ACCEPT, VerdictKind.CORRECT, VerdictKind.REJECT, VerdictKind.ACCEPT)):
        claim = store.claim(alice, 60, T0)
        store.record_verdict(store.new_verdict_id(), claim.item_id, alice, kind,
                             "54321" if kind is VerdictKind.CORRECT else None, T0 + k)
    full = list(store.labels("zip"))
    assert len(full) == 4 and all("input" in r for r in full)
    queries = recorded_queries(store, monkeypatch)
    bare = list(store.labels("zip", with_input=False))
    assert bare == [{k: v for k, v in r.items() if k != "input"} for r in full]
    assert all("input" not in r for r in bare) and all("i.input" not in sql for sql, _ in queries)


# --- one snapshot for every read of a run -----------------------------------------------------


@pytest.fixture
def other(store: AuditStore) -> Iterator[AuditStore]:
    """The same store opened again: its own connections, so its writes commit beside ``store``'s reads."""
    with open_store(store._db.url, StoreConfig(gold_rate=0.0), table_prefix=store._db.prefix, create=True) as s:
        yield s


def decide(store: AuditStore, auditor: User, n: int, now_s: float = T0) -> None:
    """The next ``n`` items by queue order get an accept from ``auditor``."""
    for k in range(n):
        claim = store.claim(auditor, 60, now_s + k, model="zip")
        store.record_verdict(store.new_verdict_id(), claim.item_id, auditor, VerdictKind.ACCEPT, None, now_s + k)


def certify_reads(store: AuditStore) -> tuple[Any, ...]:
    """What one certify run reads: verdicts, positions (pages of 2), inputs of some requests, gold."""
    return (list(store.labels("zip", with_input=False)), list(store.audit_positions("zip", page=2)),
            store.request_inputs("zip", ["r0", "r2", "r4", "r5", "r6"]), store.count_labels("zip"),
            store.gold_accuracy())


def test_reads_inside_a_snapshot_see_the_store_as_it_was_when_it_began(store: AuditStore, other: AuditStore) -> None:
    store.ingest_many([item(f"r{k}", k) for k in range(4)], T0)
    alice, bob = add_users(store, "alice", "bob")
    decide(store, alice, 2)  # r0, r1
    before = certify_reads(store)
    assert len(before[0]) == 2 and [p.done for p in before[1]] == [True, True, False, False]
    assert set(before[2]) == {"r0", "r2"}

    with store.read_snapshot():
        # committed by another connection after the snapshot began, before its first read
        other.ingest_many([item("r4", 4.0), item("r5", 5.0)], T0)
        decide(other, bob, 1, T0 + 10)  # r2: done, with a verdict
        assert certify_reads(store) == before
        # and between two pages of one read
        pages = store.audit_positions("zip", page=2)
        head = [next(pages) for _ in range(3)]
        other.ingest_many([item("r6", 6.0)], T0)
        decide(other, bob, 1, T0 + 20)  # r3
        assert head + list(pages) == before[1]
        assert certify_reads(store) == before

    verdicts, positions, inputs, count, _ = certify_reads(store)  # after it: all of it
    assert [r["request_id"] for r in verdicts] == ["r0", "r1", "r2", "r3"] and count == 4
    assert [(p.request_id, p.done) for p in positions] == [
        ("r0", True), ("r1", True), ("r2", True), ("r3", True), ("r4", False), ("r5", False), ("r6", False)]
    assert inputs == {"r0": wire(0.0), "r2": wire(2.0), "r4": wire(4.0), "r5": wire(5.0), "r6": wire(6.0)}


@pytest.mark.parametrize("backend", [p for p in BACKENDS if p.id == "postgres"])
def test_an_item_whose_ingest_commits_late_with_a_lower_id_is_in_no_read_of_the_snapshot(
        store: AuditStore, other: AuditStore) -> None:  # fmt: skip
    # PostgreSQL gives ids at insert and commits in any order (SQLite has one writer at a time):
    # keyset pages read in separate transactions would pass its id before it commits and miss it.
    store.ingest_many([item("r0", 0.0)], T0)
    late = other._db.write()
    late.__enter__()
    try:
        other.ingest_many([item("late", 9.0)], T0)  # in the open transaction: id taken, not committed
        store.ingest_many([item("r1", 1.0)], T0)  # a higher id, committed first
        with store.read_snapshot():
            first = [p.request_id for p in store.audit_positions("zip", page=1)]
            late.__exit__(None, None, None)
            late = None
            assert [p.request_id for p in store.audit_positions("zip", page=1)] == first == ["r0", "r1"]
            assert store.request_inputs("zip", ["late", "r1"]) == {"r1": wire(1.0)}
    finally:
        if late is not None:
            late.__exit__(None, None, None)
    assert [p.request_id for p in store.audit_positions("zip")] == ["r0", "late", "r1"]


def test_a_snapshot_pins_one_connection_for_its_block_only(store: AuditStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_backend, "POOL_WAIT_S", 0.3)  # a slot never given back fails fast, not in 60 s
    one = AuditStore(connect(store._db.url, store._db.prefix, max_connections=1))
    try:
        one.ingest_many([item("r0", 0.0)], T0)
        with one.read_snapshot():
            # every read of the block, paged ones and nested snapshots included, on the one connection
            with one.read_snapshot():
                assert [p.request_id for p in one.audit_positions("zip", page=1)] == ["r0"]
            assert one.request_inputs("zip", ["r0"]) == {"r0": wire(0.0)} and one._db.open_connections == 1
            refused: list[BaseException] = []  # another thread finds the only slot taken
            reader = threading.Thread(target=lambda: refused.extend(_raised(lambda: one.queue_depth())))
            reader.start()
            reader.join()
            assert len(refused) == 1 and isinstance(refused[0], StoreBusy)
            with pytest.raises(RuntimeError, match="write inside a read snapshot"):
                one.ingest_many([item("r1", 1.0)], T0)
        assert one.ingest_many([item("r1", 1.0)], T0) == [True]  # the slot is back, outside any transaction
        with pytest.raises(KeyError):
            with one.read_snapshot():
                raise KeyError("the block fails")
        assert one.queue_depth() == 2 and one._db.open_connections == 1
        with one._db.write():
            with pytest.raises(RuntimeError, match="inside a write"):
                with one.read_snapshot():
                    pass
    finally:
        one.close()


def _raised(call: Any) -> list[BaseException]:
    try:
        call()
    except BaseException as e:  # noqa: BLE001 - handed to the test thread
        return [e]
    return []
