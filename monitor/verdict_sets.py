"""The auditors' verdicts of one model as two disjoint sets: the part that may train a new version
and the part that may certify or measure one (the split rule: qc/audit_split.py).

Rows are those of ``auditstream labels export`` (monitor/labels.py). What each kind of row means
here, on purpose:

* one row per request: a double-reviewed item's last decisive verdict is its label (the second
  review is the adjudication);
* gold items are neither trained on nor certified with: they are planted, not traffic (no
  inclusion probability of the stream), and they measure the auditors
  (``AuditStore.gold_accuracy``), which is how a certificate against auditors becomes one against
  the truth (qc/audit_certify.py, ``against_truth``);
* a reject (the input has no right answer: unreadable, not a digit) has no label to learn, so it
  never trains; when certifying it counts as the model being wrong, as the live QC estimate
  counts it (any verdict but accept is an error of the auto answer);
* confirmations (accept) and corrections (correct) both train: the confirmations are what keep
  fine-tuning from forgetting the easy cases.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

from qc.audit_split import CERTIFY, DEFAULT_CERTIFY_SHARE, SPLIT_RULE, audit_part


@dataclass(frozen=True)
class VerdictSets:
    """A model's verdicts, one per request, split by request-id hash; gold rows apart."""

    train: list[dict[str, Any]]
    certify: list[dict[str, Any]]
    gold: list[dict[str, Any]]
    certify_share: float
    counts: dict[str, int] = field(default_factory=dict)

    def hygiene(self) -> dict[str, Any]:
        """What the card says about the split (counts, rule, which part did what)."""
        return {"split_rule": SPLIT_RULE, "certify_share": self.certify_share, **self.counts,
                "rule": ("verdicts of the train part may teach this version and are never used to certify or measure "
                         "it; `auditstream certify --from-audits` on it reads the certify part only; gold items are "
                         "used for neither (they measure the auditors); rejects have no label and never train")}


def split_verdicts(rows: Iterable[dict[str, Any]], model: str, certify_share: float = DEFAULT_CERTIFY_SHARE) -> VerdictSets:
    """``model``'s label rows as :class:`VerdictSets` (module docstring for the rules)."""
    last: dict[str, dict[str, Any]] = {}
    gold: list[dict[str, Any]] = []
    for row in rows:
        if row["model"] != model:
            continue
        if row.get("is_gold"):
            gold.append(row)
            continue
        seen = last.get(row["request_id"])
        if seen is None or (row["review_round"], row["decided_at_s"]) >= (seen["review_round"], seen["decided_at_s"]):
            last[row["request_id"]] = row
    train, certify = [], []
    for request_id, row in last.items():
        (certify if audit_part(request_id, certify_share) == CERTIFY else train).append(row)
    counts = {"verdicts_train_part": len(train), "verdicts_certify_part": len(certify), "gold_items": len(gold),
              "rejects_train_part": sum(r["verdict_kind"] == "reject" for r in train)}
    return VerdictSets(train, certify, gold, certify_share, counts)


def provenance(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Which verdicts a version learnt from: ids (sorted) and their sha256, counts, time range."""
    ids = sorted(r["verdict_id"] for r in rows)
    times = [r["decided_at_s"] for r in rows]
    return {"n_verdicts": len(ids), "verdict_ids_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest(),
            "by_kind": dict(Counter(r["verdict_kind"] for r in rows)), "by_route": dict(Counter(r["route"] for r in rows)),
            "decided_from_s": min(times, default=None), "decided_to_s": max(times, default=None),
            "versions_audited": sorted({r["model_version"] for r in rows}, key=version_order), "verdict_ids": ids}


def version_order(version: str) -> tuple[int, int, str, str]:
    """A sort key for model versions: the registry's (integers as text) by number, then any other
    text a record named (the wire takes any string, e.g. "v1" from another client), by text.
    Its verdicts are labels all the same; the key only orders the card's list."""
    if version.isascii() and version.isdigit():
        digits = version.lstrip("0") or "0"
        return 0, len(digits), digits, version  # numeric order without int(): no digit count limit
    return 1, 0, version, version
