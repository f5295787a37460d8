"""Which monitor process leads: publishes the outbox and keeps the statistics.

Several ``auditstream monitor`` processes may share one store — by design (more ingest
throughput, up to the partition count) or by accident (a Kubernetes rolling update surges a
second pod before the first stops). Ingest is idempotent, so every process keeps ingesting. But
the outbox publisher, the QC statistics and the control plans must come from one process: two
publishers send the same rows twice, and two trackers each see part of the verdicts, so each
computes a partial error estimate and plans controls from it.

:meth:`Leadership.hold` is called by the publisher every round and says whether this process
leads right now:

* **PostgreSQL**: a session advisory lock (``pg_try_advisory_lock``) on a connection of its own.
  The server releases it the moment the session ends, so a crashed leader is replaced on the
  next round of another process; a leader checks its connection every round and steps down when
  it broke. A follower whose connection broke reconnects on its next round (and logs it); while
  the server cannot be reached it does not lead.
* **SQLite**: a lease row in ``meta`` (``leader:<name>`` -> owner and expiry), taken when absent
  or expired and renewed by its owner every third of ``lease_s``. A leader that stops cleanly
  deletes it; one that crashed is replaced after at most ``lease_s``. A leader stalled for longer
  than ``lease_s`` can overlap with its successor for one round; each claims its own rows, and
  a round it left in flight is resolved only after its fence (store/outbox.py), so nothing is
  sent twice. ``lease_s`` must exceed the longest publishing round, so that a live leader is
  never replaced in the middle of one.
"""

from __future__ import annotations

import abc
import json
import logging
import os
import socket
import uuid
import zlib
from typing import Any

from store.backend import StoreUnavailable, connect_postgres
from store.records import check_lease_s

log = logging.getLogger(__name__)

# First key of the two-int advisory lock space (which does not overlap the one-bigint space the
# schema creation lock uses): "as" for auditstream.
_LOCK_CLASS = 0x6173


def default_owner() -> str:
    """host:pid:random — unique per process, readable in the lease row."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Leadership(abc.ABC):
    """Leadership of ``name`` among the processes sharing one store (see the module docstring)."""

    def __init__(self, db: Any, name: str = "monitor", lease_s: float = 45.0, owner: str | None = None) -> None:
        self._db, self.name, self.lease_s = db, name, check_lease_s("leader lease_s", lease_s)
        self.owner = owner or default_owner()
        self.held = False

    def hold(self, now_s: float) -> bool:
        """Acquire or keep leadership; True while this process leads."""
        held = self._hold(now_s)
        if held != self.held:
            log.info("%s %s leadership of %r", self.owner, "took" if held else "lost", self.name)
        self.held = held
        return held

    def release(self) -> None:
        """Give leadership up now (a clean stop): another process takes over on its next round."""
        if self.held:
            self._release()
            log.info("%s released leadership of %r", self.owner, self.name)
        self.held = False

    @abc.abstractmethod
    def _hold(self, now_s: float) -> bool:
        """Take or keep the lock/lease; True if this process holds it now."""

    @abc.abstractmethod
    def _release(self) -> None:
        """Let the lock/lease go."""


class SQLiteLeadership(Leadership):
    def __init__(self, db: Any, name: str = "monitor", lease_s: float = 45.0, owner: str | None = None) -> None:
        super().__init__(db, name, lease_s, owner)
        self._key, self._renew_at = f"leader:{name}", float("-inf")

    def _hold(self, now_s: float) -> bool:
        if self.held and now_s < self._renew_at:
            return True  # well inside our lease: no write transaction every round
        with self._db.write() as cur:
            row = cur.one("SELECT value FROM {p}meta WHERE key = ?", (self._key,))
            lease = json.loads(row[0]) if row else None
            if lease is not None and lease["owner"] != self.owner and float(lease["expires_s"]) > now_s:
                return False
            value = json.dumps({"owner": self.owner, "expires_s": now_s + self.lease_s})
            cur.run("INSERT INTO {p}meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = ?",
                    (self._key, value, value))  # fmt: skip
        self._renew_at = now_s + self.lease_s / 3
        return True

    def _release(self) -> None:
        with self._db.write() as cur:
            row = cur.one("SELECT value FROM {p}meta WHERE key = ?", (self._key,))
            if row is not None and json.loads(row[0])["owner"] == self.owner:
                cur.run("DELETE FROM {p}meta WHERE key = ?", (self._key,))
        self._renew_at = float("-inf")


class PostgresLeadership(Leadership):
    def __init__(self, db: Any, name: str = "monitor", lease_s: float = 45.0, owner: str | None = None) -> None:
        super().__init__(db, name, lease_s, owner)
        key = zlib.crc32(f"auditstream-leader:{db.prefix}:{name}".encode())
        self._key = key - 2**32 if key >= 2**31 else key  # the advisory lock takes a signed int4
        self._cx: Any = None

    def _hold(self, now_s: float) -> bool:
        if self._cx is not None and self.held:
            try:
                self._cx.execute("SELECT 1")  # the lock lives as long as this session
                return True
            except self._db._psycopg.Error as e:
                log.warning("leadership connection of %r broke (%s); stepping down", self.name, type(e).__name__)
                self._close()
        try:
            return self._try_lock()
        except (StoreUnavailable, self._db._psycopg.Error) as e:
            # A follower's session died (a server restart, a terminated backend): without this it
            # asked on the dead connection, and failed, every round for good.
            log.warning("leadership connection of %r broke (%s: %s); reconnecting", self.name, type(e).__name__,
                        str(e).strip().splitlines()[0] if str(e).strip() else "")  # fmt: skip
            self._close()
        try:
            return self._try_lock()
        except (StoreUnavailable, self._db._psycopg.Error) as e:
            log.warning("leadership of %r: cannot reach the store (%s); not leading, trying again next round",
                        self.name, e)  # fmt: skip
            self._close()
            return False

    def _try_lock(self) -> bool:
        if self._cx is None:
            self._cx = connect_postgres(self._db._psycopg, self._db.url)
        (got,) = self._cx.execute("SELECT pg_try_advisory_lock(%s, %s)", (_LOCK_CLASS, self._key)).fetchone()
        return bool(got)

    def _release(self) -> None:
        # Unlock before closing: the server drops a closed session's locks only when its backend
        # has exited, a moment later, and a successor asking at once was refused.
        if self._cx is not None:
            try:
                self._cx.execute("SELECT pg_advisory_unlock_all()")
            except self._db._psycopg.Error as e:  # a broken session holds nothing once closed
                log.debug("unlocking the leadership connection: %s", type(e).__name__)
        self._close()

    def _close(self) -> None:
        if self._cx is not None:
            try:
                self._cx.close()
            except Exception as e:  # noqa: BLE001 - a broken connection may fail to close; it is gone either way
                log.debug("closing the leadership connection: %s", e)
            self._cx = None


def leadership(db: Any, name: str = "monitor", lease_s: float = 45.0, owner: str | None = None) -> Leadership:
    """The :class:`Leadership` for ``db``'s backend (``store.leadership(...)`` calls this)."""
    kind = PostgresLeadership if db.kind == "postgresql" else SQLiteLeadership
    return kind(db, name, lease_s, owner)
