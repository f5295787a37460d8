"""The reads ``certify --from-audits`` makes (stack/recertify.py), each test on SQLite and on
PostgreSQL: the items' positions without inputs (stream order, keyset pages, gold items and other
models left out), the inputs of a chunk of requests (each request's lowest-id item), and label rows
without inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from tests.store.store_factories import add_users, audit_item, make_store

from auditstream.wire import AuditItem, Route, VerdictKind, encode_input
from store import AuditStore, ItemPosition, StoreConfig
from store.accounts import Role
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
