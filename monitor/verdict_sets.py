"""The auditors' verdicts of one model as two disjoint sets: the part that may train a new version
and the part that may certify or measure one (the split rule: qc/audit_split.py).

Which side a row is on comes from the audit store's split key, never from a key of this module:
either the caller has the store and passes its key (``split_verdicts(..., key=store.split_key)``:
certify, promotion), or the rows carry the side the store computed when it exported them
(``audit_split``, ``audit_split_key``: every ``store.labels`` row and every labels export since
store schema 6), which is how a training host reads them (training/retrain.py): it holds no key
and hashes no request id. Rows without them (an older export) are refused there, not re-hashed
with the public legacy key: only the store knows whether its key is that one.

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

from auditstream.errors import AuditstreamError, ModelRefused
from qc.audit_split import CERTIFY, DEFAULT_CERTIFY_SHARE, TRAIN, SplitKey, check_share, kind_of, part_of, rule_of


class UnsplittableRows(AuditstreamError, ValueError):
    """Label rows that do not say which side of the store's split they are on."""


@dataclass(frozen=True)
class VerdictSets:
    """A model's verdicts, one per request, split by the store's keyed request-id hash; gold rows apart."""

    train: list[dict[str, Any]]
    certify: list[dict[str, Any]]
    gold: list[dict[str, Any]]
    certify_share: float
    counts: dict[str, int] = field(default_factory=dict)
    # which key split them: {"split_key": SECRET | LEGACY, "split_key_id": ..., "split_rule": ...}
    split: dict[str, str] = field(default_factory=dict)

    def hygiene(self) -> dict[str, Any]:
        """What the card says about the split (counts, key kind and id, rule, which part did what).
        Never the key itself."""
        return {**self.split, "certify_share": self.certify_share, **self.counts,
                "rule": ("verdicts of the train part may teach this version and are never used to certify or measure "
                         "it; `auditstream certify --from-audits` on it reads the certify part only; gold items are "
                         "used for neither (they measure the auditors); rejects have no label and never train")}


def split_verdicts(rows: Iterable[dict[str, Any]], model: str, certify_share: float = DEFAULT_CERTIFY_SHARE,
                   key: SplitKey | None = None) -> VerdictSets:
    """``model``'s label rows as :class:`VerdictSets` (module docstring for the rules). ``key``:
    the store's split key (``store.split_key``), which then decides every row's side; without it
    each row's own ``audit_split`` does (the store's, written when it was exported), and a row
    without one (unless ``certify_share`` is 0: every row trains), or rows split by different
    keys, raise :class:`UnsplittableRows`."""
    check_share(certify_share)
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
    key_ids: set[str] = set()
    for request_id, row in last.items():
        if key is not None:
            side = part_of(key.uniform(request_id), certify_share)
        elif "audit_split" in row and row.get("audit_split_key"):
            side = part_of(row["audit_split"], certify_share)
            key_ids.add(row["audit_split_key"])
        elif certify_share == 0.0:
            side = TRAIN  # nothing is kept for certifying: no key decides anything
        else:
            raise UnsplittableRows(
                f"label row of request {request_id!r} carries no audit_split (an export written before store schema 6?): "
                "which side of the store's train/certify split it is on is known to the store alone; export the labels "
                "again with this release (auditstream labels export), whose rows carry it")
        (certify if side == CERTIFY else train).append(row)
    if len(key_ids) > 1:
        raise UnsplittableRows(f"the rows were split by {len(key_ids)} different store keys ({', '.join(sorted(key_ids))}): "
                               "an export of one store's verdicts at a time, please")
    counts = {"verdicts_train_part": len(train), "verdicts_certify_part": len(certify), "gold_items": len(gold),
              "rejects_train_part": sum(r["verdict_kind"] == "reject" for r in train)}
    return VerdictSets(train, certify, gold, certify_share, counts, split_description(key, key_ids, certify_share))


def learnt_split(card: Any) -> tuple[float, str] | None:
    """The split ``card``'s version learnt by: its certify share and the split key's id ("" on a
    card written before store schema 6); None when it learnt from no verdicts. Read one way for
    every reader (certify --from-audits, promote, retrain's fine-tuning): a damaged record raises
    ModelRefused -- judging such a version on every verdict could count the ones it learnt from."""
    hygiene = card.extra.get("data_hygiene")
    if not hygiene:
        return None
    share = hygiene.get("certify_share") if isinstance(hygiene, dict) else None
    key_id = hygiene.get("split_key_id", "") if isinstance(hygiene, dict) else None
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= share <= 1.0 \
            or not isinstance(key_id, str):
        raise ModelRefused(f"{card.name} v{card.version}", f"card field extra.data_hygiene is {str(hygiene)[:80]!r}; it "
                           "must be {'certify_share': a number in [0, 1], 'split_key_id': ...} (retrain writes it): "
                           "without it the verdicts this version learnt from cannot be set apart, so it is not judged "
                           "or fine-tuned; re-publish it with retrain")
    return float(share), key_id


def split_description(key: SplitKey | None, key_ids: set[str], certify_share: float) -> dict[str, str]:
    """The split's key, by kind and id, and its rule in words (for the card: never the secret)."""
    key_id = key.key_id if key is not None else next(iter(key_ids), "")
    if not key_id:  # no row named a key: no non-gold row, or rows of an old export at share 0
        return {"split_key": "", "split_key_id": "",
                "split_rule": "none: certify share 0, every verdict trains" if certify_share == 0.0 else "no verdict to split"}
    try:
        kind, rule = kind_of(key_id), rule_of(key_id)
    except ValueError as e:
        raise UnsplittableRows(f"the rows' audit_split_key: {e}") from None
    return {"split_key": kind, "split_key_id": key_id, "split_rule": rule}


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
