"""The two databases behind the audit store: SQLite (one machine) and PostgreSQL (many).

The store's SQL is written once, with ``?`` parameter markers and ``{p}`` for the table prefix; this
module supplies what really differs between the two:

* connections: a bounded pool. A read or a write transaction checks a connection out for its
  own duration (a nested use on the same thread gets the same connection), then gives it back;
  at most ``max_connections`` are open at once (more callers wait, then get
  :class:`StoreBusy`) and at most :data:`POOL_IDLE` idle ones are kept. Connections are never
  tied to a thread: the dashboard runs every Streamlit rerun on a new thread, and a connection
  per thread leaked one per rerun until the server's ``max_connections`` ran out. A connection
  that broke (a server restart, a terminated backend) is discarded when given back, and the idle
  ones with it (they went with the same server), so one restart costs one failed call, not one
  per pooled connection; :meth:`Database.close` closes them all;
* what a failed write was about (:func:`record_error`): the record it was given (its content:
  a caller may set that record aside) or the store (down, locked, a dead connection: the caller
  must not blame the record, and retries or stops);
* write transactions: SQLite ``BEGIN IMMEDIATE`` takes the single writer lock up front, so a
  read-then-write never fails half way with "database is locked"; PostgreSQL runs READ COMMITTED
  and the store locks the rows it changes (``FOR UPDATE [SKIP LOCKED]``);
* read snapshots (:meth:`Database.read_snapshot`): every read on the thread inside the block runs
  in one read-only transaction on one pinned connection, so reads made one after the other see
  the database at one moment (SQLite: a deferred ``BEGIN`` whose first read pins the WAL
  snapshot; PostgreSQL: ``REPEATABLE READ READ ONLY``); the connection goes back to the pool
  when the block ends;
* column types in the DDL (identity column, float width, bytes).

SQLite runs in WAL mode (readers never block the writer) with a busy timeout, so concurrent
auditors queue for the writer lock instead of seeing lock errors.
"""

from __future__ import annotations

import abc
import os
import re
import sqlite3
import stat
import threading
import urllib.parse
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence
from urllib.parse import urlsplit

from auditstream.errors import AuditstreamError, ConfigError
from auditstream.settings import redact_url

SQLITE_BUSY_TIMEOUT_S = 30.0
POOL_MAX_OPEN = 10  # connections of one store open at once (default of ``connect``)
POOL_IDLE = 4  # idle connections kept for the next caller; more are closed when given back
POOL_WAIT_S = 60.0  # how long a caller waits for a free connection before StoreBusy
POSTGRES_CONNECT_TIMEOUT_S = 10  # unless the URL sets connect_timeout


SERVER_ADVICE = ("check that the database server is up and the URL (host, port, database, user) is right, "
               "or set AUDITSTREAM_STORE_URL")
FILE_ADVICE = ("check that the user running this may enter the folders on the path and read and write the file "
             "(and create files in its folder), or set --store-url / AUDITSTREAM_STORE_URL to another store")


class StoreUnavailable(AuditstreamError, ConnectionError):
    """The audit store's database could not be reached or refused the connection (a SQLite file
    or folder this user may not read or write included)."""

    def __init__(self, url: str, detail: str, advice: str = SERVER_ADVICE) -> None:
        self.url, self.detail = redact_url(url), detail
        super().__init__(f"audit store at {self.url} unavailable: {detail}; {advice}")


class StoreMissing(AuditstreamError, LookupError):
    """A command that only reads (or changes what is there) was pointed at a store that does not
    exist: it never creates one, so a mistyped path is refused instead of served empty."""

    def __init__(self, where: str, detail: str = "", sqlite: bool = True) -> None:
        self.where, self.detail = where, detail
        check = ("check --store-url or AUDITSTREAM_STORE_URL -- sqlite:///a/b.db is a/b.db under the working "
                 "directory, an absolute path needs four slashes: sqlite:////a/b.db" if sqlite else
                 "check --store-url or AUDITSTREAM_STORE_URL (the database, and the table prefix if one is used)")
        super().__init__(f"no audit store at {where}{detail}; nothing was created (auditstream monitor creates "
                         f"a store, or users add); {check}")


class StoreBusy(AuditstreamError):
    """Every pooled connection of the store stayed in use for longer than the wait."""

    def __init__(self, max_open: int, waited_s: float) -> None:
        self.max_open, self.waited_s = max_open, waited_s
        super().__init__(f"all {max_open} connections of the audit store stayed in use for {waited_s:.0f} s; "
                         "look for a stuck transaction, or open the store with more connections")


def record_error(e: BaseException) -> bool:
    """Whether a store call failed because of the values it was given -- the record's content,
    which will fail again however often it is retried -- rather than because of the store.

    False for what is about the store, all of it named here: the store's own
    :class:`StoreBusy`, :class:`StoreUnavailable` and :class:`StoreMissing`, an ``OSError`` (a
    disk, a socket), and every error of the database drivers but their data and constraint
    errors -- sqlite3's ``OperationalError`` ("database is locked" after the busy timeout, "disk
    I/O error"), ``ProgrammingError`` (a closed connection) and the rest, psycopg's
    ``OperationalError`` (a terminated or restarted server, a serialization failure, a deadlock),
    ``InterfaceError``, ``ProgrammingError`` and ``InternalError``: the same record succeeds once
    the store is back, so a caller must never set it aside for those. True for everything else:
    the drivers' ``DataError`` and ``IntegrityError`` (a NUL character, a number out of range, a
    constraint the value breaks), the store's own checks (``ValueError``, ``TypeError``,
    ``OverflowError``: an int over 64 bits) and any error nobody foresaw on the way from the
    record to the store -- that one record's dead letter (its bytes kept, replayable once fixed),
    where calling it the store's would stop the monitor on it at every restart."""
    if isinstance(e, (StoreBusy, StoreUnavailable, StoreMissing, OSError)):
        return False
    if isinstance(e, sqlite3.Error):
        return isinstance(e, (sqlite3.DataError, sqlite3.IntegrityError))
    try:
        import psycopg
    except ImportError:  # a SQLite-only install raises no psycopg error
        return True
    if isinstance(e, psycopg.Error):
        return isinstance(e, (psycopg.DataError, psycopg.IntegrityError))
    return True


_PREFIX = re.compile(r"\A(?:[a-z][a-z0-9_]{0,30})?\Z")  # \Z: "$" would let a final "\n" through


class Database(abc.ABC):
    """One store database: a bounded connection pool, read and write transactions."""

    kind: str  # "sqlite" or "postgresql"
    # Suffix of the SELECT that picks an item to claim: PostgreSQL skips rows another auditor is
    # claiming right now instead of waiting for them; SQLite has one writer at a time anyway.
    claim_lock = ""
    row_lock = ""
    types: dict[str, str]

    def __init__(self, url: str, prefix: str, max_connections: int = POOL_MAX_OPEN) -> None:
        if not _PREFIX.match(prefix):
            raise ConfigError("table_prefix", prefix, "empty or [a-z][a-z0-9_]* of at most 31 characters")
        if isinstance(max_connections, bool) or not isinstance(max_connections, int) or max_connections < 1:
            raise ConfigError("max_connections", max_connections, "an integer >= 1")
        self.url, self.prefix, self.max_connections = url, prefix, max_connections
        self._held = threading.local()  # the connection this thread has checked out, while it has one
        self._idle: list[Any] = []
        self._open: dict[int, tuple[Any, int]] = {}  # id -> (connection, generation of close() it belongs to)
        self._generation = 0
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_connections)

    @property
    def location(self) -> str:
        """Where the store is, for people (never a password): an absolute path for SQLite."""
        return redact_url(self.url) + (f" (tables {self.prefix}*)" if self.prefix else "")

    def sql(self, text: str) -> str:
        """The statement with the table prefix filled in and this driver's parameter markers."""
        return text.replace("{p}", self.prefix)

    @property
    def open_connections(self) -> int:
        """Connections open now, in use or idle (at most ``max_connections``)."""
        with self._lock:
            return len(self._open)

    @contextmanager
    def read_snapshot(self) -> Iterator[None]:
        """Every read (:meth:`query`) this thread makes inside the block sees the database as it
        was when the block began: one read-only transaction on one connection, checked out for
        the block and given back when it ends. Rows another connection commits meanwhile are
        seen after the block, not in it. A write inside the block raises (a snapshot never
        writes); a snapshot nested in this thread's snapshot is that snapshot. Holding one keeps
        old row versions alive (PostgreSQL's vacuum, SQLite's WAL checkpoint) for its length:
        keep it to one command's reads."""
        if getattr(self._held, "cx", None) is not None:
            if getattr(self._held, "snapshot", False):
                yield
                return
            # a READ COMMITTED write sees each statement's own moment: no snapshot to give
            raise RuntimeError("a read snapshot cannot start inside a write transaction")
        with self._connection() as cx:
            self._begin_snapshot(cx)
            self._held.snapshot = True
            try:
                yield
            finally:
                self._held.snapshot = False
                self._end_snapshot(cx)

    def _refuse_write_in_snapshot(self) -> None:
        if getattr(self._held, "snapshot", False):
            raise RuntimeError("a write inside a read snapshot: end the snapshot (read_snapshot) first")

    @abc.abstractmethod
    def _begin_snapshot(self, cx: Any) -> None:
        """Start the read-only transaction on ``cx`` and fix its snapshot now (not at its first read)."""

    @abc.abstractmethod
    def _end_snapshot(self, cx: Any) -> None:
        """End the snapshot's transaction (a broken connection is discarded when given back)."""

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        """A connection for the duration of the block; nested blocks on one thread share it."""
        held = getattr(self._held, "cx", None)
        if held is not None:  # a read inside this thread's write: the same connection and transaction
            yield held
            return
        if not self._slots.acquire(timeout=POOL_WAIT_S):
            raise StoreBusy(self.max_connections, POOL_WAIT_S)
        try:
            cx = self._checkout()
            self._held.cx = cx
            try:
                yield cx
            finally:
                self._held.cx = None
                self._checkin(cx)
        finally:
            self._slots.release()

    def _checkout(self) -> Any:
        with self._lock:
            while self._idle:
                cx = self._idle.pop()
                if self._reusable(cx):
                    return cx
                self._discard_locked(cx)
            generation = self._generation
        cx = self._connect()  # outside the lock: connecting may take a while
        with self._lock:
            self._open[id(cx)] = (cx, generation)
        return cx

    def _checkin(self, cx: Any) -> None:
        with self._lock:
            _, generation = self._open.get(id(cx), (cx, -1))
            if generation == self._generation and len(self._idle) < POOL_IDLE and self._reusable(cx):
                self._idle.append(cx)
                return
            broken = self._broken(cx)  # before closing it: a closed connection is not "broken"
            self._discard_locked(cx)
            if broken:
                # Its server session ended (a restart, a failover, idle_session_timeout,
                # pg_terminate_backend): the idle ones most likely went with it, and a connection
                # does not know it is dead until it is used. Without this each of the next calls
                # took one dead connection and failed in turn.
                idle, self._idle = self._idle, []
                for other in idle:
                    self._discard_locked(other)

    def _broken(self, cx: Any) -> bool:
        """Whether ``cx`` lost its server (only a client/server database can)."""
        return False

    def _discard_locked(self, cx: Any) -> None:
        self._open.pop(id(cx), None)
        try:
            cx.close()
        except Exception:  # noqa: BLE001 - a broken connection may fail to close; it is gone either way
            pass

    @abc.abstractmethod
    def _connect(self) -> Any:
        """A new connection (used by one thread at a time)."""

    @abc.abstractmethod
    def _reusable(self, cx: Any) -> bool:
        """Whether a connection given back is healthy and outside any transaction."""

    @abc.abstractmethod
    def write(self) -> Any:
        """Context manager of a write transaction yielding a :class:`Cursor`: committed when the
        block ends, rolled back if it raises."""

    @abc.abstractmethod
    def query(self, text: str, params: Sequence[Any] = ()) -> list[tuple]:
        """One read statement in its own (autocommit) transaction, or in this thread's
        :meth:`read_snapshot` (or write) when it holds one."""

    @abc.abstractmethod
    def columns(self, cur: "Cursor", table: str) -> set[str]:
        """The column names of ``{p}<table>`` (for the schema upgrade), read inside ``cur``'s transaction."""

    def close(self) -> None:
        """Close the idle connections now and those in use when they are given back; the
        database stays usable (a later call opens a new connection)."""
        with self._lock:
            self._generation += 1
            idle, self._idle = self._idle, []
            for cx in idle:
                self._discard_locked(cx)


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


def _create_private(path: Path) -> None:
    """Create ``path`` empty with mode 0600 unless it exists (then its mode stands)."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        pass


def sqlite_path(url: str) -> Path:
    """The file of a SQLite store URL, spelt as SQLAlchemy does: ``sqlite:///`` then the path, so
    ``sqlite:///audit.db`` is ``audit.db`` under the working directory and ``sqlite:////var/audit.db``
    (four slashes) is ``/var/audit.db``. Any other spelling (``sqlite:/var/audit.db``,
    ``sqlite://audit.db``, a ``?query``) is refused showing the spellings it may have meant: it
    used to become a file somewhere else (``sqlite:/tmp/m.db`` made a folder named ``sqlite:``).
    So are the names SQLite does not read as a file: ``:memory:`` (a database of one connection
    that is gone when it closes, reported as a file that was never written) and a relative path
    that starts with ``file:`` (a URI to SQLite: ``file:x.db`` wrote ``x.db`` beside an empty
    ``file:x.db``)."""
    rest = url.removeprefix("sqlite:")
    if rest.startswith("///") and len(rest) > 3 and "?" not in rest:
        path = rest[3:]
        if path == ":memory:":
            raise ConfigError("store_url", redact_url(url), "a file: an in-memory database is not a store (each "
                              "connection would get its own, and it is gone when they close); write "
                              "'sqlite:///audit.db' (under the working directory) or 'sqlite:////absolute/audit.db'")
        if path.lower().startswith("file:"):
            name = path[len("file:"):].lstrip("/") or "audit.db"
            raise ConfigError("store_url", redact_url(url), f"a path, not a SQLite URI: SQLite reads a name starting "
                              f"with 'file:' as a URI; write 'sqlite:///{name}' (the file {Path(name).absolute()}), "
                              f"or for a file really named so its absolute path, 'sqlite:///{Path(path).absolute()}'")
        return Path(path)
    path = rest.lstrip("/").split("?", 1)[0]
    if not path:
        expected = "'sqlite:///relative/path.db' or, for an absolute path, 'sqlite:////absolute/path.db'"
    else:
        expected = (f"'sqlite:////{path}' (the file /{path}) or 'sqlite:///{path}' (the file "
                    f"{Path(path).absolute()}): three slashes, then the path, which starts with a fourth when absolute")
        if "?" in rest:
            expected += "; no ?query parameters"
    raise ConfigError("store_url", redact_url(url), expected)


class SQLiteDatabase(Database):
    kind = "sqlite"
    types = {"id": "INTEGER PRIMARY KEY", "float": "REAL", "bigint": "INTEGER"}

    def __init__(self, url: str, prefix: str, max_connections: int = POOL_MAX_OPEN, create: bool = True) -> None:
        super().__init__(url, prefix, max_connections)
        self.path = sqlite_path(url)
        try:
            # Absolute, once: SQLite reads a relative name starting with "file:" as a URI, and a
            # later chdir must not move the store.
            self.file = self.path.absolute()
        except OSError as e:  # the working directory was removed
            raise StoreUnavailable(url, f"cannot resolve {self.path}: {e.strerror or e}", FILE_ADVICE) from None
        if not create:
            self._check_store()  # before any connection writes (journal_mode=WAL would)
            return
        try:
            # The store holds the dashboard's password hashes and every audited input: a folder
            # and a file this creates are its owner's alone (SQLite gives its -wal and -shm files
            # the database file's mode). Existing ones keep the mode their owner gave them.
            self.file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise StoreUnavailable(url, f"cannot create the directory {self.file.parent}: {e.strerror or e}",
                                   FILE_ADVICE) from None
        try:
            _create_private(self.file)
        except OSError as e:
            raise StoreUnavailable(url, f"cannot create {self.file}: {e.strerror or e}", FILE_ADVICE) from None

    def _check_store(self) -> None:
        """``create=False``: the file must exist and hold the store's tables, checked over a
        read-only connection, so a file that is no store -- another program's database, an empty
        file, not SQLite at all -- is refused byte for byte as it was (a normal connection would
        switch it to WAL first, and make an empty file a database). :class:`StoreMissing` when it
        is no store, :class:`StoreUnavailable` when this user may not look."""
        try:
            is_file = stat.S_ISREG(os.stat(self.file).st_mode)
        except (FileNotFoundError, NotADirectoryError):
            raise StoreMissing(self.location) from None
        except OSError as e:  # a folder on the path this user may not enter, ...
            raise StoreUnavailable(self.url, f"cannot look at {self.file}: {e.strerror or e}", FILE_ADVICE) from None
        if not is_file:
            raise StoreMissing(self.location, " (that is not a file)")
        uri = "file:" + urllib.parse.quote(str(self.file)) + "?mode=ro"
        try:
            cx = sqlite3.connect(uri, uri=True, timeout=SQLITE_BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as e:
            raise StoreUnavailable(self.url, f"cannot open {self.file} to read it: {e}", FILE_ADVICE) from None
        try:
            found = cx.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                               (f"{self.prefix}items",)).fetchall()
        except sqlite3.DatabaseError as e:
            if type(e) is sqlite3.DatabaseError:  # "file is not a database" (OperationalError: cannot read)
                raise StoreMissing(self.location, " (that file is not a SQLite database)") from None
            raise StoreUnavailable(self.url, f"cannot read {self.file}: {type(e).__name__}: {e}", FILE_ADVICE) from None
        finally:
            cx.close()
        if not found:
            raise StoreMissing(self.location, " (the database there holds no audit store tables)")

    @property
    def location(self) -> str:
        return str(self.file) + (f" (tables {self.prefix}*)" if self.prefix else "")

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions; this module says BEGIN itself.
        # check_same_thread=False: a pooled connection serves one thread at a time, not always the same.
        try:
            cx = sqlite3.connect(self.file, timeout=SQLITE_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
            cx.execute("PRAGMA journal_mode=WAL")
            cx.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across app crashes
            cx.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        except sqlite3.Error as e:
            raise StoreUnavailable(self.url, f"{self.file}: {type(e).__name__}: {e}", FILE_ADVICE) from None
        return cx

    def _reusable(self, cx: sqlite3.Connection) -> bool:
        try:
            return not cx.in_transaction
        except sqlite3.ProgrammingError:  # closed
            return False

    def _begin_snapshot(self, cx: sqlite3.Connection) -> None:
        cx.execute("BEGIN")  # deferred: takes no lock, never waits for the writer
        # WAL: a read transaction pins its snapshot at its first read, so read now, not later
        cx.execute("SELECT COUNT(*) FROM sqlite_master").fetchall()

    def _end_snapshot(self, cx: sqlite3.Connection) -> None:
        try:
            if cx.in_transaction:
                cx.execute("ROLLBACK")  # nothing was written
        except sqlite3.Error:  # a closed connection: discarded when given back
            pass

    @contextmanager
    def write(self) -> Iterator[Cursor]:
        self._refuse_write_in_snapshot()
        with self._connection() as cx:
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
        with self._connection() as cx:
            cur = cx.execute(self.sql(text), tuple(params))  # WAL: reads never wait
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

    def __init__(self, url: str, prefix: str, max_connections: int = POOL_MAX_OPEN) -> None:
        super().__init__(url, prefix, max_connections)
        try:
            import psycopg  # imported here: a SQLite-only install needs no PostgreSQL driver
        except ImportError:
            raise ConfigError("store_url", redact_url(url), "a sqlite:/// URL, or install the PostgreSQL driver "
                              "(pip install 'psycopg[binary]')") from None
        self._psycopg = psycopg

    def sql(self, text: str) -> str:
        return super().sql(text).replace("?", "%s")

    def _connect(self) -> Any:
        return connect_postgres(self._psycopg, self.url)

    def _reusable(self, cx: Any) -> bool:
        return not cx.closed and not cx.broken and cx.info.transaction_status == self._psycopg.pq.TransactionStatus.IDLE

    def _broken(self, cx: Any) -> bool:
        # psycopg sets ``broken`` when the connection was lost (not when closed on purpose)
        return bool(cx.broken)

    def _begin_snapshot(self, cx: Any) -> None:
        # The connection is in autocommit; BEGIN by hand. A read-only transaction is given no
        # transaction id, so it never holds back qc_position (pg_snapshot_xmin) for its length.
        cx.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        cx.execute("SELECT 1")  # REPEATABLE READ fixes its snapshot at the first statement: now

    def _end_snapshot(self, cx: Any) -> None:
        try:
            cx.execute("ROLLBACK")  # nothing was written
        except self._psycopg.Error:  # a broken connection: discarded when given back
            pass

    @contextmanager
    def write(self) -> Iterator[Cursor]:
        self._refuse_write_in_snapshot()
        with self._connection() as cx:
            with cx.transaction():  # nested in this thread's write: a savepoint of it
                with cx.cursor() as cur:
                    yield Cursor(self, cur)

    def query(self, text: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._connection() as cx, cx.cursor() as cur:
            cur.execute(self.sql(text), tuple(params))
            return list(cur.fetchall())

    def columns(self, cur: Cursor, table: str) -> set[str]:
        # Unquoted identifiers are folded to lower case; the prefix is [a-z0-9_] already.
        rows = cur.all(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = ?",
            (f"{self.prefix}{table}",),
        )
        return {row[0] for row in rows}


def connect_postgres(psycopg: Any, url: str) -> Any:
    """An autocommit psycopg connection to ``url`` (a refusal or a dead server raises
    :class:`StoreUnavailable`, its password masked, after at most the connect timeout)."""
    options = {} if "connect_timeout" in url else {"connect_timeout": POSTGRES_CONNECT_TIMEOUT_S}
    try:
        return psycopg.connect(url, autocommit=True, **options)
    except psycopg.Error as e:
        # psycopg's message names host and port, never the password; keep its first line only
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        password = urlsplit(url).password
        if password:
            detail = detail.replace(password, "***")
        raise StoreUnavailable(url, detail) from None


def connect(url: str, prefix: str = "", max_connections: int = POOL_MAX_OPEN, create: bool = True) -> Database:
    """A :class:`Database` for ``sqlite:///path`` or ``postgresql://user@host:port/db``, with
    at most ``max_connections`` connections open at once. ``create=False``: a SQLite file that
    does not exist or does not hold the store's tables raises :class:`StoreMissing`, checked over a
    read-only connection, and nothing is created or changed (PostgreSQL: the store's tables are
    checked by :class:`store.AuditStore`)."""
    if url.startswith("sqlite:"):
        return SQLiteDatabase(url, prefix, max_connections, create)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresDatabase(url, prefix, max_connections)
    raise ConfigError("store_url", redact_url(url), "'sqlite:///path.db' or 'postgresql://user@host:port/db'")
