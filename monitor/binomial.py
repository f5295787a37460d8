"""Exact binomial confidence bounds (Clopper-Pearson), shared by certification at training time
(monitor/certify.py) and the live QC error estimate (monitor/qc.py)."""

from __future__ import annotations

from scipy.stats import beta


def _check(errors: int, n: int, alpha: float) -> None:
    if n < 0 or not 0 <= errors <= n:
        raise ValueError(f"need 0 <= errors <= n, got errors={errors}, n={n}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha={alpha} must be in (0, 1)")


def upper_bound(errors: int, n: int, delta: float) -> float:
    """One-sided exact upper bound: P(true rate <= bound) >= 1 - delta.

    With zero errors this is ``1 - delta ** (1 / n)``; with ``n == 0`` nothing is known (1.0).
    """
    _check(errors, n, delta)
    if n == 0 or errors == n:
        return 1.0
    return float(beta.ppf(1.0 - delta, errors + 1, n - errors))


def lower_bound(errors: int, n: int, delta: float) -> float:
    """One-sided exact lower bound: P(true rate >= bound) >= 1 - delta."""
    _check(errors, n, delta)
    if errors == 0:
        return 0.0
    return float(beta.ppf(delta, errors, n - errors + 1))


def clopper_pearson(errors: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Two-sided exact interval with coverage >= ``confidence``."""
    alpha = 1.0 - confidence
    return lower_bound(errors, n, alpha / 2), upper_bound(errors, n, alpha / 2)
