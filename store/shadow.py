"""Shadow answers joined with verdicts: what the paired promotion gate (qc/paired.py) counts.

A candidate version served in shadow (``auditstream serve --model NAME --version V --shadow``)
writes a prediction flagged ``shadow`` for every live request and nothing that acts. The monitor
ingests those predictions here (:meth:`ShadowAnswers.ingest`, one transaction per batch,
idempotent on (request id, model, version)), and :meth:`ShadowAnswers.paired_stream` joins them
with the audit items of the live version in the store's ingest order: for each item with its
label -- the decisive verdict of its last needed review round (``items.reviews_needed``: a
double-reviewed item's second review is the adjudication), the verdict ``certify --from-audits``
and ``retrain`` take as the label (monitor/verdict_sets.py) -- was the live answer wrong, and was
the candidate's (``None``: the candidate has not answered it yet)? Items still waiting for that
verdict (a double-reviewed item with only its first review is one) keep their place
(``waiting``): the gate counts a prefix of that order, not whichever verdicts exist
(qc/promotion.py, ``pairs_by_stratum``). The QC error estimates read the first decisive verdict
instead (``qc_stream``), for promptness; the gate judges by the adjudicated label, so that it and
certify never disagree about the same request (docs/qc-statistics.md, "Which audited pairs count").

Volume: only audited requests matter, but a shadow answer may arrive before or after its
request's audit item (two consumers, two speeds). So every shadow answer is written, and
:meth:`ShadowAnswers.prune` (each statistics tick) deletes those older than the retention whose
request has no audit item: the table holds the audited requests' answers plus at most
``retention_s`` of the shadow's output.

**Agreement with live on all traffic.** A shadow that loaded the live version beside it
(serving/consumer.py, ``LiveReference``) says in each prediction whether its answer is the same
as live's by the kind's rule. Those flags go to ``{p}shadow_agreement``, one small row per
request (the two answers kept only where they differ), never pruned while the store lives:
where the answers agree, both are right or both wrong, so the request is a concordant pair
without any audit; where they differ, a verdict on the request (any version's audit item)
settles who was wrong (:meth:`ShadowAnswers.traffic_pairs`), and an unaudited disagreement is
counted against the candidate by the gate (qc/paired.py, :func:`qc.paired.traffic_counts`).

Two tables, ``{p}shadow_answers`` and ``{p}shadow_agreement``, created on first use (``IF NOT
EXISTS``), dropped with the store.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Sequence

from auditstream import tasks
from auditstream.wire import Prediction, VerdictKind
from store.records import audit_error, dumps, human_label, item_rule
from store.schema import fill_types

log = logging.getLogger(__name__)

_DDL = (
    """
    CREATE TABLE IF NOT EXISTS {p}shadow_answers (
        request_id TEXT NOT NULL,
        model TEXT NOT NULL,
        model_version TEXT NOT NULL,
        output TEXT NOT NULL,               -- JSON of the candidate's answer
        confidence {float} NOT NULL,
        route TEXT NOT NULL,                -- what its own triage would have done
        ingested_at_s {float} NOT NULL,
        PRIMARY KEY (request_id, model, model_version)
    )""",
    "CREATE INDEX IF NOT EXISTS {p}shadow_answers_time ON {p}shadow_answers (ingested_at_s)",
    """
    CREATE TABLE IF NOT EXISTS {p}shadow_agreement (
        request_id TEXT NOT NULL,
        model TEXT NOT NULL,
        model_version TEXT NOT NULL,        -- the candidate
        live_version TEXT NOT NULL,         -- the version it was compared with
        same_answer INTEGER NOT NULL,       -- 1: the same answer by the kind's rule
        candidate_output TEXT,              -- JSON, only where the answers differ
        live_output TEXT,                   -- JSON, only where the answers differ
        PRIMARY KEY (request_id, model, model_version)
    )""",
    "CREATE INDEX IF NOT EXISTS {p}shadow_agreement_pair ON {p}shadow_agreement (model, model_version, live_version)",
)


@dataclass(frozen=True)
class PairedAudit:
    """One audited item of the live version and how both versions fared on it."""

    request_id: str
    route: str  # the live version's route: HUMAN (deferred) or AUTO_QC (QC sample)
    live_wrong: bool
    candidate_wrong: bool | None  # None: the candidate has no shadow answer for it (yet)
    # True: no label yet (no decisive verdict of the item's last needed review round;
    # paired_stream only); live_wrong is then False and
    # candidate_wrong True where the candidate answered -- the worst case, as the gate counts it
    waiting: bool = False


@dataclass(frozen=True)
class TrafficPair:
    """One request both versions answered, whatever its route: the same answer or not, and where
    not, who was wrong by the label of the request's audit item (the decisive verdict of its last
needed review round; None: nobody audited it, or its adjudication is still to come)."""

    request_id: str
    same_answer: bool
    verdict: tuple[bool, bool] | None = None  # (live wrong, candidate wrong); only where the answers differ


def live_reference(prediction: Prediction) -> tuple[str, bool, Any] | None:
    """(live version, same answer, live's answer) from a shadow prediction's
    ``details["live_reference"]``; None when it carries none or one of the wrong shape (a record
    from another client is evidence only when it is well formed)."""
    ref = prediction.details.get("live_reference") if isinstance(prediction.details, dict) else None
    if not isinstance(ref, dict):
        return None
    version, same = ref.get("version"), ref.get("same_answer")
    if not isinstance(version, str) or not version or not isinstance(same, bool):
        return None
    return version, same, ref.get("output")


def wrong_by_label(rule: tasks.Task, label: Any, answer: Any) -> bool:
    """Is ``answer`` wrong against the auditor's answer (``None``, a reject: every answer is)?"""
    return label is None or not rule.same_answer(answer, label)


def wrong_answers(rule: tasks.Task, kind: VerdictKind, live_output: Any, corrected_output: Any,
                  candidate_output: Any) -> tuple[bool, bool]:
    """(live wrong, candidate wrong) by the verdict, with the kind's own answer equality: the live
    answer as the QC statistics judge it (:func:`store.records.audit_error`), the candidate's
    against the auditor's answer (a reject: no valid answer exists, so any answer is wrong)."""
    live_wrong = audit_error(kind, rule, live_output, corrected_output)
    return live_wrong, wrong_by_label(rule, human_label(kind, live_output, corrected_output), candidate_output)


class ShadowAnswers:
    """The shadow answers of one store. ``ShadowAnswers(store)``; cheap to build."""

    def __init__(self, store: Any) -> None:
        self._db = store._db  # shares the store's connections and transactions
        with self._db.write() as cur:
            for text in _DDL:
                cur.run(fill_types(text, self._db.types))

    def ingest(self, predictions: Sequence[Prediction], now_s: float) -> int:
        """Store shadow predictions (others are ignored) and their agreement with live; returns
        how many were new."""
        rows = sorted({(p.request_id, p.model, p.model_version): p for p in predictions if p.shadow}.items())
        new = 0
        with self._db.write() as cur:
            for (rid, model, version), p in rows:
                new += cur.run(
                    "INSERT INTO {p}shadow_answers (request_id, model, model_version, output, confidence, route,"
                    " ingested_at_s) VALUES (?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (request_id, model, model_version) DO NOTHING",
                    (rid, model, version, dumps(p.output), float(p.confidence), p.route.value, float(now_s)))
                reference = live_reference(p)
                if reference is None:
                    continue
                live_version, same, live_output = reference
                cur.run(
                    "INSERT INTO {p}shadow_agreement (request_id, model, model_version, live_version, same_answer,"
                    " candidate_output, live_output) VALUES (?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (request_id, model, model_version) DO NOTHING",
                    (rid, model, version, live_version, int(same), None if same else dumps(p.output),
                     None if same else dumps(live_output)))
        return new

    def prune(self, now_s: float, retention_s: float) -> int:
        """Delete answers older than ``retention_s`` whose request has no audit item; returns how many."""
        with self._db.write() as cur:
            return cur.run(
                "DELETE FROM {p}shadow_answers WHERE ingested_at_s < ? AND NOT EXISTS (SELECT 1 FROM {p}items i"
                " WHERE i.request_id = {p}shadow_answers.request_id AND i.model = {p}shadow_answers.model)",
                (float(now_s) - retention_s,))

    def candidates(self, model: str) -> dict[str, int]:
        """Versions of ``model`` with shadow answers kept, and how many."""
        rows = self._db.query("SELECT model_version, COUNT(*) FROM {p}shadow_answers WHERE model = ?"
                              " GROUP BY model_version", (model,))
        return {v: int(n) for v, n in rows}

    def compared(self, model: str, candidate_version: str) -> int:
        """How many requests ``candidate_version``'s shadow compared with a live version."""
        rows = self._db.query("SELECT COUNT(*) FROM {p}shadow_agreement WHERE model = ? AND model_version = ?",
                              (model, candidate_version))
        return int(rows[0][0])

    def paired_audits(self, model: str, live_version: str, candidate_version: str) -> list[PairedAudit]:
        """Every audited (non-gold) item of ``model`` v``live_version`` with its label (the decisive
        verdict of its last needed review round), paired with the candidate's shadow answer where there is one, in the store's
        ingest order. The promotion gate reads :meth:`paired_stream` (these and the items still
        waiting): the decided ones alone are a set chosen by when auditors decide."""
        return [a for a in self.paired_stream(model, live_version, candidate_version) if not a.waiting]

    def paired_stream(self, model: str, live_version: str, candidate_version: str) -> list[PairedAudit]:
        """Every (non-gold) audit item of ``model`` v``live_version`` in the order the store
        received it (``items.id``, assigned at ingest, before any verdict: stream order, as
        ``qc_stream`` and ``certify --from-audits`` read), decided or not: an item without a
        decisive verdict of its last needed review round yet (``items.reviews_needed``: a
        double-reviewed item's round 2, the adjudication, which certify and retrain take as the
        label) is ``waiting`` (its candidate_wrong True where the candidate
        answered, the worst case; None where it did not). What the paired gate counts
        (qc.promotion.pairs_by_stratum, docs/qc-statistics.md "Which audited pairs count")."""
        rows = self._db.query(
            "SELECT i.request_id, i.route, i.task, i.output, v.kind, v.corrected_output, s.output, i.details"
            " FROM {p}items i LEFT JOIN {p}verdicts v ON v.item_id = i.id AND v.review_round >= i.reviews_needed"
            " AND v.kind <> 'skip'"
            " LEFT JOIN {p}shadow_answers s ON s.request_id = i.request_id AND s.model = i.model"
            " AND s.model_version = ?"
            " WHERE i.model = ? AND i.model_version = ? AND i.is_gold = 0"
            " ORDER BY i.id",
            (candidate_version, model, live_version))
        out = []
        for rid, route, task, output, kind, corrected, shadow, details in rows:
            if kind is None:
                out.append(PairedAudit(rid, route, False, None if shadow is None else True, waiting=True))
                continue
            rule, live_output = item_rule(task, json.loads(details)), json.loads(output)
            corrected_output = None if corrected is None else json.loads(corrected)
            if shadow is None:
                live_wrong = audit_error(VerdictKind(kind), rule, live_output, corrected_output)
                out.append(PairedAudit(rid, route, live_wrong, None))
                continue
            live_wrong, cand_wrong = wrong_answers(rule, VerdictKind(kind), live_output, corrected_output,
                                                   json.loads(shadow))
            out.append(PairedAudit(rid, route, live_wrong, cand_wrong))
        return out

    def traffic_pairs(self, model: str, live_version: str, candidate_version: str) -> list[TrafficPair]:
        """Every request ``candidate_version`` answered in shadow beside its comparison with
        ``live_version``, audited or not; where the answers differ, the label of the request's audit item (a non-gold item of any
        version of ``model``; the decisive verdict of its last needed review round, the adjudication
        of a double-reviewed item; of several such items, the one decided first) says who was wrong."""
        rows = self._db.query(
            "SELECT request_id, same_answer, candidate_output, live_output FROM {p}shadow_agreement"
            " WHERE model = ? AND model_version = ? AND live_version = ? ORDER BY request_id",
            (model, candidate_version, live_version))
        verdicts: dict[str, tuple[str, Any, str, Any, Any]] = {}
        for rid, task, output, kind, corrected, details in self._db.query(
                "SELECT a.request_id, i.task, i.output, v.kind, v.corrected_output, i.details FROM {p}shadow_agreement a"
                " JOIN {p}items i ON i.request_id = a.request_id AND i.model = a.model"
                " JOIN {p}verdicts v ON v.item_id = i.id"
                " WHERE a.model = ? AND a.model_version = ? AND a.live_version = ? AND a.same_answer = 0"
                " AND i.is_gold = 0 AND v.review_round >= i.reviews_needed AND v.kind <> 'skip'"
                " ORDER BY v.decided_at_s, v.verdict_id",
                (model, candidate_version, live_version)):
            verdicts.setdefault(rid, (task, json.loads(output), kind, None if corrected is None else json.loads(corrected),
                                      details))
        out = []
        for rid, same, cand_output, live_output in rows:
            if same or rid not in verdicts:
                out.append(TrafficPair(rid, bool(same)))
                continue
            task, audited_output, kind, corrected, details = verdicts[rid]
            try:
                rule = item_rule(task, json.loads(details))
                label = human_label(VerdictKind(kind), audited_output, corrected)
                live_wrong, cand_wrong = (wrong_by_label(rule, label, json.loads(answer))
                                          for answer in (live_output, cand_output))
            except Exception as e:  # noqa: BLE001 - an answer the rule cannot judge settles nothing
                log.warning("request %r: the verdict could not judge the two answers: %r", rid, e)
                out.append(TrafficPair(rid, False))
                continue
            out.append(TrafficPair(rid, False, (bool(live_wrong), bool(cand_wrong))))
        return out
