"""Triage: the pure function that routes each prediction (docs/architecture.md).

AUTO: the answer stands and is published as a decision. HUMAN: deferred to an auditor, not
decided. AUTO_QC: the answer stands and is also sampled for a quality-control audit.

QC sampling is decided by a hash of the request id, never a random draw, so a redelivered
record gets the same route and is never sampled twice.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from auditstream.registry import TriageSpec
from auditstream.wire import Route


@dataclass(frozen=True)
class TriagePolicy:
    """A named triage configuration."""

    name: str = "threshold"
    qc_rate: float = 0.02  # inclusion probability of an auto-accepted answer (uniform sampling)

    def __post_init__(self) -> None:
        if not 0.0 <= self.qc_rate <= 1.0:
            raise ValueError(f"qc_rate={self.qc_rate} must be a probability in [0, 1]")


@dataclass(frozen=True)
class TriageDecision:
    route: Route
    reason: str
    qc_inclusion_prob: float  # P(this item is QC-sampled | its features); 1.0 for HUMAN items


def hash_uniform(request_id: str, salt: str = "qc") -> float:
    """A number in [0, 1) that is a fixed function of the request id (redelivery-safe)."""
    digest = hashlib.blake2b(f"{salt}:{request_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def triage(request_id: str, confidence: float, spec: TriageSpec, policy: TriagePolicy) -> TriageDecision:
    """Route one prediction by the model card's certified threshold and the policy."""
    if not confidence >= spec.threshold:  # also catches NaN: never auto-accept a NaN confidence
        return TriageDecision(Route.HUMAN, f"confidence {confidence:.4f} < threshold {spec.threshold:.4f}", 1.0)
    p = policy.qc_rate
    if hash_uniform(request_id) < p:
        return TriageDecision(Route.AUTO_QC, f"confidence {confidence:.4f} >= threshold; QC sample p={p:g}", p)
    return TriageDecision(Route.AUTO, f"confidence {confidence:.4f} >= threshold {spec.threshold:.4f}", p)
