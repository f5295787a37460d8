"""The outbox's publishing rounds: what makes publication exactly-once.

A publisher (the monitor's leader, monitor/service.py ``publish_outbox``) sends pending outbox
rows in **rounds**, and the order of steps is the whole design (docs/audit-store.md,
"Transactional outbox"):

1. take the end offset of every partition of the output topics (``positions``): every record
   sent afterwards lands at or after them, whichever partition its key picks;
2. :func:`start_round`, one transaction: claim up to ``limit`` pending rows that are in no round,
   record the round (owner, ``positions``, ``fence_s``) and point the rows at it
   (``outbox.round_id``);
3. send the rows and wait for every acknowledgement;
4. :func:`finish_round`, one transaction: mark the rows published, close the round.

A crash between 2 and 4 leaves the round open with its rows unmarked, whether the broker got
none, some or all of them. The next publisher resolves it before sending anything of those keys:
once ``fence_s`` has passed (no record of the round can reach the broker any more: see
``fence_s`` below) it reads the topics from ``positions`` to their current end, and
:func:`finish_round` marks published every row whose record (same topic, key and bytes; the
bytes carry the verdict id) is there and puts the others back to pending, to be sent in a new
round. So no row is published twice and none is lost.

``fence_s`` = the round's start + the time its sends may take to begin + the producer's delivery
timeout: a producer reports success or failure of a record within its delivery timeout and does
not retry past it. Until then an open round may still be in flight (a zombie leader that lost
its lease or its database session while sending), so its rows, and later rows with the same
(topic, key), wait; rows of other keys go on.

Claims use ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so concurrent publishers share rows out;
on SQLite the one writer lock does the same. Nothing here talks to Kafka.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable

from store.backend import Database
from store.records import OutboxRow

Positions = dict[tuple[str, int], int]  # (topic, partition) -> end offset before the send


@dataclass(frozen=True)
class OutboxRound:
    """One round of rows sent together (see the module docstring)."""

    id: int
    owner: str
    started_at_s: float
    fence_s: float
    positions: Positions
    rows: list[OutboxRow]


_ROW = "SELECT id, topic, record_key, record_value FROM {p}outbox"


def _rows(found: Iterable[tuple]) -> list[OutboxRow]:
    return [OutboxRow(int(i), t, k.encode("utf-8"), v.encode("utf-8")) for i, t, k, v in found]


def start_round(db: Database, limit: int, now_s: float, owner: str, fence_s: float, positions: Positions) -> OutboxRound | None:
    """Claim up to ``limit`` pending rows into a new round, oldest first; None when none is
    claimable. A row is skipped while a row with its (topic, key) is in an open round, so a
    key's records keep their order."""
    if not fence_s > now_s:
        raise ValueError(f"fence_s={fence_s} must be after now_s={now_s}")
    select = (f"{_ROW} o WHERE published_at_s IS NULL AND round_id IS NULL AND NOT EXISTS ("
              "SELECT 1 FROM {p}outbox f WHERE f.published_at_s IS NULL AND f.round_id IS NOT NULL"
              " AND f.topic = o.topic AND f.record_key = o.record_key)"
              f" ORDER BY id LIMIT ?{db.claim_lock}")  # fmt: skip
    stored = json.dumps(sorted([t, p, int(o)] for (t, p), o in positions.items()))
    with db.write() as cur:
        rows = _rows(cur.all(select, (int(limit),)))
        if not rows:
            return None
        found = cur.one("INSERT INTO {p}outbox_rounds (owner, started_at_s, fence_s, positions) VALUES (?, ?, ?, ?)"
                        " RETURNING id", (owner, float(now_s), float(fence_s), stored))  # fmt: skip
        assert found is not None  # RETURNING of the row just inserted
        round_id = int(found[0])
        for chunk in _chunks([row.id for row in rows]):
            cur.run(f"UPDATE {{p}}outbox SET round_id = ? WHERE id IN ({', '.join('?' * len(chunk))})", (round_id, *chunk))
    return OutboxRound(round_id, owner, float(now_s), float(fence_s), dict(positions), rows)


def open_rounds(db: Database) -> list[OutboxRound]:
    """Rounds started and not finished (in flight, or left by a crash), oldest first, with their
    unmarked rows."""
    rounds = db.query("SELECT id, owner, started_at_s, fence_s, positions FROM {p}outbox_rounds"
                      " WHERE finished_at_s IS NULL ORDER BY id")  # fmt: skip
    out = []
    for round_id, owner, started, fence, positions in rounds:
        rows = _rows(db.query(f"{_ROW} WHERE round_id = ? AND published_at_s IS NULL ORDER BY id", (round_id,)))
        out.append(OutboxRound(int(round_id), owner, float(started), float(fence),
                               {(t, int(p)): int(o) for t, p, o in json.loads(positions)}, rows))  # fmt: skip
    return out


def finish_round(db: Database, round_id: int, published: Iterable[int], now_s: float) -> int:
    """Close round ``round_id``: its rows in ``published`` are marked published at ``now_s``, its
    other unmarked rows go back to pending. Returns how many were marked. A round already
    finished (resolved by another publisher while this one was stalled) changes nothing."""
    published = sorted({int(i) for i in published})
    with db.write() as cur:
        if cur.run("UPDATE {p}outbox_rounds SET finished_at_s = ? WHERE id = ? AND finished_at_s IS NULL",
                   (float(now_s), int(round_id))) != 1:  # fmt: skip
            return 0
        marked = 0
        for chunk in _chunks(published):
            marked += cur.run(f"UPDATE {{p}}outbox SET published_at_s = ? WHERE round_id = ? AND published_at_s IS NULL"
                              f" AND id IN ({', '.join('?' * len(chunk))})", (float(now_s), int(round_id), *chunk))  # fmt: skip
        cur.run("UPDATE {p}outbox SET round_id = NULL WHERE round_id = ? AND published_at_s IS NULL", (int(round_id),))
    return marked


def mark(cur: Any, ids: list[int], now_s: float) -> int:
    """Mark rows published (``cur``: a write transaction's cursor); returns how many changed."""
    changed = 0
    for chunk in _chunks(ids):
        changed += cur.run(f"UPDATE {{p}}outbox SET published_at_s = ? WHERE published_at_s IS NULL"
                           f" AND id IN ({', '.join('?' * len(chunk))})", (now_s, *chunk))  # fmt: skip
    return changed


def _chunks(ids: list[int], size: int = 500) -> Iterable[list[int]]:
    for start in range(0, len(ids), size):
        yield ids[start : start + size]
