"""The audit store's tables (docs/audit-store.md has the picture), one DDL for both databases.

``{p}`` is the table prefix; ``{id}``, ``{float}``, ``{bigint}`` are the column types of
:attr:`store.backend.Database.types`. Everything is created with ``IF NOT EXISTS``, and
columns added since version 1 are listed in :data:`ADDED_COLUMNS` and added with ``ALTER TABLE
... ADD COLUMN`` when a table lacks them, so opening a store is also its migration: a database
written by an older release is upgraded in place, nothing is dropped.

Design choices that the semantics rest on:

* ``items`` is unique on (request_id, model_version): ingest is ``INSERT ... ON CONFLICT DO
  NOTHING``, so replaying the audit topic never makes a second item.
* The lease lives on the item row (``lease_owner``, ``lease_expires_s``). A claim *updates* that
  row, so on PostgreSQL a concurrent ``SELECT ... FOR UPDATE SKIP LOCKED`` either skips it or
  re-checks the lease on the new row version: no item is leased twice.
* ``verdicts`` is append-only history: every submitted verdict is a row, never updated; the
  verdict id (made when the form was shown) is the primary key, so a double submit is one row.
* ``outbox`` rows are written in the same transaction as their verdict and marked published only
  after the broker acknowledged them (transactional outbox: no verdict lost, none invented).
* ``outbox_rounds``: before a publisher sends rows it records them as one round (``outbox.round_id``)
  with the topics' end offsets taken before the send, in the transaction that claims them; a round
  left open by a crash is resolved by reading the topics from those offsets (store/outbox.py), so
  every row is published exactly once.
* ``login_throttle`` (since version 7): the failed-login counters of names that have no account,
  keyed by an HMAC-SHA256 of the name under the ``meta`` row ``login_throttle_key`` (a random
  secret made when the store is created or upgraded), so the throttle of unknown names holds
  across dashboard processes and restarts like an account's, and the table does not list the
  names tried (store/accounts.py).
* ``meta`` row ``audit_split_key`` (since version 6): the key of the store's train/certify split of
  audited items (qc/audit_split.py), written once and never changed. A store created by version 6
  or later gets a random secret (:data:`qc.audit_split.SECRET_BYTES` bytes from :mod:`secrets`),
  so clients, who choose request ids, cannot compute which side a request lands on. A store that
  already holds audit items when it is upgraded to version 6 gets ``legacy:audit-split``, the
  public key every store used before: an item never changes side (a verdict that trained a
  version must never later judge it), at the price of a split clients can compute.
"""

from __future__ import annotations

import secrets

from auditstream.errors import AuditstreamError
from qc.audit_split import SECRET_BYTES, SplitKey

SCHEMA_VERSION = 7
SPLIT_KEY_ROW = "audit_split_key"  # meta key of the split key (qc.audit_split.SplitKey.stored())
THROTTLE_KEY_ROW = "login_throttle_key"  # meta key of the HMAC key of login_throttle.name_key (since version 7)

TABLES = ("outbox", "outbox_rounds", "verdicts", "items", "users", "login_throttle", "meta")
# Tables other modules keep in the same database (dropped with the store): store/qc_history.py, store/shadow.py.
EXTRA_TABLES = ("qc_snapshots", "shadow_answers", "shadow_agreement")

DDL = (
    """
    CREATE TABLE IF NOT EXISTS {p}meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
    """
    CREATE TABLE IF NOT EXISTS {p}items (
        id {id},
        request_id TEXT NOT NULL,
        model TEXT NOT NULL,
        model_version TEXT NOT NULL,
        task TEXT NOT NULL,
        route TEXT NOT NULL,                -- HUMAN (deferred) or AUTO_QC (QC sample)
        priority INTEGER NOT NULL,          -- 0 = HUMAN first (someone waits for it), 1 = QC
        confidence {float} NOT NULL,
        qc_inclusion_prob {float} NOT NULL,
        output TEXT NOT NULL,               -- JSON of the model's answer
        details TEXT NOT NULL,              -- JSON: partial outputs, runner-ups
        input TEXT NOT NULL,                -- JSON of the wire encoding (tensor or image, base64)
        reason TEXT NOT NULL,
        episode_key TEXT,
        step INTEGER,
        created_at_s {float} NOT NULL,      -- producer clock
        ingested_at_s {float} NOT NULL,     -- monitor clock: queue age is measured from here
        is_gold INTEGER NOT NULL DEFAULT 0,
        gold_output TEXT,                   -- JSON of the known answer ("null": should be rejected)
        reviews_needed INTEGER NOT NULL DEFAULT 1,
        reviews_done INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL DEFAULT 'open', -- open | done (gold items stay open)
        lease_owner TEXT,
        lease_expires_s {float},
        UNIQUE (request_id, model_version)
    )""",
    "CREATE INDEX IF NOT EXISTS {p}items_open ON {p}items (priority, id) WHERE state = 'open'",
    "CREATE INDEX IF NOT EXISTS {p}items_model ON {p}items (model, model_version, route)",
    """
    CREATE TABLE IF NOT EXISTS {p}verdicts (
        verdict_id TEXT PRIMARY KEY,
        item_id {bigint} NOT NULL REFERENCES {p}items (id),
        auditor TEXT NOT NULL,
        kind TEXT NOT NULL,                 -- accept | correct | reject | skip
        corrected_output TEXT,              -- JSON, only for 'correct'
        decided_at_s {float} NOT NULL,
        review_round INTEGER NOT NULL,      -- 1 = first review, 2 = double review; 0 = skip
        is_gold INTEGER NOT NULL,
        gold_correct INTEGER                -- gold items only: did the auditor give the known answer
    )""",
    "CREATE INDEX IF NOT EXISTS {p}verdicts_item ON {p}verdicts (item_id)",
    # A claim skips the items this auditor already answered: the set of their item ids.
    "CREATE INDEX IF NOT EXISTS {p}verdicts_auditor ON {p}verdicts (auditor, item_id)",
    "CREATE INDEX IF NOT EXISTS {p}verdicts_time ON {p}verdicts (decided_at_s)",
    """
    CREATE TABLE IF NOT EXISTS {p}outbox (
        id {id},
        topic TEXT NOT NULL,                -- logical topic name: verdicts | decisions
        record_key TEXT NOT NULL,
        record_value TEXT NOT NULL,         -- the wire record (UTF-8 JSON)
        verdict_id TEXT NOT NULL,
        created_at_s {float} NOT NULL,
        published_at_s {float},
        round_id {bigint}                   -- the publishing round that sent it (since version 3)
    )""",
    "CREATE INDEX IF NOT EXISTS {p}outbox_pending ON {p}outbox (id) WHERE published_at_s IS NULL",
    """
    CREATE TABLE IF NOT EXISTS {p}outbox_rounds (
        id {id},
        owner TEXT NOT NULL,                -- the publishing process (host:pid:random)
        started_at_s {float} NOT NULL,
        fence_s {float} NOT NULL,           -- no record of the round reaches the broker after this
        positions TEXT NOT NULL,            -- JSON [[topic, partition, end offset], ...] before the send
        finished_at_s {float}               -- NULL: in flight, or left open by a crash
    )""",
    "CREATE INDEX IF NOT EXISTS {p}outbox_rounds_open ON {p}outbox_rounds (id) WHERE finished_at_s IS NULL",
    """
    CREATE TABLE IF NOT EXISTS {p}users (
        name TEXT PRIMARY KEY,
        role TEXT NOT NULL,                 -- auditor | admin | viewer
        password_hash TEXT NOT NULL,        -- scrypt$n=..,r=..,p=..$salt$hash (store/accounts.py)
        created_at_s {float} NOT NULL,
        disabled INTEGER NOT NULL DEFAULT 0,
        failed_logins INTEGER NOT NULL DEFAULT 0,  -- consecutive wrong passwords (reset on success)
        locked_until_s {float},             -- no password is checked before this time
        credential_gen INTEGER NOT NULL DEFAULT 0, -- raised by a password reset or disabling: ends sessions
        last_failed_s {float}               -- the last wrong password (since version 7): an old count is forgotten
    )""",
    """
    CREATE TABLE IF NOT EXISTS {p}login_throttle (
        name_key TEXT PRIMARY KEY,          -- HMAC-SHA256 of a name with no account (meta login_throttle_key)
        failed_logins INTEGER NOT NULL DEFAULT 0,
        locked_until_s {float},
        last_failed_s {float} NOT NULL      -- rows idle for accounts.FAILURES_FORGOTTEN_S are deleted
    )""",
    "CREATE INDEX IF NOT EXISTS {p}login_throttle_idle ON {p}login_throttle (last_failed_s)",
)

# (schema version, table, column, definition): columns that stores of an older version lack. A
# column added later needs a constant default (SQLite cannot add a NOT NULL column without one).
ADDED_COLUMNS = (
    (2, "users", "failed_logins", "INTEGER NOT NULL DEFAULT 0"),
    (2, "users", "locked_until_s", "{float}"),
    (3, "outbox", "round_id", "{bigint}"),
    (5, "users", "credential_gen", "INTEGER NOT NULL DEFAULT 0"),
    (7, "users", "last_failed_s", "{float}"),
)
# PostgreSQL only. Item ids come from a sequence at insert, but transactions commit in any order:
# a reader can see item 11 while item 10's transaction is still open, so reading on "after the
# last id seen" would skip item 10 for good. ``ingest_xid`` is the inserting transaction's id;
# every transaction up to ``pg_snapshot_xmin`` has ended, so the rows up to it are final
# (store/reads.py, ``qc_position``). An existing store's rows get the migration's id: final too.
POSTGRES_COLUMNS = (
    (4, "items", "ingest_xid", "BIGINT DEFAULT (pg_current_xact_id()::text::bigint)"),
)
POSTGRES_INDEXES = (
    "CREATE INDEX IF NOT EXISTS {p}items_qc_commit ON {p}items (ingest_xid) WHERE route = 'AUTO_QC'",
)


def fill_types(text: str, types: dict[str, str]) -> str:
    """``text`` with this database's column types filled in (``{p}`` is left for the cursor)."""
    for name, sql_type in types.items():
        text = text.replace("{" + name + "}", sql_type)
    return text


def statements(types: dict[str, str]) -> list[str]:
    """The DDL with this database's column types filled in (``{p}`` is left for the cursor)."""
    return [fill_types(text, types) for text in DDL]


class StoreTooNew(AuditstreamError):
    """The store's schema is newer than this release knows."""

    def __init__(self, version: str) -> None:
        self.version = version
        super().__init__(f"this audit store has schema version {version[:40]!r}, which this release (schema "
                         f"{SCHEMA_VERSION}) does not know: it was written by a newer auditstream (upgrade this process: "
                         "every process that opens the store runs one release) or its meta table was edited by hand")


def upgrade(cur, db) -> list[str]:
    """Add every :data:`ADDED_COLUMNS` column its table lacks, give the store its split key when it
    has none (:func:`ensure_split_key`) and record :data:`SCHEMA_VERSION`; returns the columns added
    (``table.column``). ``cur``: a write transaction's cursor on ``db`` (a
    :class:`store.backend.Database`), after :func:`statements` ran."""
    row = cur.one("SELECT value FROM {p}meta WHERE key = 'schema_version'")
    if row is not None:
        # An older release would write its own version back and go on with what it knows: e.g.
        # before schema 6 it split audits by the public key, which clients can compute. A value
        # that is no version number is refused too, never overwritten.
        text = str(row[0]).strip()
        if not (text.isascii() and text.isdigit()) or int(text) > SCHEMA_VERSION:
            raise StoreTooNew(str(row[0]))
    added = []
    postgres = db.kind == "postgresql"
    for _version, table, column, definition in ADDED_COLUMNS + (POSTGRES_COLUMNS if postgres else ()):
        if column not in db.columns(cur, table):
            cur.run(f"ALTER TABLE {{p}}{table} ADD COLUMN {column} {fill_types(definition, db.types)}")
            added.append(f"{table}.{column}")
    for index in POSTGRES_INDEXES if postgres else ():
        cur.run(index)
    ensure_split_key(cur)
    cur.run("INSERT INTO {p}meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
            (THROTTLE_KEY_ROW, secrets.token_hex(32)))
    cur.run(
        "INSERT INTO {p}meta (key, value) VALUES ('schema_version', ?) ON CONFLICT (key) DO UPDATE SET value = ?",
        (str(SCHEMA_VERSION), str(SCHEMA_VERSION)),
    )
    return added


def ensure_split_key(cur) -> SplitKey:
    """The store's split key, written first if it has none (module docstring, ``meta``): a random
    secret for a store without audit items, the public legacy key for one that holds some (they
    were split with it and must stay where they are). Inside the schema's write transaction, so
    two processes opening a new store at once agree on one key."""
    row = cur.one("SELECT value FROM {p}meta WHERE key = ?", (SPLIT_KEY_ROW,))
    if row is not None:
        return SplitKey.from_stored(row[0])
    holds_items = cur.one("SELECT 1 FROM {p}items WHERE is_gold = 0 LIMIT 1") is not None  # gold is never split
    key = SplitKey.legacy() if holds_items else SplitKey.new(secrets.token_bytes(SECRET_BYTES))
    cur.run("INSERT INTO {p}meta (key, value) VALUES (?, ?)", (SPLIT_KEY_ROW, key.stored()))
    return key
