"""The two databases behind the audit store: SQLite (one machine) and PostgreSQL (many).

The store's SQL is written once, with ``?`` parameter markers and ``{p}`` for the table prefix; this
module supplies what really differs between the two:

* connections: one per thread (sqlite3 and psycopg connections must not be shared by threads
  running statements at once), all closed by :meth:`Database.close`;
* write transactions: SQLite ``BEGIN IMMEDIATE`` takes the single writer lock up front, so a
  read-then-write never fails half way with "database is locked"; PostgreSQL runs READ COMMITTED
  and the store locks the rows it changes (``FOR UPDATE [SKIP LOCKED]``);
* column types in the DDL (identity column, float width, bytes).

SQLite runs in WAL mode (readers never block the writer) with a busy timeout, so concurrent
auditors queue for the writer lock instead of seeing lock errors.
"""

from __future__ import annotations

import abc
import re
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from auditstream.errors import ConfigError
from auditstream.settings import redact_url

SQLITE_BUSY_TIMEOUT_S = 30.0
_PREFIX = re.compile(r"^[a-z][a-z0-9_]{0,30}$|^$")


class Database(abc.ABC):
    """One store database: per-thread connections, read and write transactions."""

    kind: str  # "sqlite" or "postgresql"
    # Suffix of the SELECT that picks an item to claim: PostgreSQL skips rows another auditor is
    # claiming right now instead of waiting for them; SQLite has one writer at a time anyway.
    claim_lock = ""
    row_lock = ""
    types: dict[str, str]

    def __init__(self, url: str, prefix: str) -> None:
        if not _PREFIX.match(prefix):
            raise ConfigError("table_prefix", prefix, "empty or [a-z][a-z0-9_]* of at most 31 characters")
        self.url, self.prefix = url, prefix
        self._local = threading.local()
        self._all: list[Any] = []
        self._lock = threading.Lock()

    def sql(self, text: str) -> str:
        """The statement with the table prefix filled in and this driver's parameter markers."""
        return text.replace("{p}", self.prefix)

    def _connection(self) -> Any:
        cx = getattr(self._local, "cx", None)
        if cx is None:
            cx = self._connect()
            self._local.cx = cx
            with self._lock:
                self._all.append(cx)
        return cx

    @abc.abstractmethod
    def _connect(self) -> Any:
        """A new connection for the calling thread."""

    @abc.abstractmethod
    def write(self) -> Any:
        """Context manager of a write transaction yielding a :class:`Cursor`: committed when the
        block ends, rolled back if it raises."""

    @abc.abstractmethod
    def query(self, text: str, params: Sequence[Any] = ()) -> list[tuple]:
        """One read statement in its own (autocommit) transaction."""

    @abc.abstractmethod
    def columns(self, cur: "Cursor", table: str) -> set[str]:
        """The column names of ``{p}<table>`` (for the schema upgrade), read inside ``cur``'s transaction."""

    def close(self) -> None:
        with self._lock:
            for cx in self._all:
                try:
                    cx.close()
                except Exception:  # closing a connection another thread broke must not mask the rest
                    pass
            self._all.clear()
        self._local = threading.local()


class Cursor:
    """What a transaction body uses: statements with ``?`` parameter markers, prefix filled in."""

    def __init__(self, db: Database, raw: Any) -> None:
        self._db, self._raw = db, raw

    def run(self, text: str, params: Sequence[Any] = ()) -> int:
        """Execute; returns the number of rows changed."""
        self._raw.execute(self._db.sql(text), tuple(params))
        return self._raw.rowcount

    def one(self, text: str, params: Sequence[Any] = ()) -> tuple | None:
        self._raw.execute(self._db.sql(text), tuple(params))
        return self._raw.fetchone()

    def all(self, text: str, params: Sequence[Any] = ()) -> list[tuple]:
        self._raw.execute(self._db.sql(text), tuple(params))
        return list(self._raw.fetchall())


class SQLiteDatabase(Database):
    kind = "sqlite"
    types = {"id": "INTEGER PRIMARY KEY", "float": "REAL", "bigint": "INTEGER"}

    def __init__(self, url: str, prefix: str) -> None:
        super().__init__(url, prefix)
        path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else url.removeprefix("sqlite://")
        if not path:
            raise ConfigError("store_url", redact_url(url), "'sqlite:///path/to/audit.db'")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions; this module says BEGIN itself.
        cx = sqlite3.connect(self.path, timeout=SQLITE_BUSY_TIMEOUT_S, isolation_level=None)
        cx.execute("PRAGMA journal_mode=WAL")
        cx.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across app crashes
        cx.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        return cx

    @contextmanager
    def write(self) -> Iterator[Cursor]:
        cx = self._connection()
        cur = cx.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            yield Cursor(self, cur)
        except BaseException:
            if cx.in_transaction:  # SQLite already rolled back after some errors
                cur.execute("ROLLBACK")
            raise
        else:
            cur.execute("COMMIT")
        finally:
            cur.close()

    def query(self, text: str, params: Sequence[Any] = ()) -> list[tuple]:
        cur = self._connection().execute(self.sql(text), tuple(params))  # WAL: reads never wait
        try:
            return list(cur.fetchall())
        finally:
            cur.close()

    def columns(self, cur: Cursor, table: str) -> set[str]:
        return {row[1] for row in cur.all(f"PRAGMA table_info({{p}}{table})")}


class PostgresDatabase(Database):
    kind = "postgresql"
    claim_lock = " FOR UPDATE SKIP LOCKED"
    row_lock = " FOR UPDATE"
    types = {"id": "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY", "float": "DOUBLE PRECISION", "bigint": "BIGINT"}

    def __init__(self, url: str, prefix: str) -> None:
        super().__init__(url, prefix)
        import psycopg  # imported here: a SQLite-only install needs no PostgreSQL driver

        self._psycopg = psycopg

    def sql(self, text: str) -> str:
        return super().sql(text).replace("?", "%s")

    def _connect(self) -> Any:
        return self._psycopg.connect(self.url, autocommit=True)

    @contextmanager
    def write(self) -> Iterator[Cursor]:
        cx = self._connection()
        with cx.transaction():
            with cx.cursor() as cur:
                yield Cursor(self, cur)

    def query(self, text: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._connection().cursor() as cur:
            cur.execute(self.sql(text), tuple(params))
            return list(cur.fetchall())

    def columns(self, cur: Cursor, table: str) -> set[str]:
        # Unquoted identifiers are folded to lower case; the prefix is [a-z0-9_] already.
        rows = cur.all(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = ?",
            (f"{self.prefix}{table}",),
        )
        return {row[0] for row in rows}


def connect(url: str, prefix: str = "") -> Database:
    """A :class:`Database` for ``sqlite:///path`` or ``postgresql://user@host:port/db``."""
    if url.startswith("sqlite:"):
        return SQLiteDatabase(url, prefix)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresDatabase(url, prefix)
    raise ConfigError("store_url", redact_url(url), "'sqlite:///path.db' or 'postgresql://user@host:port/db'")
