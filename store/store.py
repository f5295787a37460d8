"""The audit store's writes: ingest, gold items, claims with leases, verdicts, the outbox.

Every write is one transaction (``BEGIN IMMEDIATE`` on SQLite, READ COMMITTED with row locks on
PostgreSQL) and every write an auditor performs re-checks the acting user's role inside that
transaction (:func:`store.accounts.check_actor`). Semantics, in short (docs/audit-store.md):

* **ingest** is idempotent on (request_id, model_version); another request under that key (another
  model, input or request time) is not stored (:meth:`AuditStore.stored_differently` tells).
* **claim** leases the first claimable item (deferred HUMAN items before QC samples, then oldest)
  to one auditor until ``now + lease_s``; an expired lease is claimable again. An auditor who
  still holds a live lease gets that item back (a page reload loses nothing) if it matches the
  claim's filters; if not, it is released first: an auditor holds one lease at most. An auditor never
  gets an item they already gave a verdict on (or skipped), which is also how the second review
  of a double-reviewed item goes to a different auditor. With probability ``gold_rate`` a claim
  serves, in place of the item it found, a gold item of that item's model, version and route that
  this auditor has not answered yet; a claim that finds no item serves no gold either (a gold item
  must look like traffic in everything the workbench shows, docs/dashboard.md).
* **record_verdict** is idempotent on the verdict id (made when the form was shown) and a
  compare-and-set on the lease: only the auditor holding the live lease can submit, the lease
  ends with the verdict, so a second submit with another id is refused. Each verdict is appended
  to the history and, in the same transaction, its records to the outbox.
"""

from __future__ import annotations

import dataclasses
import json
import random
import threading
import uuid
import zlib
from typing import Any, Iterable, Sequence

from auditstream.errors import LeaseNotHeld, VerdictConflict
from auditstream.wire import AuditItem, Route, VerdictKind, encode_input
from store.accounts import ADMINS, WRITERS, Accounts, User, check_actor
from store.backend import Database, StoreMissing
from store import outbox
from store.leader import Leadership, leadership
from store.outbox import OutboxRound, Positions
from store.reads import ITEM_COLUMNS, VERDICT_COLUMNS, StoreReads, item_from_row, verdict_from_row
from store.records import (
    Claim,
    OutboxRow,
    StoreConfig,
    VerdictRecord,
    VerdictResult,
    check_audit_item,
    check_lease_s,
    check_correction,
    check_verdict_input,
    dumps,
    gold_is_correct,
    normalise_answer,
    outbox_records,
)
from store.schema import EXTRA_TABLES, TABLES, ensure_split_key, statements, upgrade
from qc.triage import hash_uniform

_INSERT_ITEM = (
    "INSERT INTO {p}items (request_id, model, model_version, task, route, priority, confidence, qc_inclusion_prob,"
    " output, details, input, reason, episode_key, step, created_at_s, ingested_at_s, is_gold, gold_output,"
    " reviews_needed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class AuditStore(StoreReads):
    """The audit store. Build it with :func:`store.open_store`; safe to share between
    threads (a bounded connection pool, store/backend.py). Read models come from :class:`StoreReads`."""

    def __init__(self, db: Database, config: StoreConfig | None = None, create: bool = True) -> None:
        """``create=False``: a database without the store's tables raises :class:`StoreMissing`
        (nothing is written); ``created`` says whether this call created the store's tables."""
        self._db = db
        self.config = config or StoreConfig()
        self.accounts = Accounts(db)
        self._rng = random.Random(self.config.seed)
        self._rng_lock = threading.Lock()
        with db.write() as cur:
            if db.kind == "postgresql":  # two processes creating the same tables at once would collide
                cur.one("SELECT pg_advisory_xact_lock(?)", (zlib.crc32(f"auditstream-schema:{db.prefix}".encode()),))
            self.created = not db.columns(cur, "items")
            if self.created and not create:
                raise StoreMissing(db.location, " (the database there holds no audit store tables)",
                                   sqlite=db.kind == "sqlite")
            for ddl in statements(db.types):
                cur.run(ddl)
            upgrade(cur, db)  # a store written by an older release gets the columns added since
            # written once, with the schema (store/schema.py): the same key for the store's life
            self._split_key = ensure_split_key(cur)

    @property
    def backend(self) -> str:
        return self._db.kind

    @property
    def location(self) -> str:
        """Where the store is, for people: a SQLite file's absolute path, a PostgreSQL URL without its password."""
        return self._db.location

    def __repr__(self) -> str:
        return f"AuditStore({self._db.kind}, prefix={self._db.prefix!r})"  # never the URL: it may hold a password

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "AuditStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def drop_tables(self) -> None:
        """Drop every table of this store (tests, and tearing down a demo)."""
        with self._db.write() as cur:
            for table in EXTRA_TABLES + TABLES:
                cur.run(f"DROP TABLE IF EXISTS {{p}}{table}")

    # ----------------------------------------------------------------------------------------
    # ingest

    def ingest(self, item: AuditItem, now_s: float) -> bool:
        """Store one audit item; False if (request_id, model_version) was already there."""
        return self.ingest_many([item], now_s)[0]

    def ingest_many(self, items: Sequence[AuditItem], now_s: float) -> list[bool]:
        """Store a batch in one transaction; one bool per item (True: new)."""
        rows = [self._item_row(item, now_s) for item in items]  # validate all before writing any
        # Insert in key order: two processes ingesting overlapping batches (a rebalance) then wait
        # for each other's unique-index entries in the same order and cannot deadlock.
        order = sorted(range(len(rows)), key=lambda i: (rows[i][0], rows[i][2]))
        new = [False] * len(rows)
        with self._db.write() as cur:
            for i in order:
                new[i] = cur.run(_INSERT_ITEM + " ON CONFLICT (request_id, model_version) DO NOTHING", rows[i]) == 1
        return new

    def stored_differently(self, item: AuditItem) -> bool:
        """Whether the store holds another request under this item's (request id, model version):
        another model's (the key does not hold the model: request ids must be unique across the
        models sharing a store), or a different input or request time -- not a redelivery of the
        same request."""
        p = item.prediction
        row = self._db.query("SELECT model, input, created_at_s FROM {p}items WHERE request_id = ? AND model_version = ?",
                             (p.request_id, p.model_version))
        if not row:
            return False
        stored_model, stored_input, stored_created = row[0]
        return (stored_model != p.model or stored_input != json.dumps(encode_input(item.input))
                or float(stored_created) != float(p.created_at_s))

    def add_gold(self, item: AuditItem, gold_output: Any, actor: User, now_s: float) -> int:
        """Add a gold item (a known answer; ``None`` means "should be rejected"). Admins only.
        The item's ``output`` is what auditors see as the model's answer, right or wrong."""
        # the gold answer in the model's form (a detector's class names -> indices), as corrections are
        gold_output = normalise_answer(item.prediction.task, gold_output, item.prediction.details)
        row = self._item_row(item, now_s, gold=True, gold_output=gold_output)
        with self._db.write() as cur:
            check_actor(cur, actor, ADMINS, "add gold items")
            if cur.run(_INSERT_ITEM + " ON CONFLICT (request_id, model_version) DO NOTHING", row) != 1:
                raise ValueError(f"an item ({item.prediction.request_id!r}, {item.prediction.model_version!r}) already exists")
            p = item.prediction
            found = cur.one("SELECT id FROM {p}items WHERE request_id = ? AND model_version = ?", (p.request_id, p.model_version))
            assert found is not None  # just inserted in this transaction
            return int(found[0])

    def _item_row(self, item: AuditItem, now_s: float, gold: bool = False, gold_output: Any = None) -> tuple:
        check_audit_item(item)
        p = item.prediction
        double = hash_uniform(p.request_id, salt="double-review") < self.config.double_review_rate
        return (
            p.request_id, p.model, p.model_version, p.task.value, p.route.value, 0 if p.route is Route.HUMAN else 1,
            float(p.confidence), float(p.qc_inclusion_prob), dumps(p.output), dumps(p.details),
            json.dumps(encode_input(item.input)), p.reason, p.episode_key, p.step, float(p.created_at_s), float(now_s),
            int(gold), dumps(gold_output) if gold else None, 2 if double else 1,
        )  # fmt: skip

    # ----------------------------------------------------------------------------------------
    # claims and leases

    def claim(self, auditor: User, lease_s: float, now_s: float, model: str | None = None, route: Route | str | None = None) -> Claim | None:
        """Lease the next item to ``auditor`` until ``now_s + lease_s``; None if nothing is left.
        An auditor holds one lease at most: her live lease comes back if it matches the filters,
        else it is released (free for anyone at once) before the filters' next item is leased."""
        lease_s = check_lease_s("lease_s", lease_s)
        filters, params = _filters(model, route)
        with self._rng_lock:
            want_gold = self._rng.random() < self.config.gold_rate
        with self._db.write() as cur:
            check_actor(cur, auditor, WRITERS, "claim audit items")
            # One claim of an auditor at a time (two tabs): each sees the lease the other left. On
            # SQLite BEGIN IMMEDIATE already serialises every write.
            cur.one(f"SELECT name FROM {{p}}users WHERE name = ?{self._db.row_lock}", (auditor.name,))
            held = cur.one(
                f"SELECT {ITEM_COLUMNS} FROM {{p}}items WHERE state = 'open' AND lease_owner = ? AND lease_expires_s > ?"
                f"{filters} ORDER BY id LIMIT 1{self._db.row_lock}",
                (auditor.name, now_s, *params),
            )
            # Any other live lease of hers (one the filters leave out: she switched queues after a
            # reload) goes back to the queue, so no item waits hidden behind a lease nobody works on.
            cur.run("UPDATE {p}items SET lease_owner = NULL, lease_expires_s = NULL WHERE state = 'open'"
                    " AND lease_owner = ? AND lease_expires_s > ? AND id <> ?",
                    (auditor.name, now_s, held[0] if held is not None else -1))
            # A live lease of this auditor comes back first; else the queue's next item.
            row = held if held is not None else cur.one(
                f"SELECT {ITEM_COLUMNS} FROM {{p}}items i WHERE state = 'open' AND is_gold = 0{_CLAIMABLE}"
                f"{filters} ORDER BY priority, id LIMIT 1{self._db.claim_lock}",
                (now_s, auditor.name, *params),
            )
            if row is None:
                return None  # no gold either: a claim that found an empty queue would tell it was gold
            if held is None and want_gold:
                # Gold stands in for that item: one of its model, version and route, so the badges,
                # the queue order and the queue depth look the same as they would for the real one.
                model_, version, route_ = row[2], row[3], row[5]  # ITEM_COLUMNS; the input stays undecoded
                row = cur.one(
                    f"SELECT {ITEM_COLUMNS} FROM {{p}}items i WHERE state = 'open' AND is_gold = 1{_CLAIMABLE}"
                    f" AND model = ? AND model_version = ? AND route = ? ORDER BY id LIMIT 1{self._db.claim_lock}",
                    (now_s, auditor.name, model_, version, route_),
                ) or row
            expires = now_s + lease_s
            cur.run("UPDATE {p}items SET lease_owner = ?, lease_expires_s = ? WHERE id = ?", (auditor.name, expires, row[0]))
        item = dataclasses.replace(item_from_row(row), lease_owner=auditor.name, lease_expires_s=expires)
        return Claim(item, auditor.name, expires, 1 if item.is_gold else item.reviews_done + 1)

    def available_depth(self, auditor: str, now_s: float, model: str | None = None,
                        route: Route | str | None = None) -> int:  # fmt: skip
        """Items :meth:`claim` could hand ``auditor`` now under these filters, by its rule: open, not
        gold, no live lease (another auditor's or hers), not answered or skipped by her."""
        filters, params = _filters(model, route)
        return int(self._db.query(
            f"SELECT COUNT(*) FROM {{p}}items i WHERE state = 'open' AND is_gold = 0{_CLAIMABLE}{filters}",
            (now_s, auditor, *params),
        )[0][0])  # fmt: skip

    def renew(self, item_id: int, auditor: User, lease_s: float, now_s: float) -> bool:
        """Extend a live lease (while the form stays open); False if it is no longer held."""
        lease_s = check_lease_s("lease_s", lease_s)
        with self._db.write() as cur:
            check_actor(cur, auditor, WRITERS, "hold audit items")
            return cur.run(
                "UPDATE {p}items SET lease_expires_s = ? WHERE id = ? AND state = 'open' AND lease_owner = ?"
                " AND lease_expires_s > ?",
                (now_s + lease_s, item_id, auditor.name, now_s),
            ) == 1

    def reclaim(self, item_id: int, auditor: User, lease_s: float, now_s: float) -> Claim | None:
        """Lease ``item_id`` to ``auditor`` again after her lease ran out, so the answer she typed
        meanwhile can still be recorded: only while the item is open, nobody else holds a live
        lease on it, she has not answered it yet, and she holds no other live lease (another tab
        took a newer item: taking this one back would free that one, and two tabs would take the
        lease from each other at every renewal). None otherwise (see :meth:`item` for why)."""
        lease_s = check_lease_s("lease_s", lease_s)
        expires = now_s + lease_s
        with self._db.write() as cur:
            check_actor(cur, auditor, WRITERS, "claim audit items")
            cur.one(f"SELECT name FROM {{p}}users WHERE name = ?{self._db.row_lock}", (auditor.name,))
            # The item's row first: under PostgreSQL's READ COMMITTED the UPDATE below is then a new
            # statement whose snapshot holds a verdict of hers committed while this waited (its
            # subquery would otherwise read the older snapshot, and she could answer twice).
            if cur.one(f"SELECT id FROM {{p}}items WHERE id = ?{self._db.row_lock}", (item_id,)) is None:
                return None
            taken = cur.run(
                "UPDATE {p}items SET lease_owner = ?, lease_expires_s = ? WHERE id = ? AND state = 'open'"
                " AND (lease_owner IS NULL OR lease_owner = ? OR lease_expires_s IS NULL OR lease_expires_s <= ?)"
                " AND id NOT IN (SELECT item_id FROM {p}verdicts WHERE auditor = ?)"
                " AND NOT EXISTS (SELECT 1 FROM {p}items other WHERE other.lease_owner = ? AND other.lease_expires_s > ?"
                " AND other.id <> ?)",
                (auditor.name, expires, item_id, auditor.name, now_s, auditor.name, auditor.name, now_s, item_id),
            )
            if taken != 1:
                return None
            row = cur.one(f"SELECT {ITEM_COLUMNS} FROM {{p}}items WHERE id = ?", (item_id,))
        item = item_from_row(row)
        return Claim(item, auditor.name, expires, 1 if item.is_gold else item.reviews_done + 1)

    def release(self, item_id: int, auditor: User) -> bool:
        """Give an item back to the queue without a verdict; False if ``auditor`` did not hold it."""
        with self._db.write() as cur:
            check_actor(cur, auditor, WRITERS, "release audit items")
            return cur.run(
                "UPDATE {p}items SET lease_owner = NULL, lease_expires_s = NULL WHERE id = ? AND lease_owner = ?",
                (item_id, auditor.name),
            ) == 1

    # ----------------------------------------------------------------------------------------
    # verdicts

    @staticmethod
    def new_verdict_id() -> str:
        """A fresh verdict id: make one when the form is shown and submit it with the verdict."""
        return uuid.uuid4().hex

    def record_verdict(
        self, verdict_id: str, item_id: int, auditor: User, kind: VerdictKind | str, corrected_output: Any, now_s: float
    ) -> VerdictResult:
        """Record one verdict (see the module docstring). Raises :class:`LeaseNotHeld` when
        ``auditor`` does not hold the item's live lease, :class:`VerdictConflict` when the id was
        used for another item or auditor, :class:`PermissionDenied` for a role that may not."""
        kind = VerdictKind(kind)
        check_verdict_input(kind, corrected_output)
        if not verdict_id or len(verdict_id) > 64:
            raise ValueError(f"verdict_id must be 1..64 characters, got {len(verdict_id or '')}")
        with self._db.write() as cur:
            check_actor(cur, auditor, WRITERS, "record verdicts")
            # Lock the item first: a concurrent submit of the same id then sees this one's row.
            row = cur.one(f"SELECT {ITEM_COLUMNS} FROM {{p}}items WHERE id = ?{self._db.row_lock}", (item_id,))
            if row is None:
                raise LookupError(f"no audit item {item_id}")
            item = item_from_row(row)
            check_correction(item.task, kind, corrected_output)  # an answer of the item's own kind
            # ... in the form the model answers in (a detector's class names -> the card's indices,
            # by the names the item's details recorded), so every reader compares like with like
            corrected_output = normalise_answer(item.task, corrected_output, item.details)
            seen = cur.one(f"SELECT {VERDICT_COLUMNS} FROM {{p}}verdicts WHERE verdict_id = ?", (verdict_id,))
            if seen is not None:
                first = verdict_from_row(seen)
                if first.item_id != item_id or first.auditor != auditor.name:
                    raise VerdictConflict(verdict_id, f"it is {first.auditor!r}'s verdict on item {first.item_id}")
                return VerdictResult(False, first, item.state == "done")
            if item.lease_owner != auditor.name or item.lease_expires_s is None or item.lease_expires_s <= now_s:
                raise LeaseNotHeld(item_id, auditor.name, item.lease_owner, item.lease_expires_s, now_s)

            done, gold_correct, review_round = False, None, 0
            if kind is VerdictKind.SKIP:
                cur.run("UPDATE {p}items SET lease_owner = NULL, lease_expires_s = NULL WHERE id = ?", (item_id,))
            elif item.is_gold:  # gold stays in the queue for the other auditors
                gold_row = cur.one("SELECT gold_output FROM {p}items WHERE id = ?", (item_id,))
                gold_correct = gold_is_correct(item.task, kind, item.output, corrected_output, json.loads(gold_row[0]),
                                               item.details)
                review_round = 1
                cur.run("UPDATE {p}items SET lease_owner = NULL, lease_expires_s = NULL WHERE id = ?", (item_id,))
            else:
                review_round = item.reviews_done + 1
                done = review_round >= item.reviews_needed
                cur.run(
                    "UPDATE {p}items SET reviews_done = ?, state = ?, lease_owner = NULL, lease_expires_s = NULL WHERE id = ?",
                    (review_round, "done" if done else "open", item_id),
                )
            record = VerdictRecord(verdict_id, item_id, auditor.name, kind, corrected_output, now_s, review_round,
                                   item.is_gold, gold_correct)  # fmt: skip
            cur.run(
                f"INSERT INTO {{p}}verdicts ({VERDICT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (verdict_id, item_id, auditor.name, kind.value, None if corrected_output is None else dumps(corrected_output),
                 now_s, review_round, int(item.is_gold), None if gold_correct is None else int(gold_correct)),
            )  # fmt: skip
            for topic, key, value in outbox_records(item, record, first_decision=review_round == 1):
                cur.run(
                    "INSERT INTO {p}outbox (topic, record_key, record_value, verdict_id, created_at_s) VALUES (?, ?, ?, ?, ?)",
                    (topic, key.decode("utf-8"), value.decode("utf-8"), verdict_id, now_s),
                )
        return VerdictResult(True, record, done)

    # ----------------------------------------------------------------------------------------
    # outbox

    def pending_outbox(self, limit: int = 500) -> list[OutboxRow]:
        """Outbox records not yet marked published (in flight included), oldest first (a read:
        publishers use :meth:`start_outbox_round`)."""
        rows = self._db.query(
            "SELECT id, topic, record_key, record_value FROM {p}outbox WHERE published_at_s IS NULL ORDER BY id LIMIT ?",
            (int(limit),),
        )
        return [OutboxRow(int(i), t, k.encode("utf-8"), v.encode("utf-8")) for i, t, k, v in rows]

    def start_outbox_round(self, limit: int, now_s: float, owner: str, fence_s: float,
                           positions: Positions) -> OutboxRound | None:  # fmt: skip
        """Claim up to ``limit`` pending rows, oldest first, into a publishing round that records
        ``positions`` (each output partition's end offset, taken before the send) and ``fence_s``
        (after it no record of the round can reach the broker); None if nothing is claimable.
        Send the rows, then :meth:`finish_outbox_round`. The protocol: store/outbox.py."""
        return outbox.start_round(self._db, limit, now_s, owner, fence_s, positions)

    def open_outbox_rounds(self) -> list[OutboxRound]:
        """Rounds started and not finished (in flight, or left by a crash), with their unmarked rows."""
        return outbox.open_rounds(self._db)

    def finish_outbox_round(self, round_id: int, published: Iterable[int], now_s: float) -> int:
        """Mark the round's rows in ``published`` published, put its others back to pending, close
        it; returns how many were marked (0 for a round another publisher already finished)."""
        return outbox.finish_round(self._db, round_id, published, now_s)

    def leadership(self, name: str = "monitor", lease_s: float = 45.0, owner: str | None = None) -> Leadership:
        """Leadership of ``name`` among the processes sharing this store (store/leader.py)."""
        return leadership(self._db, name, lease_s, owner)

    def mark_published(self, ids: Iterable[int], now_s: float) -> int:
        """Mark outbox rows as acknowledged by the broker; returns how many changed."""
        with self._db.write() as cur:
            return outbox.mark(cur, [int(i) for i in ids], now_s)


# Free or expired lease, and no verdict (or skip) of this auditor yet.
_CLAIMABLE = (" AND (lease_expires_s IS NULL OR lease_expires_s <= ?)"
              " AND id NOT IN (SELECT item_id FROM {p}verdicts WHERE auditor = ?)")


def _filters(model: str | None, route: Route | str | None) -> tuple[str, list[Any]]:
    sql, params = "", []
    if model is not None:
        sql, params = sql + " AND model = ?", params + [model]
    if route is not None:
        sql, params = sql + " AND route = ?", params + [Route(route).value]
    return sql, params
