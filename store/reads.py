"""The audit store's read models: what the dashboard, the metrics and the QC statistics read.

Reads never take the writer lock (SQLite WAL; PostgreSQL MVCC), so a dashboard refreshing every
few seconds never slows auditors down. Aggregates that differ between SQL dialects (time buckets,
kappa) are computed here in Python from small result sets.

Gold items are left out of every model-facing number (queue depth, verdict counts, QC outcomes,
labels): they measure auditors, not models.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from typing import Any, ContextManager, Iterator, Sequence

from auditstream import tasks
from auditstream.wire import Route, TaskKind, VerdictKind
from qc.audit_split import SplitKey
from store.records import (
    Agreement,
    GoldScore,
    ItemPosition,
    QCOutcome,
    QCSample,
    QueueStat,
    StoredItem,
    StoreStats,
    VerdictRecord,
    audit_error,
    audit_false_parts,
    human_label,
    item_rule,
)

ITEM_COLUMNS = (
    "id, request_id, model, model_version, task, route, confidence, qc_inclusion_prob, output, details, input,"
    " reason, created_at_s, ingested_at_s, is_gold, reviews_needed, reviews_done, state, lease_owner,"
    " lease_expires_s, episode_key, step"
)
VERDICT_COLUMNS = (
    "verdict_id, item_id, auditor, kind, corrected_output, decided_at_s, review_round, is_gold, gold_correct"
)
EXPORT_PAGE = 500
INPUT_CHUNK = 500  # the most request ids StoreReads.request_inputs takes in one call


def item_from_row(row: tuple) -> StoredItem:
    (item_id, request_id, model, version, task, route, confidence, prob, output, details, input_, reason,
     created, ingested, gold, needed, done, state, owner, expires, episode_key, step) = row  # fmt: skip
    return StoredItem(
        int(item_id), request_id, model, version, TaskKind.parse(task), Route(route), float(confidence), float(prob),
        json.loads(output), json.loads(details), json.loads(input_), reason, float(created), float(ingested),
        bool(gold), int(needed), int(done), state, owner, None if expires is None else float(expires), episode_key, step,
    )  # fmt: skip


def verdict_from_row(row: tuple) -> VerdictRecord:
    verdict_id, item_id, auditor, kind, corrected, decided, review_round, gold, gold_correct = row
    return VerdictRecord(
        verdict_id, int(item_id), auditor, VerdictKind(kind), None if corrected is None else json.loads(corrected),
        float(decided), int(review_round), bool(gold), None if gold_correct is None else bool(gold_correct),
    )  # fmt: skip


def _where(model: str | None = None, route: Route | str | None = None, prefix: str = "") -> tuple[str, list[Any]]:
    sql, params = "", []
    if model is not None:
        sql, params = f"{sql} AND {prefix}model = ?", [*params, model]
    if route is not None:
        sql, params = f"{sql} AND {prefix}route = ?", [*params, Route(route).value]
    return sql, params


class StoreReads:
    """Read methods of :class:`store.AuditStore` (kept apart from the writes for size)."""

    _db: Any  # store.backend.Database, set by AuditStore
    _split_key: SplitKey  # read (or written) with the schema by AuditStore

    @property
    def split_key(self) -> SplitKey:
        """The key of this store's train/certify split of audited items (qc/audit_split.py):
        written once with the schema and the same for the store's life (store/schema.py). Every
        split of this store's items is computed with it, by code that has the store: ``labels``
        rows carry each request's split value, so a training host never hashes a request id."""
        return self._split_key

    def read_snapshot(self) -> ContextManager[None]:
        """A context manager: every read this thread makes through the store inside it sees the
        store at one moment, the moment it began (one read-only transaction on one connection,
        given back when it ends: store/backend.py, ``Database.read_snapshot``). Paged reads
        (:meth:`labels`, :meth:`audit_positions`) consumed inside it read every page from that
        moment, and nothing committed meanwhile, ids lower than a page already read included,
        shows up in one read and not another. Writes inside it raise. ``certify --from-audits``
        reads its verdicts, positions, gold record and inputs in one (stack/recertify.py)."""
        return self._db.read_snapshot()

    # --- items --------------------------------------------------------------------------------

    def item(self, item_id: int) -> StoredItem | None:
        rows = self._db.query(f"SELECT {ITEM_COLUMNS} FROM {{p}}items WHERE id = ?", (item_id,))
        return item_from_row(rows[0]) if rows else None

    def items(self, model: str | None = None, route: Route | str | None = None, state: str | None = None,
              limit: int = 100, offset: int = 0, include_gold: bool = False) -> list[StoredItem]:  # fmt: skip
        """Items for display, newest first."""
        sql, params = _where(model, route)
        if state is not None:
            sql, params = sql + " AND state = ?", [*params, state]
        if not include_gold:
            sql += " AND is_gold = 0"
        rows = self._db.query(
            f"SELECT {ITEM_COLUMNS} FROM {{p}}items WHERE 1 = 1{sql} ORDER BY id DESC LIMIT ? OFFSET ?",
            (*params, int(limit), int(offset)),
        )
        return [item_from_row(r) for r in rows]

    def models(self) -> list[str]:
        """The names of the models with items in the store (gold items included), sorted."""
        return [row[0] for row in self._db.query("SELECT DISTINCT model FROM {p}items ORDER BY model")]

    def gold_answers(self, model: str | None = None) -> dict[tuple[str, str], Any]:
        """The known answer of every gold item (of ``model``) by (request id, model version), as
        :meth:`add_gold` stored it (``None``: should be rejected): what a gold item is annotated
        with in a data set (``labels export --format coco --include-gold``), not its auditors'
        verdicts, which are what gold checks."""
        sql, params = _where(model)
        rows = self._db.query(f"SELECT request_id, model_version, gold_output FROM {{p}}items WHERE is_gold = 1{sql}",
                              params)
        return {(request_id, version): json.loads(answer) for request_id, version, answer in rows}

    def audit_positions(self, model: str, page: int = EXPORT_PAGE) -> Iterator[ItemPosition]:
        """Every non-gold audit item of ``model`` without its input (:class:`ItemPosition`: id,
        request id, done or not, route, inclusion probability), in stream order (ids ascending:
        ingest order, fixed before any verdict), read in keyset pages on the id of ``page`` rows:
        what ``certify --from-audits`` holds for every item (stack/recertify.py); the inputs it
        scores come a chunk at a time from :meth:`request_inputs`."""
        if page < 1:
            raise ValueError(f"page={page} must be >= 1")
        last_id = -1
        while True:
            rows = self._db.query(
                "SELECT id, request_id, state, route, qc_inclusion_prob FROM {p}items"
                " WHERE model = ? AND is_gold = 0 AND id > ? ORDER BY id LIMIT ?",
                (model, last_id, int(page)),
            )
            for item_id, request_id, state, route, prob in rows:
                yield ItemPosition(int(item_id), request_id, state == "done", Route(route), float(prob))
            if len(rows) < page:
                return
            last_id = int(rows[-1][0])

    def request_inputs(self, model: str, request_ids: Sequence[str]) -> dict[str, Any]:
        """The wire input (decoded JSON) of each of ``request_ids``: that of the request's
        lowest-id non-gold item of ``model`` (a request answered by several versions has one
        item per version, all of the same request). Requests without such an item are absent.
        At most :data:`INPUT_CHUNK` distinct ids per call, so a caller holds one chunk of inputs
        at a time (ValueError beyond)."""
        ids = list(dict.fromkeys(request_ids))
        if len(ids) > INPUT_CHUNK:
            raise ValueError(f"{len(ids)} request ids in one call; at most {INPUT_CHUNK}")
        if not ids:
            return {}
        marks = ", ".join("?" * len(ids))
        rows = self._db.query(
            "SELECT request_id, input FROM {p}items WHERE id IN (SELECT MIN(id) FROM {p}items"
            f" WHERE model = ? AND is_gold = 0 AND request_id IN ({marks}) GROUP BY request_id)",
            (model, *ids),
        )
        return {request_id: json.loads(input_) for request_id, input_ in rows}

    def verdicts(self, item_id: int | None = None, auditor: str | None = None, since_s: float | None = None) -> list[VerdictRecord]:
        """Verdict history (every submit, skips included), oldest first."""
        sql, params = "", []
        for column, value in (("item_id", item_id), ("auditor", auditor)):
            if value is not None:
                sql, params = f"{sql} AND {column} = ?", [*params, value]
        if since_s is not None:
            sql, params = sql + " AND decided_at_s >= ?", [*params, since_s]
        rows = self._db.query(f"SELECT {VERDICT_COLUMNS} FROM {{p}}verdicts WHERE 1 = 1{sql} ORDER BY decided_at_s, verdict_id", params)
        return [verdict_from_row(r) for r in rows]

    # --- queue --------------------------------------------------------------------------------

    def queue_depth(self, model: str | None = None, route: Route | str | None = None) -> int:
        """Items still waiting for a verdict (leased ones included), gold items excluded."""
        sql, params = _where(model, route)
        return int(self._db.query(f"SELECT COUNT(*) FROM {{p}}items WHERE state = 'open' AND is_gold = 0{sql}", params)[0][0])

    def oldest_pending_age_s(self, now_s: float, model: str | None = None, route: Route | str | None = None) -> float:
        """Seconds the oldest waiting item has been in the store (0.0 when the queue is empty)."""
        sql, params = _where(model, route)
        oldest = self._db.query(f"SELECT MIN(ingested_at_s) FROM {{p}}items WHERE state = 'open' AND is_gold = 0{sql}", params)[0][0]
        return 0.0 if oldest is None else max(0.0, now_s - float(oldest))

    # --- verdict aggregates -------------------------------------------------------------------

    def verdict_counts(self, model: str | None = None, route: Route | str | None = None, since_s: float | None = None) -> dict[VerdictKind, int]:
        """Verdicts on real (non-gold) items by kind; every kind present."""
        sql, params = _where(model, route, prefix="i.")
        if since_s is not None:
            sql, params = sql + " AND v.decided_at_s >= ?", [*params, since_s]
        rows = self._db.query(
            "SELECT v.kind, COUNT(*) FROM {p}verdicts v JOIN {p}items i ON i.id = v.item_id"
            f" WHERE v.is_gold = 0{sql} GROUP BY v.kind",
            params,
        )
        counts = {kind: 0 for kind in VerdictKind}
        counts.update({VerdictKind(kind): int(n) for kind, n in rows})
        return counts

    def auditor_throughput(self, since_s: float) -> dict[str, int]:
        """Decisive verdicts (skips not counted, gold counted) per auditor since ``since_s``."""
        rows = self._db.query(
            "SELECT auditor, COUNT(*) FROM {p}verdicts WHERE kind <> 'skip' AND decided_at_s >= ? GROUP BY auditor",
            (since_s,),
        )
        return {auditor: int(n) for auditor, n in rows}

    def throughput_series(self, bucket_s: float, since_s: float | None = None) -> list[tuple[float, int]]:
        """(bucket start, decisive verdicts in bucket) for every bucket from the first verdict on."""
        if not bucket_s > 0:
            raise ValueError(f"bucket_s={bucket_s} must be > 0")
        rows = self._db.query(
            "SELECT decided_at_s FROM {p}verdicts WHERE kind <> 'skip' AND decided_at_s >= ? ORDER BY decided_at_s",
            (float("-inf") if since_s is None else since_s,),
        )
        counts = Counter(int(float(t) // bucket_s) for (t,) in rows)
        if not counts:
            return []
        return [(float(b * bucket_s), counts.get(b, 0)) for b in range(min(counts), max(counts) + 1)]

    def gold_accuracy(self, model: str | None = None) -> dict[str, GoldScore]:
        """Each auditor's decisive verdicts on gold items (of ``model``'s items only, if given: an
        auditor's record on one model's items says little about another's)."""
        if model is None:
            rows = self._db.query(
                "SELECT auditor, COUNT(*), SUM(gold_correct) FROM {p}verdicts WHERE is_gold = 1 AND kind <> 'skip' GROUP BY auditor"
            )
        else:
            rows = self._db.query(
                "SELECT v.auditor, COUNT(*), SUM(v.gold_correct) FROM {p}verdicts v JOIN {p}items i ON i.id = v.item_id"
                " WHERE v.is_gold = 1 AND v.kind <> 'skip' AND i.model = ? GROUP BY v.auditor", (model,)
            )
        return {auditor: GoldScore(auditor, int(n), int(correct or 0)) for auditor, n, correct in rows}

    def agreement(self) -> Agreement:
        """Percent agreement and Cohen's kappa between the first and second review of
        double-reviewed items (labels compared by the task kind's answer key, reject = no answer)."""
        rows = self._db.query(
            "SELECT v.item_id, v.review_round, v.kind, v.corrected_output, i.output, i.task, i.details FROM {p}verdicts v"
            " JOIN {p}items i ON i.id = v.item_id WHERE i.reviews_needed = 2 AND v.review_round IN (1, 2)"
        )
        labels: dict[int, dict[int, Any]] = defaultdict(dict)
        kinds: dict[int, tasks.Task] = {}
        for item_id, review_round, kind, corrected, output, task, details in rows:
            label = human_label(VerdictKind(kind), json.loads(output), None if corrected is None else json.loads(corrected))
            # the kind's rule at the item's recorded parameters (a detector's match_iou)
            labels[item_id][int(review_round)], kinds[item_id] = label, item_rule(task, _json_or_none(details))
        pairs = []
        for item_id, r in labels.items():
            if 1 in r and 2 in r:
                kind = kinds[item_id]
                first = kind.answer_key(r[1])
                # The kind's one rule decides agreement (a detector's boxes match by IoU, not to the pixel).
                pairs.append((first, first if kind.same_answer(r[1], r[2]) else kind.answer_key(r[2])))
        return agreement_of(pairs)

    def audited_qc_outcomes(self, model: str, version: str | None = None) -> list[QCOutcome]:
        """For each audited QC sample, its first decisive verdict: was the auto answer an error
        (anything but accept), and its inclusion probability (for the weighted estimator)."""
        return list(self.audited_qc_history(model, version))

    def audited_qc_history(self, model: str | None = None, version: str | None = None,
                           page: int = EXPORT_PAGE) -> Iterator[QCOutcome]:  # fmt: skip
        """Every audited QC sample's first decisive verdict joined to its item (model, version,
        inclusion probability, confidence), in stream order (the items' ids: ingest order, fixed
        before any verdict), read in keyset pages: :meth:`qc_stream` without the samples still
        waiting for a verdict."""
        return (s.outcome for s in self.qc_stream(model, version, page) if s.outcome is not None)

    def qc_position(self) -> int:
        """How far the QC stream is final: every QC sample at or before this position is in the
        store for good, none can appear there later. :meth:`qc_stream` reads between two
        positions, so a reader that reads on from its last position skips nothing.

        SQLite has one writer at a time and gives ids under its lock, so the position is the
        highest item id. On PostgreSQL ids come from a sequence at insert and transactions
        commit in any order; the position is the last transaction id before the oldest still
        open (``pg_snapshot_xmin``): a sample whose transaction is open when this is read waits
        for the next read, however long that transaction stays open."""
        if self._db.kind == "postgresql":
            row = self._db.query("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint - 1")
        else:
            row = self._db.query("SELECT COALESCE(MAX(id), 0) FROM {p}items")
        return int(row[0][0])

    def qc_stream(self, model: str | None = None, version: str | None = None, page: int = EXPORT_PAGE,
                  after: int = -1, upto: int | None = None) -> Iterator[QCSample]:  # fmt: skip
        """Every non-gold QC sample (AUTO_QC item) in stream order — the items' ids, assigned at
        ingest, before any verdict — each with its first decisive verdict (review round 1) or
        None while it waits, read in keyset pages on the id. ``after`` and ``upto``: positions
        (:meth:`qc_position`), the samples after one and up to the other; ``upto`` None reads
        to the end, final or not. What ``QCTracker.seed`` replays so the audited error
        estimate, its bound and the CUSUM continue across monitor restarts, and verdicts still
        to come wait behind the open samples before them; the leading monitor reads on from its
        last position to place the samples every monitor ingested (docs/qc-statistics.md, "The
        order of the audits")."""
        sql, params = "", []
        if model is not None:
            sql, params = " AND i.model = ?", [model]
        if version is not None:
            sql, params = sql + " AND i.model_version = ?", [*params, version]
        position = "i.ingest_xid" if self._db.kind == "postgresql" else "i.id"
        if after >= 0:
            sql, params = sql + f" AND {position} > ?", [*params, int(after)]
        if upto is not None:
            sql, params = sql + f" AND {position} <= ?", [*params, int(upto)]
        last_id = -1
        while True:
            rows = self._db.query(
                "SELECT i.id, i.request_id, i.qc_inclusion_prob, i.confidence, i.model, i.model_version, i.task,"
                " i.output, v.kind, v.decided_at_s, v.corrected_output, i.details FROM {p}items i"
                " LEFT JOIN {p}verdicts v ON v.item_id = i.id AND v.review_round = 1"
                f" WHERE i.route = 'AUTO_QC' AND i.is_gold = 0{sql} AND i.id > ? ORDER BY i.id LIMIT ?",
                (*params, last_id, int(page)),
            )
            for item_id, rid, p, c, m, v, task, output, kind, t, corrected, details in rows:
                outcome = None
                if kind is not None:
                    # judged at the item's recorded parameters (a detector's match_iou, its card's)
                    rule, model_output = item_rule(task, _json_or_none(details)), json.loads(output)
                    corrected_output = None if corrected is None else json.loads(corrected)
                    error = audit_error(VerdictKind(kind), rule, model_output, corrected_output)
                    parts = false = None
                    if rule.accepts_parts:
                        parts = rule.count_parts(model_output)
                        false = audit_false_parts(VerdictKind(kind), rule, model_output, corrected_output)
                    outcome = QCOutcome(rid, error, float(p), float(c), float(t), m, v, parts, false)
                yield QCSample(int(item_id), rid, m, v, float(c), float(p), outcome)
            if len(rows) < page:
                return
            last_id = int(rows[-1][0])

    # --- labels -------------------------------------------------------------------------------

    def count_labels(self, model: str | None = None, include_gold: bool = False) -> int:
        sql, params = _where(model, prefix="i.")
        gold = "" if include_gold else " AND v.is_gold = 0"
        return int(self._db.query(
            f"SELECT COUNT(*) FROM {{p}}verdicts v JOIN {{p}}items i ON i.id = v.item_id WHERE v.kind <> 'skip'{gold}{sql}",
            params,
        )[0][0])  # fmt: skip

    def labels(self, model: str | None = None, include_gold: bool = False,
               with_input: bool = True) -> Iterator[dict[str, Any]]:  # fmt: skip
        """Every decisive verdict as a training example, oldest first, read in pages (keyset on
        (decided_at_s, verdict_id)) so a large export never holds all inputs in memory. Each row
        carries its request's side of the train/certify split as computed with this store's key:
        ``audit_split`` (the value in [0, 1): certify iff below the certify share) and
        ``audit_split_key`` (which key: :attr:`qc.audit_split.SplitKey.key_id`, never the secret).
        ``with_input`` False: the input column is not read and the rows have no ``input`` key
        (``certify --from-audits`` reads inputs a chunk at a time: :meth:`request_inputs`)."""
        sql, params = _where(model, prefix="i.")
        gold = "" if include_gold else " AND v.is_gold = 0"
        input_column = ", i.input" if with_input else ""
        key = self.split_key
        after: tuple[float, str] = (float("-inf"), "")
        while True:
            rows = self._db.query(
                "SELECT v.verdict_id, v.kind, v.corrected_output, v.auditor, v.decided_at_s, v.review_round, v.is_gold,"
                " i.request_id, i.model, i.model_version, i.task, i.route, i.confidence, i.qc_inclusion_prob, i.output"
                f"{input_column} FROM {{p}}verdicts v JOIN {{p}}items i ON i.id = v.item_id"
                f" WHERE v.kind <> 'skip'{gold}{sql} AND (v.decided_at_s > ? OR (v.decided_at_s = ? AND v.verdict_id > ?))"
                " ORDER BY v.decided_at_s, v.verdict_id LIMIT ?",
                (*params, after[0], after[0], after[1], EXPORT_PAGE),
            )
            for (vid, kind, corrected, auditor, decided, review_round, is_gold, request_id, model_name, version, task,
                 route, confidence, prob, output, *input_) in rows:  # fmt: skip
                model_output = json.loads(output)
                corrected_value = None if corrected is None else json.loads(corrected)
                yield {
                    "verdict_id": vid, "request_id": request_id, "model": model_name, "model_version": version,
                    "task": task, "route": route, "confidence": float(confidence), "inclusion_prob": float(prob),
                    **({"input": json.loads(input_[0])} if with_input else {}), "model_output": model_output,
                    "human_label": human_label(VerdictKind(kind), model_output, corrected_value),
                    "verdict_kind": kind, "auditor": auditor, "decided_at_s": float(decided),
                    "review_round": int(review_round), "is_gold": bool(is_gold),
                    "audit_split": key.uniform(request_id), "audit_split_key": key.key_id,
                }  # fmt: skip
            if len(rows) < EXPORT_PAGE:
                return
            after = (float(rows[-1][4]), rows[-1][0])

    # --- one snapshot for the metrics endpoint ------------------------------------------------

    def store_stats(self, now_s: float, throughput_window_s: float = 3600.0) -> StoreStats:
        queue = self._db.query(
            "SELECT model, model_version, route, COUNT(*), MIN(ingested_at_s) FROM {p}items"
            " WHERE state = 'open' AND is_gold = 0 GROUP BY model, model_version, route"
        )
        verdicts = self._db.query(
            "SELECT i.model, i.model_version, i.route, v.kind, COUNT(*) FROM {p}verdicts v"
            " JOIN {p}items i ON i.id = v.item_id WHERE v.is_gold = 0 GROUP BY i.model, i.model_version, i.route, v.kind"
        )
        pending = self._db.query("SELECT COUNT(*) FROM {p}outbox WHERE published_at_s IS NULL")[0][0]
        return StoreStats(
            queue=[QueueStat(m, v, Route(r), int(n), max(0.0, now_s - float(t))) for m, v, r, n, t in queue],
            verdicts={(m, v, r, k): int(n) for m, v, r, k, n in verdicts},
            auditor_throughput=self.auditor_throughput(now_s - throughput_window_s),
            outbox_pending=int(pending),
        )


def agreement_of(pairs: list[tuple[str, str]]) -> Agreement:
    """Percent agreement and Cohen's kappa of paired labels (first rater, second rater)."""
    n = len(pairs)
    if n == 0:
        return Agreement(0, float("nan"), float("nan"))
    observed = sum(a == b for a, b in pairs) / n
    first, second = Counter(a for a, _ in pairs), Counter(b for _, b in pairs)
    expected = sum(first[c] * second[c] for c in first) / (n * n)
    # All labels one category for both raters: chance agreement is 1 and kappa is undefined.
    kappa = float("nan") if expected >= 1.0 else (observed - expected) / (1.0 - expected)
    return Agreement(n, observed, kappa)


def _json_or_none(text: Any) -> Any:
    """A stored JSON column's value, or None where it does not parse (the kind's default rule)."""
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return None
