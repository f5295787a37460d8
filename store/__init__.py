"""The audit store: where audit items wait for auditors, and where their verdicts are kept.

``open_store(url)`` gives an :class:`AuditStore` on SQLite (``sqlite:///path.db`` under the working
directory, ``sqlite:////abs/path.db``; the default for one machine) or PostgreSQL
(``postgresql://user@host:port/db``, for many monitor processes and dashboards). Both run the
same SQL and pass the same tests; docs/audit-store.md describes the schema and the lease, verdict
and outbox semantics.

In the flow: the monitor process (monitor/service.py) ingests the ``audit`` topic here and
publishes the outbox to ``verdicts`` and ``decisions``; the dashboard claims items, records
verdicts and reads the read models; ``auditstream labels export`` turns verdicts into training data.
Accounts (:mod:`store.accounts`) and the QC history the dashboard draws (:mod:`store.qc_history`)
live here too: the dashboards depend on the store, not on the monitor process.

May import: ``qc``, ``auditstream``, psycopg, sqlite3.
"""

from __future__ import annotations

from store.backend import StoreMissing, connect
from store.records import (
    Agreement,
    Claim,
    GoldScore,
    ItemPosition,
    OutboxRow,
    QCOutcome,
    QCSample,
    QueueStat,
    StoreConfig,
    StoredItem,
    StoreStats,
    VerdictRecord,
    VerdictResult,
)
from store.outbox import OutboxRound
from store.store import AuditStore

__all__ = [
    "Agreement", "AuditStore", "Claim", "GoldScore", "ItemPosition", "OutboxRound", "OutboxRow", "QCOutcome", "QCSample", "QueueStat", "StoreConfig",
    "StoreMissing", "StoreStats", "StoredItem", "VerdictRecord", "VerdictResult", "open_store",
]  # fmt: skip


def open_store(url: str, config: StoreConfig | None = None, table_prefix: str = "", *, create: bool) -> AuditStore:
    """Open (and migrate) the audit store at ``url``; ``create`` says whether a store that does not
    exist yet is created (then ``store.created`` is True and ``store.location`` says where).

    ``url``: ``sqlite:///relative/path.db`` (under the working directory), ``sqlite:////absolute/path.db``
    (four slashes), or ``postgresql://user@host:port/db``; any other ``sqlite:`` spelling is refused.
    A command that only reads or changes what is there (a dashboard, an export, an account change)
    passes ``create=False``: a mistyped path then raises :class:`StoreMissing`, naming the absolute
    path, instead of serving a fresh empty store. Only what fills a store (the monitor, a demo, a
    bench, a test) creates one. ``create`` has no default: every caller says which it means (a
    default of True let readers create empty stores from mistyped paths).

    ``table_prefix`` ([a-z][a-z0-9_]*) lets several stores share one database, e.g. one per test
    run on a shared PostgreSQL.
    """
    db = connect(url, table_prefix, create=create)
    try:
        return AuditStore(db, config, create=create)
    except BaseException:
        db.close()
        raise
