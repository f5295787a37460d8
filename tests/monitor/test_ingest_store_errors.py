"""A store write that fails because of the store -- a dead pooled connection after a PostgreSQL
restart, SQLite's writer lock held past the busy timeout -- never dead-letters a good record: the
write is tried again and, if the store stays unusable, raised with nothing dead-lettered (nothing
committed: Kafka delivers the batch again). Only a record the store refuses for its content is
dead-lettered, alone (store.backend.record_error)."""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
import threading
from pathlib import Path

import pytest
from tests.monitor.test_service import T0, _record
from tests.store.store_factories import BACKENDS, POSTGRES_URL, audit_item, make_store

import monitor.service as service
import store.backend as backend
from auditstream import topics
from auditstream.settings import Settings
from auditstream.wire import DeadLetter
from monitor.service import ingest_batch
from store.backend import StoreBusy, StoreUnavailable, record_error

SETTINGS = Settings(topic_prefix="t")
AUDIT = SETTINGS.topic(topics.AUDIT)


def _records(*names: str) -> list:
    return [_record(AUDIT, audit_item(n).to_bytes(), i) for i, n in enumerate(names)]


def _retries(caplog: pytest.LogCaptureFixture) -> int:
    return sum("not because of a record" in r.getMessage() for r in caplog.records)


def test_record_error_tells_a_record_from_the_store() -> None:
    psycopg = pytest.importorskip("psycopg")
    for e in (ValueError("x"), TypeError("x"), OverflowError("x"), UnicodeEncodeError("utf-8", "\ud800", 0, 1, "x"),
              sqlite3.IntegrityError("x"), sqlite3.DataError("x"), psycopg.DataError("x"), psycopg.IntegrityError("x"),
              psycopg.errors.NumericValueOutOfRange("x"),
              # nobody foresaw it, on the way from one record to the store: that record's dead
              # letter, not a monitor that stops on it at every restart
              RuntimeError("x"), KeyError("x"), AttributeError("x"), RecursionError("x")):
        assert record_error(e), e
    for e in (sqlite3.OperationalError("database is locked"), sqlite3.ProgrammingError("closed"),
              sqlite3.DatabaseError("file is not a database"), psycopg.OperationalError("x"),
              psycopg.InterfaceError("x"), psycopg.errors.AdminShutdown("x"), psycopg.errors.SerializationFailure("x"),
              psycopg.ProgrammingError("x"), psycopg.InternalError("x"), StoreBusy(10, 60.0),
              StoreUnavailable("sqlite:///x.db", "gone"), ConnectionResetError(), OSError("disk")):
        assert not record_error(e), e


@pytest.mark.postgres
def test_after_the_server_ended_the_pooled_sessions_every_item_is_stored(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    """The server ends every idle session of the pool (a restart, a failover, idle_session_timeout;
    here pg_terminate_backend on this store's own sessions): the next batch meets a dead connection.
    It used to dead-letter every good item (each retry alone met another dead connection, the trivial
    write a fresh one); now the pool drops the dead ones and one retry stores them all."""
    psycopg = pytest.importorskip("psycopg")
    caplog.set_level(logging.WARNING, logger="monitor.service")
    with make_store("postgres", tmp_path) as store:
        db = store._db
        barrier = threading.Barrier(4)

        def warm() -> None:  # four connections at once: four idle in the pool afterwards
            with db.write() as cur:
                barrier.wait()
                cur.one("SELECT 1")

        threads = [threading.Thread(target=warm) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        pids = [cx.info.backend_pid for cx in db._idle]
        assert len(pids) == 4
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            for pid in pids:  # only this store's own sessions
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        letters: list[str] = []
        results = ingest_batch(store, SETTINGS, _records("good-0", "good-1", "good-2"), T0,
                               on_dead_letter=letters.append)
        assert results == [[], [], []] and letters == []
        assert store.queue_depth() == 3
        assert _retries(caplog) == 1  # one restart costs one retry, not one per pooled connection


def test_a_writer_lock_held_past_the_busy_timeout_dead_letters_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Another writer holds SQLite's lock past the busy timeout, then lets go: the batch is written
    on a later try, every item stored (it used to dead-letter them all when the lock was let go
    before the trivial write). Held for good: the error is raised, nothing dead-lettered."""
    monkeypatch.setattr(backend, "SQLITE_BUSY_TIMEOUT_S", 0.05)
    caplog.set_level(logging.WARNING, logger="monitor.service")
    with make_store("sqlite", tmp_path) as store:
        other = sqlite3.connect(store.location.split(" ")[0], isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        waits: list[float] = []
        release_at = [2]

        def sleep(s: float) -> None:  # the other writer lets go during the second wait
            waits.append(s)
            if len(waits) == release_at[0]:
                other.execute("COMMIT")

        monkeypatch.setattr(service, "_sleep", sleep)
        letters: list[str] = []
        results = ingest_batch(store, SETTINGS, _records("a", "b", "c"), T0, on_dead_letter=letters.append)
        assert results == [[], [], []] and letters == [] and store.queue_depth() == 3
        assert waits == list(service.STORE_RETRY_DELAYS_S[:2]) and _retries(caplog) == 2

        other.execute("BEGIN IMMEDIATE")  # now held for good
        waits.clear()
        release_at[0] = 0
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            ingest_batch(store, SETTINGS, _records("d", "e"), T0, on_dead_letter=letters.append)
        assert letters == [] and len(waits) == len(service.STORE_RETRY_DELAYS_S)
        other.execute("ROLLBACK")
        other.close()
        assert store.queue_depth() == 3


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_an_item_the_database_refuses_is_dead_lettered_and_its_neighbours_stored(
        backend_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A record the database itself refuses for its content (a step no integer column takes: the
    wire refuses it now, so it is put in past the decoder) is dead-lettered alone; no retry."""
    monkeypatch.setattr(service, "_sleep", lambda s: pytest.fail("a record's error is not retried"))
    with make_store(backend_name, tmp_path) as store:
        real = store.ingest_many

        def ingest_many(items, now_s):  # noqa: ANN001, ANN202 - the real write, of one item made bad
            bad = [dataclasses.replace(i, prediction=dataclasses.replace(i.prediction, step=2**70))
                   if i.prediction.request_id == "bad" else i for i in items]
            return real(bad, now_s)

        monkeypatch.setattr(store, "ingest_many", ingest_many)
        records = _records("good-0", "bad", "good-2")
        letters: list[str] = []
        results = ingest_batch(store, SETTINGS, records, T0, on_dead_letter=letters.append)
        assert [len(r) for r in results] == [0, 1, 0] and letters == ["processing_failed"]
        letter = DeadLetter.from_bytes(results[1][0].value)
        assert letter.reason == "processing_failed" and letter.value == records[1].value
        assert store.queue_depth() == 2
