"""Which audited items may train a model and which may certify or measure it.

A verdict that taught a version must never also judge it: the certificate would then be computed
on the model's own training data. Audited items are split once, for good, by a hash of their
request id (:func:`audit_part`): the same request always falls on the same side, whichever
version, export or retraining round looks at it, and the side is independent of the item's
answer, confidence and route, so each part is still a sample of the audited traffic with the
inclusion probabilities it was drawn with.
"""

from __future__ import annotations

from qc.triage import hash_uniform

TRAIN, CERTIFY = "train", "certify"
SPLIT_SALT = "audit-split"  # its own salt: independent of the QC draw and of the CUSUM's
DEFAULT_CERTIFY_SHARE = 0.5
SPLIT_RULE = "blake2b('audit-split:' + request_id) / 2^64 < certify_share -> certify, else train"


def audit_part(request_id: str, certify_share: float = DEFAULT_CERTIFY_SHARE) -> str:
    """``"certify"`` for a ``certify_share`` of request ids (by hash), ``"train"`` for the rest."""
    if not 0.0 <= certify_share <= 1.0:
        raise ValueError(f"certify_share={certify_share} must be in [0, 1]")
    return CERTIFY if hash_uniform(request_id, SPLIT_SALT) < certify_share else TRAIN
