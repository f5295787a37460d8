"""The cost model: does the model pay at all, and at which threshold? (docs/qc-statistics.md)

Per item, with auto-accept threshold ``t``, coverage ``c(t)`` (share auto-accepted) and risk
``r(t)`` (error rate of the auto-accepted answers), QC rate ``q`` and the costs of a human
decision ``H``, a QC audit ``A``, an undetected error ``E`` and the model's own per-item cost
``M``::

    model + humans = M + (1 - c) (H + h E) + c (q A + (1 - q) r E)
    humans only    = H + h E

where ``h`` is the humans' own error rate (default 0). An error in an audited answer is caught
by its audit, so only the unaudited share ``1 - q`` of the auto-accepted errors costs ``E``.
The cost-optimal threshold is the point of the risk-coverage curve with the lowest cost, among
those whose risk is within ``max_risk`` when a budget is given (a threshold that is cheap
because errors are cheap may still break the card's promise).

The curve comes from the model card (``card.risk_coverage``, held-out data at training time,
points ``{"threshold", "coverage", "risk"}``) or from live audits
(:func:`risk_coverage_from_audits`, weighted by inclusion probabilities like monitor/tracker.py).
Everything here is a pure function; the results carry whole curves for the dashboard to plot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np


@dataclass(frozen=True)
class Costs:
    """What one item costs, in any one currency."""

    human: float = field(metadata={"help": "cost of one human decision on a deferred item"})
    audit: float = field(metadata={"help": "cost of one QC audit of an auto-accepted answer"})
    error: float = field(metadata={"help": "cost of one wrong answer that nobody caught"})
    qc_rate: float = field(default=0.02, metadata={"help": "share of auto-accepted answers audited"})
    model: float = field(default=0.0, metadata={"help": "the model's own cost per item (inference)"})
    human_error_rate: float = field(default=0.0, metadata={"help": "share of human decisions that are wrong"})

    def __post_init__(self) -> None:
        for name in ("human", "audit", "error", "model"):
            if not getattr(self, name) >= 0.0:
                raise ValueError(f"cost {name}={getattr(self, name)} must be >= 0")
        for name in ("qc_rate", "human_error_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must be in [0, 1]")


@dataclass(frozen=True)
class CostReport:
    """Cost per item along a risk-coverage curve, humans-only for comparison, and the optimum."""

    thresholds: tuple[float, ...]
    coverage: tuple[float, ...]
    risk: tuple[float, ...]
    cost_per_item: tuple[float, ...]  # model + humans at each threshold
    humans_only: float
    optimal_threshold: float | None  # None: no point satisfies max_risk
    optimal_cost: float | None
    optimal_coverage: float | None
    optimal_risk: float | None
    savings_per_item: float | None  # humans_only - optimal_cost; > 0 means the model pays
    reason: str


def humans_only_cost(costs: Costs) -> float:
    return costs.human + costs.human_error_rate * costs.error


def cost_per_item(coverage, risk, costs: Costs):
    """Expected cost per item of model + humans (arrays broadcast)."""
    c, r = np.asarray(coverage, dtype=np.float64), np.asarray(risk, dtype=np.float64)
    if np.any((c < 0) | (c > 1)) or np.any((r < 0) | (r > 1)):
        raise ValueError(f"coverage and risk must be in [0, 1]; got coverage {c.min()}..{c.max()}, risk {r.min()}..{r.max()}")
    q = costs.qc_rate
    return costs.model + (1.0 - c) * humans_only_cost(costs) + c * (q * costs.audit + (1.0 - q) * r * costs.error)


def cost_report(points: Sequence[Mapping[str, float]], costs: Costs, max_risk: float | None = None,
                min_threshold: float | None = None, certified_threshold: float | None = None) -> CostReport:
    """Evaluate a risk-coverage curve (``[{"threshold", "coverage", "risk"}, ...]``).

    The curve's risks are point estimates (held-out split, or audits): choosing the cheapest
    threshold with ``risk <= max_risk`` is the naive rule qc/certify.py warns about, and no δ
    covers it. ``min_threshold`` (the card's certified threshold) keeps the choice where the
    certificate holds; ``certified_threshold`` only says so in the reason when the choice is
    below it."""
    if not points:
        raise ValueError("the risk-coverage curve is empty; the model card has no 'risk_coverage' points")
    try:
        t, c, r = (np.array([float(p[k]) for p in points]) for k in ("threshold", "coverage", "risk"))
    except KeyError as e:
        raise ValueError(f"risk-coverage points need 'threshold', 'coverage' and 'risk'; missing {e}") from None
    # Deferring everything (coverage 0) is always possible: it is the humans-only point.
    cost = cost_per_item(c, r, costs)
    humans = humans_only_cost(costs)
    allowed = np.ones_like(r, dtype=bool) if max_risk is None else r <= max_risk
    if min_threshold is not None:
        allowed &= t >= min_threshold
    if not allowed.any():
        above = "" if min_threshold is None else f" at or above the certified threshold {min_threshold:.4f}"
        reason = f"no threshold{above} has risk <= {max_risk}; humans only" if max_risk is not None \
            else f"no threshold on the curve is at or above {min_threshold:.4f}; humans only"
        best = None
    else:
        best = int(np.flatnonzero(allowed)[np.argmin(cost[allowed])])
        saving = humans - cost[best]
        reason = (f"threshold {t[best]:.4f}: coverage {c[best]:.3f}, risk {r[best]:.4f}, cost {cost[best]:.4g} "
                  f"vs humans only {humans:.4g} per item: the model {'pays' if saving > 0 else 'does not pay'}")
        if certified_threshold is not None and t[best] < certified_threshold:
            reason += (f"; below the certified threshold {certified_threshold:.4f}: its risk is a point estimate, "
                       "not certified")
    def pick(values: np.ndarray) -> float | None:
        return None if best is None else float(values[best])

    return CostReport(
        thresholds=tuple(map(float, t)), coverage=tuple(map(float, c)), risk=tuple(map(float, r)),
        cost_per_item=tuple(map(float, cost)), humans_only=humans, optimal_threshold=pick(t),
        optimal_cost=pick(cost), optimal_coverage=pick(c), optimal_risk=pick(r),
        savings_per_item=None if best is None else float(humans - cost[best]), reason=reason,
    )


def risk_coverage_from_audits(prediction_confidences, audited_confidences, audited_errors, inclusion_probs,
                              thresholds) -> list[dict[str, float]]:
    """A risk-coverage curve from live data.

    Coverage at ``t``: share of all predictions with confidence >= ``t``. Risk at ``t``: the
    Hajek error rate of audited items with confidence >= ``t``, each weighted by ``1 / pi``.
    Deferred items are all audited (``pi = 1``) and QC items carry their sampling probability,
    so the union is a weighted sample of every confidence band, also below today's threshold.
    Thresholds with no audited item above them are left out.
    """
    conf = np.sort(np.asarray(prediction_confidences, dtype=np.float64))
    a_c = np.asarray(audited_confidences, dtype=np.float64)
    y = np.asarray(audited_errors, dtype=np.float64)
    pi = np.asarray(inclusion_probs, dtype=np.float64)
    if conf.size == 0 or not (a_c.shape == y.shape == pi.shape) or np.any((pi <= 0) | (pi > 1)):
        raise ValueError(f"need predictions and audits with matching shapes and pi in (0, 1]; got {conf.size} "
                         f"predictions, audits {a_c.shape}/{y.shape}/{pi.shape}")
    w = 1.0 / pi
    curve = []
    for t in sorted(map(float, thresholds), reverse=True):
        above = a_c >= t
        if not above.any():
            continue
        coverage = 1.0 - np.searchsorted(conf, t, side="left") / conf.size
        curve.append({"threshold": t, "coverage": float(coverage), "risk": float((w * y)[above].sum() / w[above].sum())})
    return curve
