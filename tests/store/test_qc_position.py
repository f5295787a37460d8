"""The QC stream's position (``store.qc_position``): reads between positions cover the stream once,
and a PostgreSQL store of schema version 3 gains ``ingest_xid`` in place, its items final. The
late-committing ingest itself is in tests/monitor/test_qc_order.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.store.store_factories import BACKENDS, audit_item, make_store

from auditstream.wire import Route
from store import open_store
from store.schema import SCHEMA_VERSION

T0 = 30_000.0


def _qc(i: int):
    return audit_item(f"q{i}", Route.AUTO_QC, confidence=0.9, inclusion_prob=0.5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_reads_between_positions_cover_the_stream_once(backend: str, tmp_path: Path) -> None:
    with make_store(backend, tmp_path) as store:
        positions = [store.qc_position()]
        for batch in ([_qc(0), _qc(1)], [audit_item("h0")], [_qc(2)], [_qc(0)], [_qc(3), _qc(4)]):
            store.ingest_many(batch, T0)  # a deferred item and a redelivery between the samples
            positions.append(store.qc_position())
        assert positions == sorted(positions)
        pieces = [s.request_id for a, b in zip(positions, positions[1:]) for s in store.qc_stream(after=a, upto=b)]
        assert pieces == [s.request_id for s in store.qc_stream(upto=positions[-1])] == [f"q{i}" for i in range(5)]
        assert list(store.qc_stream(after=positions[-1], upto=store.qc_position())) == []


@pytest.mark.postgres
def test_a_version_3_postgres_store_gains_the_ingest_xid_in_place(tmp_path: Path) -> None:
    with make_store("postgres", tmp_path) as store:
        with store._db.write() as cur:  # what a version-3 store looks like
            cur.run("ALTER TABLE {p}items DROP COLUMN ingest_xid")
            cur.run("UPDATE {p}meta SET value = '3' WHERE key = 'schema_version'")
        store.ingest_many([_qc(0), _qc(1)], T0)
        with open_store(store._db.url, table_prefix=store._db.prefix, create=True) as reopened:
            assert reopened._db.query("SELECT value FROM {p}meta WHERE key = 'schema_version'") == [(str(SCHEMA_VERSION),)]
            reopened.ingest_many([_qc(2)], T0)
            assert [s.request_id for s in reopened.qc_stream(upto=reopened.qc_position())] == ["q0", "q1", "q2"]
