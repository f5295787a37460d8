"""Which audited items may train a model and which may certify or measure it.

A verdict that taught a version must never also judge it: the certificate would then be computed
on the model's own training data. Audited items are split once, for good, by a keyed hash of
their request id (:func:`audit_part`): the same request always falls on the same side, whichever
version, export or retraining round looks at it, and the side is independent of the item's
answer, confidence and route, so each part is still a sample of the audited traffic with the
inclusion probabilities it was drawn with.

The key (:class:`SplitKey`) belongs to the audit store that holds the items, not to this module:
clients choose their request ids, so a split they could compute would let them send their hard
inputs with ids that land on the train side, and the certify side would no longer be independent
of the answer. A store created by this release draws a random secret key once, when its schema is
created, and keeps it for its life (store/schema.py, ``meta`` row ``audit_split_key``): nobody
without the store can compute a side, and no item ever changes side. A store that already held
audited items when it was upgraded keeps the public legacy key (``blake2b('audit-split:' +
request_id)``, :data:`LEGACY_SPLIT_SALT`) so that no item of its history changes side; its split
stays predictable by clients, and says so (:attr:`SplitKey.kind`, :meth:`SplitKey.rule`).

Pure: the key's bytes come from the caller (the store draws them), nothing here does I/O.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

from qc.triage import hash_uniform

TRAIN, CERTIFY = "train", "certify"
DEFAULT_CERTIFY_SHARE = 0.5
LEGACY_SPLIT_SALT = "audit-split"  # the public key every store used before per-store keys
SECRET, LEGACY = "store-secret", "legacy-public"  # the kinds of key
SECRET_BYTES = 32
_STORED_SECRET, _STORED_LEGACY = "secret:", "legacy:"  # how a key is kept in the store's meta table
_PERSON = b"audit-split"  # blake2b personalisation: this hash is used for nothing else


@dataclass(frozen=True)
class SplitKey:
    """The key of one store's train/certify split. ``repr`` and :attr:`key_id` never show the
    secret; :meth:`stored` (the store's meta value) does, and is written nowhere else."""

    kind: str  # SECRET or LEGACY
    secret: bytes = field(default=b"", repr=False)  # SECRET: the random key; LEGACY: unused

    def __post_init__(self) -> None:
        if self.kind == SECRET and not 16 <= len(self.secret) <= 64:
            raise ValueError(f"a secret split key has 16..64 bytes, not {len(self.secret)}")
        if self.kind not in (SECRET, LEGACY) or (self.kind == LEGACY and self.secret):
            raise ValueError(f"split key kind {self.kind!r} must be {SECRET!r} (with a secret) or {LEGACY!r} (without)")

    @classmethod
    def new(cls, secret: bytes) -> "SplitKey":
        """A secret key from ``secret`` (random bytes the caller drew, e.g. ``secrets.token_bytes(32)``)."""
        return cls(SECRET, bytes(secret))

    @classmethod
    def legacy(cls) -> "SplitKey":
        """The public key of stores that held audited items before per-store keys."""
        return cls(LEGACY)

    @classmethod
    def from_stored(cls, value: str) -> "SplitKey":
        """The key a store keeps (:meth:`stored`); ValueError for anything else."""
        if value == _STORED_LEGACY + LEGACY_SPLIT_SALT:
            return cls.legacy()
        if value.startswith(_STORED_SECRET):
            try:
                return cls.new(bytes.fromhex(value[len(_STORED_SECRET):]))
            except ValueError:
                pass
        raise ValueError("the store's audit_split_key is neither 'secret:<hex>' nor 'legacy:audit-split'")

    def stored(self) -> str:
        """The value the store keeps in its meta table (holds the secret)."""
        return _STORED_LEGACY + LEGACY_SPLIT_SALT if self.kind == LEGACY else _STORED_SECRET + self.secret.hex()

    @property
    def key_id(self) -> str:
        """Which key, without the secret: ``secret:<16 hex of a hash of it>`` or ``legacy:audit-split``.
        Two stores' secret keys have different ids; the id tells nothing about any side."""
        if self.kind == LEGACY:
            return _STORED_LEGACY + LEGACY_SPLIT_SALT
        return _STORED_SECRET + hashlib.sha256(b"auditstream audit-split key id\0" + self.secret).hexdigest()[:16]

    def uniform(self, request_id: str) -> float:
        """The request's split value in [0, 1): certify iff it is below the certify share."""
        if self.kind == LEGACY:
            return hash_uniform(request_id, LEGACY_SPLIT_SALT)
        digest = hashlib.blake2b(request_id.encode(), key=self.secret, digest_size=8, person=_PERSON).digest()
        return int.from_bytes(digest, "big") / 2**64

    def rule(self) -> str:
        """The split rule in words, for cards and exports (never the secret)."""
        return rule_of(self.key_id)


def kind_of(key_id: str) -> str:
    """The kind of key (:data:`SECRET` or :data:`LEGACY`) a :attr:`SplitKey.key_id` names."""
    if key_id == _STORED_LEGACY + LEGACY_SPLIT_SALT:
        return LEGACY
    if key_id.startswith(_STORED_SECRET) and len(key_id) > len(_STORED_SECRET):
        return SECRET
    raise ValueError(f"{key_id!r} names no split key ('secret:<id>' or 'legacy:audit-split')")


def rule_of(key_id: str) -> str:
    """The split rule of the key :attr:`SplitKey.key_id` names, in words."""
    if kind_of(key_id) == LEGACY:
        return ("blake2b('audit-split:' + request_id) / 2^64 < certify_share -> certify, else train "
                "(legacy public key: the store held audited items before per-store split keys, so its split "
                "was kept; anyone who knows a request id can compute its side)")
    return (f"blake2b(request_id, key=the audit store's secret split key {key_id}) / 2^64 < certify_share "
            "-> certify, else train (the key was drawn at random when the store was created and never leaves "
            "it: a client cannot compute a request's side)")


def check_share(certify_share: float) -> float:
    if isinstance(certify_share, bool) or not 0.0 <= certify_share <= 1.0:
        raise ValueError(f"certify_share={certify_share} must be in [0, 1]")
    return certify_share


def part_of(split_value: float, certify_share: float = DEFAULT_CERTIFY_SHARE) -> str:
    """The side of a request whose split value (:meth:`SplitKey.uniform`) is ``split_value``."""
    if isinstance(split_value, bool) or not isinstance(split_value, (int, float)) or not math.isfinite(split_value) \
            or not 0.0 <= split_value < 1.0:
        raise ValueError(f"split value {split_value!r} must be a number in [0, 1)")
    return CERTIFY if split_value < check_share(certify_share) else TRAIN


def audit_part(request_id: str, certify_share: float, key: SplitKey) -> str:
    """``"certify"`` for a ``certify_share`` of request ids (by ``key``'s hash), ``"train"`` for the rest."""
    if not isinstance(key, SplitKey):
        raise TypeError(f"key must be the store's SplitKey (AuditStore.split_key), not {type(key).__name__}")
    return part_of(key.uniform(request_id), certify_share)
