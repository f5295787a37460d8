"""Triage: the pure function that routes each prediction (docs/qc-statistics.md, "Triage").

AUTO: the answer stands and is published as a decision. HUMAN: deferred to an auditor, not
decided. AUTO_QC: the answer stands and is also sampled for a quality-control audit.

The route is a function of (request id, confidence, partial confidences, the model card's
:class:`~auditstream.registry.TriageSpec`, the named policy) and nothing else:

* A threshold above 1 (``nextafter(1, 2)``: what a card that certified nothing carries) never
  auto-accepts, whatever the confidence (the task kinds publish confidences in [0, 1]; this
  holds even for a confidence that is not).
* An answer is auto-accepted when its confidence clears the certified threshold *and*, for
  sequences and detections, every part (each character, each box) clears the part threshold —
  one unreadable digit makes a ZIP code unreadable, however sure the model is of the others.
* QC sampling is decided by :func:`hash_uniform` of the request id, never a random draw, so a
  redelivered record gets the same route and is never sampled twice. The hash is salted with
  the policy's secret ``salt`` (``AUDITSTREAM_QC_SALT``): request ids are chosen by clients,
  and with a public salt a producer could pick ids that are never audited. The salt is kept out
  of reprs and logs; the monitor's CUSUM thinning uses a salt derived from the same secret
  (:func:`derived_salt`).
* Uniform sampling audits every auto-accepted answer with probability ``qc_rate``;
  risk-weighted sampling audits low-confidence answers more (:func:`inclusion_probability`).
  Either way the inclusion probability travels with the item, so the error estimate in
  monitor/tracker.py stays unbiased (Horvitz-Thompson / Hajek weighting).
* Capacity: when the human queue is at or over ``max_human_queue_depth``, a deferred item is
  still deferred (HUMAN) — the policy never auto-accepts more to relieve the queue, because that
  would silently break the certified risk. The decision says so (``over_capacity`` and the
  reason) and the monitor exports ``auditstream_human_queue_over_capacity`` for the alert.
  The queue depth changes only the reason text and the flag, never the route or the inclusion
  probability, so routing stays redelivery-safe.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, Sequence

from auditstream.registry import TriageSpec
from auditstream.settings import Settings
from auditstream.wire import Route

SAMPLING = ("uniform", "risk-weighted")
DEFAULT_QC_SALT = "qc"  # public: set AUDITSTREAM_QC_SALT to a secret in production


@dataclass(frozen=True)
class TriagePolicy:
    """A named, frozen triage configuration (see :data:`POLICIES`)."""

    name: str = "uniform"
    qc_rate: float = 0.02  # uniform: inclusion probability of every auto-accepted answer
    sampling: str = "uniform"  # "uniform" or "risk-weighted"
    # risk-weighted: pi(c) = clip(qc_rate * ((1 - c) / reference_error) ** risk_exponent, floor, cap)
    reference_error: float = 0.01  # error rate of accepted answers; pi = qc_rate where 1 - c equals it
    risk_exponent: float = 0.5  # Neyman allocation for a calibrated model (see inclusion_probability)
    qc_floor: float = 0.005  # every auto-accepted answer keeps at least this chance of an audit
    qc_cap: float = 0.5
    part_threshold: float | None = None  # per character / box; None: the card's threshold
    max_human_queue_depth: int | None = None  # None: no capacity check
    # Secret salt of the QC sampling hash; repr=False so a logged policy never shows it.
    salt: str = field(default=DEFAULT_QC_SALT, repr=False)

    def __post_init__(self) -> None:
        for name in ("qc_rate", "qc_floor", "qc_cap"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value} must be a probability in [0, 1]")
        if self.sampling not in SAMPLING:
            raise ValueError(f"sampling={self.sampling!r} must be one of {SAMPLING}")
        if self.sampling == "risk-weighted":
            if not 0.0 < self.qc_floor <= self.qc_cap:
                raise ValueError(f"need 0 < qc_floor <= qc_cap, got qc_floor={self.qc_floor}, qc_cap={self.qc_cap}")
            if not 0.0 < self.reference_error < 1.0:
                raise ValueError(f"reference_error={self.reference_error} must be in (0, 1)")
            if not self.risk_exponent > 0.0:
                raise ValueError(f"risk_exponent={self.risk_exponent} must be > 0")
        if self.part_threshold is not None and not 0.0 <= self.part_threshold <= 1.0:
            raise ValueError(f"part_threshold={self.part_threshold} must be in [0, 1]")
        if self.max_human_queue_depth is not None and self.max_human_queue_depth < 1:
            raise ValueError(f"max_human_queue_depth={self.max_human_queue_depth} must be >= 1 (or None)")
        if not self.salt:
            raise ValueError("salt must be a non-empty string (AUDITSTREAM_QC_SALT)")  # the value is secret: not echoed

    @property
    def min_inclusion_prob(self) -> float:
        """The smallest QC inclusion probability this policy gives an auto-accepted answer (0 when
        it samples none): the monitor bounds the audit weights ``1 / pi`` by its inverse."""
        return self.qc_rate if self.sampling == "uniform" else min(self.qc_floor, self.qc_cap)


# The named policies; pick one with :func:`get_policy` (overrides such as a qc_rate from settings).
POLICIES: Mapping[str, TriagePolicy] = MappingProxyType({
    "uniform": TriagePolicy(name="uniform"),
    "risk-weighted": TriagePolicy(name="risk-weighted", sampling="risk-weighted"),
    "no-qc": TriagePolicy(name="no-qc", qc_rate=0.0),
})


def get_policy(name: str, **overrides: Any) -> TriagePolicy:
    """The registered policy ``name`` with ``overrides`` applied (validated again)."""
    if name not in POLICIES:
        raise ValueError(f"unknown triage policy {name!r}; known: {sorted(POLICIES)}")
    return dataclasses.replace(POLICIES[name], **overrides)


def policy_for(settings: Settings, min_qc_rate: float = 0.0) -> TriagePolicy:
    """The configured policy (``AUDITSTREAM_TRIAGE_POLICY``, ``_QC_RATE``, ``_QC_SALT``, ...) as
    consumers apply it to a model whose kind needs at least ``min_qc_rate`` of its auto answers
    audited (policies: off-policy evaluation needs random audits; 'no-qc' does not waive it)."""
    qc_rate = max(settings.qc_rate, min_qc_rate)
    if settings.triage_policy == "no-qc" and not min_qc_rate:
        qc_rate = 0.0
    return get_policy(settings.triage_policy, qc_rate=qc_rate,
                      max_human_queue_depth=settings.max_human_queue_depth or None, salt=settings.qc_salt)


@dataclass(frozen=True)
class TriageDecision:
    route: Route
    reason: str
    qc_inclusion_prob: float  # P(this item is QC-sampled | its features); 1.0 for HUMAN items
    over_capacity: bool = False  # a HUMAN item joined a queue at or over its configured depth


def hash_uniform(request_id: str, salt: str = DEFAULT_QC_SALT) -> float:
    """A number in [0, 1) that is a fixed function of (salt, request id) (redelivery-safe)."""
    digest = hashlib.blake2b(f"{salt}:{request_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def derived_salt(secret: str, purpose: str) -> str:
    """The salt of another hash-sampling ``purpose`` (e.g. ``"cusum"``) under the QC ``secret``:
    independent of the QC draw, and as unpredictable as the secret. With the public default
    secret it is ``purpose`` itself, the salt those draws always used, so an unconfigured
    deployment keeps its behaviour."""
    return purpose if secret == DEFAULT_QC_SALT else f"{secret}:{purpose}"


def inclusion_probability(confidence: float, policy: TriagePolicy) -> float:
    """QC inclusion probability of an auto-accepted answer with this confidence.

    Uniform: ``qc_rate``. Risk-weighted: ``clip(qc_rate * ((1 - c) / r_ref) ** gamma, floor,
    cap)``, non-increasing in ``c``; ``1 - c`` stands in for the item's error probability. The
    default ``gamma = 1/2`` is the Neyman allocation: the variance of the weighted estimate,
    ``sum p_i (1 - p_i) / pi_i``, is smallest for a fixed audit budget ``sum pi_i`` when
    ``pi_i ~ sqrt(p_i (1 - p_i))``. ``gamma = 1`` audits low confidence harder still. The floor
    keeps every answer auditable (an error at confidence 0.9999 must still be catchable, and the
    weights ``1/pi`` stay bounded); the cap keeps the audit load bounded.
    """
    if policy.sampling == "uniform":
        return policy.qc_rate
    risk = min(max(1.0 - confidence, 0.0), 1.0)
    raw = policy.qc_rate * (risk / policy.reference_error) ** policy.risk_exponent
    return min(policy.qc_cap, max(policy.qc_floor, raw))


def _weakest_part(parts: Sequence[float]) -> tuple[int, float]:
    """Index and value of the least confident part; a NaN part counts as the weakest."""
    for index, value in enumerate(parts):
        if math.isnan(value):
            return index, float("nan")
    index = min(range(len(parts)), key=lambda i: parts[i])
    return index, float(parts[index])


def triage(
    request_id: str,
    confidence: float,
    spec: TriageSpec,
    policy: TriagePolicy,
    *,
    part_confidences: Sequence[float] | None = None,
    human_queue_depth: int | None = None,
) -> TriageDecision:
    """Route one prediction by the model card's certified threshold and the policy.

    ``part_confidences``: per-character (sequence) or per-box (detection) confidences; the
    answer is auto-accepted only if every one clears ``policy.part_threshold`` (default: the
    card's threshold). ``human_queue_depth``: the current depth of the human queue, compared
    with ``policy.max_human_queue_depth`` (the result flags it, never changes the route).
    """
    threshold = spec.threshold
    human_reason = None
    if not threshold <= 1.0:  # also NaN: a card that certified nothing accepts nothing, whatever the confidence
        human_reason = (f"threshold {threshold!r} is above 1: the card certified no threshold, nothing is "
                        "auto-accepted")
    elif not confidence >= threshold:  # also catches NaN: never auto-accept a NaN confidence
        human_reason = f"confidence {confidence:.4f} < threshold {threshold:.4f}"
    elif part_confidences is not None and len(part_confidences) > 0:
        part_threshold = threshold if policy.part_threshold is None else policy.part_threshold
        index, weakest = _weakest_part(part_confidences)
        if not weakest >= part_threshold:
            human_reason = (f"part {index} of {len(part_confidences)} has confidence {weakest:.4f} "
                            f"< part threshold {part_threshold:.4f}")
    if human_reason is not None:
        over = (policy.max_human_queue_depth is not None and human_queue_depth is not None
                and human_queue_depth >= policy.max_human_queue_depth)
        if over:
            human_reason += (f"; human queue over capacity ({human_queue_depth} >= {policy.max_human_queue_depth}): "
                             "deferred anyway, never auto-accepted")
        return TriageDecision(Route.HUMAN, human_reason, 1.0, over_capacity=over)
    p = inclusion_probability(confidence, policy)
    how = "uniform" if policy.sampling == "uniform" else "risk-weighted"
    if hash_uniform(request_id, policy.salt) < p:
        return TriageDecision(Route.AUTO_QC, f"confidence {confidence:.4f} >= threshold {threshold:.4f}; "
                              f"QC sample ({how}, p={p:.4g})", p)
    return TriageDecision(Route.AUTO, f"confidence {confidence:.4f} >= threshold {threshold:.4f}", p)
