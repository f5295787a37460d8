"""The store's connections stay bounded however many threads use it, on SQLite and PostgreSQL.

The dashboard runs every Streamlit rerun (about one a second per open tab) on a new thread; a
connection per thread leaked one per rerun until PostgreSQL's ``max_connections`` ran out. Here
short-lived threads use one store, one after another and many at once, and the connections the
*server* (or the OS, for SQLite's files) sees open stay within the pool's bound.
"""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path
from typing import Iterator

import pytest
from tests.store.store_factories import POSTGRES_URL, postgres_unavailable

from store import AuditStore, open_store
from store import backend as backend_module
from store.accounts import Role, User

THREADS = 40  # more than the pool's bound (10): a connection per thread would show


def _open(backend: str, tmp_path: Path) -> tuple[AuditStore, str]:
    if backend == "sqlite":
        path = tmp_path / "audit.db"
        return open_store(f"sqlite:///{path}", create=True), str(path)
    why = postgres_unavailable()
    if why:
        pytest.skip(why)
    tag = f"pooltest_{uuid.uuid4().hex[:10]}"  # counts this store's sessions only, whatever else uses the server
    return open_store(f"{POSTGRES_URL}?application_name={tag}", table_prefix=f"t{uuid.uuid4().hex[:12]}_",
                      create=True), tag


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def opened(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[AuditStore, str, str]]:
    store, tag = _open(request.param, tmp_path)
    try:
        yield store, request.param, tag
    finally:
        store.drop_tables()
        store.close()


def server_side_connections(backend: str, tag: str) -> int:
    """Connections open as the server (PostgreSQL) or the OS (SQLite's database file) sees them."""
    if backend == "sqlite":
        fds = Path("/proc/self/fd")
        return sum(1 for fd in fds.iterdir() if _target(fd) == tag)
    import psycopg

    with psycopg.connect(POSTGRES_URL, autocommit=True) as cx:
        (n,) = cx.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (tag,)).fetchone()
    return int(n)


def _target(fd: Path) -> str | None:
    try:
        return os.readlink(fd)
    except OSError:
        return None


def _use(store: AuditStore, errors: list) -> None:
    try:
        store.queue_depth()  # a read
        store.accounts.get("alice")
        store.renew(1, User("alice", Role.AUDITOR), 60.0, 0.0)  # a write transaction
    except Exception as e:  # noqa: BLE001 - any error fails the test
        errors.append(e)


def test_short_lived_threads_one_after_another_leave_no_connection_behind(opened) -> None:
    store, backend, tag = opened
    store.accounts.add_user("alice", "a long enough password", "auditor")
    errors: list = []
    for _ in range(THREADS):  # a Streamlit tab's reruns: each on a new thread that then ends
        thread = threading.Thread(target=_use, args=(store, errors))
        thread.start()
        thread.join()
    assert errors == []
    assert server_side_connections(backend, tag) <= THREADS // 4  # not one per thread that ever ran
    assert server_side_connections(backend, tag) <= store._db.open_connections <= backend_module.POOL_IDLE


def test_many_threads_at_once_share_at_most_max_connections(opened) -> None:
    store, backend, tag = opened
    store.accounts.add_user("alice", "a long enough password", "auditor")
    errors: list = []
    start = threading.Barrier(THREADS)
    peak = [0]

    def run() -> None:
        start.wait()
        _use(store, errors)
        seen = server_side_connections(backend, tag) if backend == "sqlite" else store._db.open_connections
        peak[0] = max(peak[0], seen)

    threads = [threading.Thread(target=run) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert server_side_connections(backend, tag) <= THREADS // 4
    assert peak[0] <= store._db.max_connections
    assert store._db.open_connections <= backend_module.POOL_IDLE
    # SQLite keeps a closed connection's file open while another holds a lock on it (POSIX
    # locks are per process) and reuses it for the next: bounded, but not by the idle count.
    assert server_side_connections(backend, tag) <= store._db.max_connections


def test_a_broken_connection_is_discarded_and_the_next_call_reconnects(tmp_path: Path) -> None:
    """A terminated backend (a server restart, an admin's kill) fails the call in flight only."""
    why = postgres_unavailable()
    if why:
        pytest.skip(why)
    import psycopg

    store, tag = _open("postgres", tmp_path)
    try:
        assert store.queue_depth() == 0
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", (tag,))
        with pytest.raises(psycopg.OperationalError):
            store.queue_depth()  # the call on the killed connection fails...
        assert store.queue_depth() == 0  # ...and the next one gets a fresh connection
        assert store._db.open_connections == 1
    finally:
        store.drop_tables()
        store.close()


def test_close_closes_idle_connections_and_the_store_reopens_on_use(opened) -> None:
    store, backend, tag = opened
    assert store.queue_depth() == 0
    assert server_side_connections(backend, tag) >= 1
    store.close()
    assert store._db.open_connections == 0
    assert store.queue_depth() == 0  # still usable (the fixture drops the tables afterwards)


def test_max_connections_must_be_a_positive_integer(tmp_path: Path) -> None:
    from auditstream.errors import ConfigError

    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="max_connections"):
            backend_module.connect(f"sqlite:///{tmp_path / 'x.db'}", max_connections=bad)


def test_a_new_sqlite_store_and_its_folder_are_the_owners_alone(tmp_path) -> None:
    """Review 2026-12-04: the state folder was made 0755 and audit.db 0644, so any local user could
    read the dashboard's password hashes and every audited input. A folder and a file the store
    creates are now 0700 and 0600 (SQLite gives -wal and -shm the database's mode); an existing
    file keeps the mode its owner gave it."""
    import os
    import stat

    from store import open_store

    db = tmp_path / "new" / "state" / "audit.db"
    with open_store(f"sqlite:///{db}", create=True) as store:
        store.queue_depth()  # a read opens the WAL: its files exist now
        for path in (db, db.with_name("audit.db-wal"), db.with_name("audit.db-shm")):
            if path.exists():
                assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, (path, oct(path.stat().st_mode))
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700
    shared = tmp_path / "shared.db"
    shared.touch()
    os.chmod(shared, 0o640)
    with open_store(f"sqlite:///{shared}", create=True):
        pass
    assert stat.S_IMODE(shared.stat().st_mode) == 0o640


def test_the_test_pki_writes_private_keys_for_the_owner_only(tmp_path) -> None:
    import stat

    from stack.pki import make_pki

    pki = make_pki(tmp_path / "pki")
    keys = sorted((tmp_path / "pki").glob("*.key"))
    assert keys and pki.server_key in keys
    assert all(stat.S_IMODE(k.stat().st_mode) == 0o600 for k in keys)


def test_the_test_pki_tightens_a_key_file_left_readable_by_an_earlier_run(tmp_path) -> None:
    import os
    import stat

    from stack.pki import make_pki

    make_pki(tmp_path / "pki")
    for key in (tmp_path / "pki").glob("*.key"):
        os.chmod(key, 0o644)  # as an earlier release left them
    make_pki(tmp_path / "pki")
    assert all(stat.S_IMODE(k.stat().st_mode) == 0o600 for k in (tmp_path / "pki").glob("*.key"))
