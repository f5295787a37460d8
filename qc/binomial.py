"""Binomial confidence bounds: exact Clopper-Pearson, shared by certification at training time
(qc/certify.py) and the live QC error estimate (monitor/tracker.py), and its survey-weighted
version for audits drawn with unequal inclusion probabilities.

Weighted estimator. A QC audit of item ``i`` happened with inclusion probability ``pi_i`` (set by
triage and stored with the item), so it carries weight ``w_i = 1/pi_i``. The Hajek estimator of
the error rate is ``p = sum(w y) / sum(w)`` — Horvitz-Thompson normalised by the estimated
population size, so it needs no count of the stream, and it is exactly ``x/n`` under uniform
sampling. Its linearised variance is ``V = sum(w^2 (y - p)^2) / sum(w)^2`` (with-replacement
form, no finite-population correction: the target is the model's error probability, not the
share of errors in this particular stream).

Interval (Korn & Graubard 1998): the effective sample size ``n* = p (1 - p) / V`` is the number
of uniform audits that would give the same variance; Clopper-Pearson is applied to ``p n*``
errors in ``n*`` trials (:func:`clopper_pearson_effective`). With equal weights ``n* = n`` and it
*is* the exact Clopper-Pearson interval. With no error (or no success) observed ``V = 0`` and
``n*`` falls back to Kish's ``(sum w)^2 / sum(w^2)``, which is at most ``n`` and shrinks as the
weights spread: conservative exactly where the estimate has least to go on. Coverage is checked
by simulation in tests/monitor/test_qc.py and by ``auditstream bench qc``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
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


def clopper_pearson_effective(p_hat: float, n_eff: float, confidence: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson on an *effective* sample: ``x* = p_hat * n_eff`` successes of ``n_eff``.

    The beta quantiles take real parameters, so a non-integer effective sample size (the Korn &
    Graubard 1998 interval for survey-weighted proportions, used by monitor/tracker.py) is exact in
    the same sense as :func:`clopper_pearson` is for integer counts: with ``n_eff = n`` and
    ``p_hat = x / n`` the two agree.
    """
    if not 0.0 <= p_hat <= 1.0 or not n_eff >= 0.0:
        raise ValueError(f"need 0 <= p_hat <= 1 and n_eff >= 0, got p_hat={p_hat}, n_eff={n_eff}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence} must be in (0, 1)")
    if n_eff == 0.0:
        return 0.0, 1.0
    alpha = 1.0 - confidence
    x = p_hat * n_eff
    low = 0.0 if x <= 0.0 else float(beta.ppf(alpha / 2, x, n_eff - x + 1.0))
    high = 1.0 if x >= n_eff else float(beta.ppf(1.0 - alpha / 2, x + 1.0, n_eff - x))
    return low, high


@dataclass(frozen=True)
class WeightedEstimate:
    estimate: float | None  # None: no audits
    low: float
    high: float
    n: int
    effective_sample_size: float


def estimate_from_sums(n, s_w, s_wy, s_w2, s_w2y, confidence: float = 0.95):
    """Hajek estimate, Korn-Graubard interval and ``n*`` from running sums (arrays broadcast).

    ``s_w = sum w``, ``s_wy = sum w y``, ``s_w2 = sum w^2``, ``s_w2y = sum w^2 y`` over the ``n``
    audits (``y`` is 0/1, so ``sum w^2 (y - p)^2 = s_w2y (1 - 2p) + p^2 s_w2``).
    """
    n, s_w, s_wy, s_w2, s_w2y = (np.asarray(a, dtype=np.float64) for a in (n, s_w, s_wy, s_w2, s_w2y))
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.clip(np.where(s_w > 0, s_wy / s_w, 0.0), 0.0, 1.0)
        var = np.maximum(s_w2y * (1.0 - 2.0 * p) + p * p * s_w2, 0.0) / np.maximum(s_w, 1e-300) ** 2
        kish = np.where(s_w2 > 0, s_w * s_w / s_w2, 0.0)
        n_eff = np.where((var > 0) & (p > 0) & (p < 1), p * (1.0 - p) / var, kish)
        n_eff = np.where(np.abs(n_eff - n) <= 1e-9 * np.maximum(n, 1.0), n, n_eff)  # equal weights: exact CP
        alpha = 1.0 - confidence
        x = p * n_eff
        low = np.where(x > 0, beta.ppf(alpha / 2, np.maximum(x, 1e-300), n_eff - x + 1.0), 0.0)
        high = np.where(x < n_eff, beta.ppf(1.0 - alpha / 2, x + 1.0, np.maximum(n_eff - x, 1e-300)), 1.0)
    low, high = np.where(n_eff > 0, low, 0.0), np.where(n_eff > 0, high, 1.0)
    return p, np.nan_to_num(low), np.nan_to_num(high, nan=1.0), n_eff


def error_estimate(errors, inclusion_probs, confidence: float = 0.95) -> WeightedEstimate:
    """Hajek error rate of audited answers with its Korn-Graubard interval (module docstring)."""
    y = np.asarray(errors, dtype=np.float64)
    pi = np.asarray(inclusion_probs, dtype=np.float64)
    if y.shape != pi.shape or y.ndim != 1:
        raise ValueError(f"need errors [n] and inclusion_probs [n], got {y.shape} and {pi.shape}")
    if y.size and (not np.all((pi > 0) & (pi <= 1)) or not np.all((y == 0) | (y == 1))):
        raise ValueError(f"inclusion probabilities must be in (0, 1] (min {pi.min()}, max {pi.max()}) and errors 0/1")
    if y.size == 0:
        return WeightedEstimate(None, 0.0, 1.0, 0, 0.0)
    w = 1.0 / pi
    p, low, high, n_eff = estimate_from_sums(y.size, w.sum(), (w * y).sum(), (w * w).sum(), (w * w * y).sum(), confidence)
    return WeightedEstimate(float(p), float(low), float(high), int(y.size), float(n_eff))
