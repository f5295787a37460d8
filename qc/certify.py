"""Certify an auto-accept threshold: the largest coverage whose error is *proved* below target.

Given held-out confidences ``kappa_i`` and error indicators ``e_i`` (1 = the model's answer was
wrong) from the calibration split, and a target risk ``r`` with confidence ``1 - delta``, we want
a threshold ``theta`` such that, with probability at least ``1 - delta`` over the draw of the
calibration set, the selective risk ``P(error | kappa >= theta)`` of future items is ``<= r``,
and the coverage ``P(kappa >= theta)`` is as large as possible.

Method: Selection with Guaranteed Risk (SGR, Geifman & El-Yaniv 2017). Sort the ``m``
confidences and binary-search over them: at most ``k = ceil(log2(m + 1))`` tests, each test ``j`` accepts the
``n_j`` items with ``kappa >= theta_j`` and computes the exact one-sided Clopper-Pearson upper
bound ``b_j`` on their error rate at level ``delta / k``. A union bound over the ``k`` tests makes
every ``b_j`` hold at once with probability ``>= 1 - delta``, so any tested threshold with
``b_j <= r`` is certified; we return the one with the most coverage. Conditional on which
items a threshold accepts, those items are an i.i.d. sample of the accepted population, which is
why the binomial bound applies (the calibration items must be independent: see docs/training.md
for how envelopes that share digits are handled).

On a few hundred items the bisection is fragile: its first test, at the median confidence,
accepts half the items, whose bound may miss ``r`` although more items (with the few errors they
add) would meet it — the bound is not monotone in the threshold on small samples, and the search
then only moves to fewer items. :func:`certify_coverage_grid` spends the same kind of budget on a
fixed grid of coverages chosen before any data is seen (``delta / len(grid)`` each) and keeps the
largest that passes; the training scripts use it.

Every certificate here holds for one model on one calibration set. When several model versions
are certified on the same set and one is picked afterwards, the ``delta`` passed in must be that
version's share (qc/delta_spending.py: the training scripts pass ``delta * 6 / (pi^2 k^2)`` for
the k-th), or the chance that some version's certificate is wrong exceeds ``delta``.

The naive rule, "the largest coverage whose *empirical* calibration risk is ``<= r``", is here
too (:func:`naive_threshold`) because the benchmark ``auditstream bench certify`` shows how often
it breaks its promise on fresh data.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from qc.binomial import upper_bound


@dataclass(frozen=True)
class Certificate:
    """The outcome of a threshold selection, with the numbers behind it."""

    threshold: float
    target_risk: float
    delta: float
    certified_risk: float  # upper bound on the selective risk at ``threshold`` (1.0: nothing certified)
    coverage: float  # share of calibration items accepted at ``threshold``
    n: int
    n_accepted: int
    errors_accepted: int
    tests: int  # number of thresholds tested (the union-bound divisor)
    method: str
    reason: str

    @property
    def certified(self) -> bool:
        return self.n_accepted > 0 and self.certified_risk <= self.target_risk

    def to_dict(self) -> dict:
        return asdict(self)


def _check(confidences: np.ndarray, errors: np.ndarray, target_risk: float, delta: float) -> tuple[np.ndarray, np.ndarray]:
    confidences = np.asarray(confidences, dtype=np.float64)
    errors = np.asarray(errors)
    if confidences.ndim != 1 or errors.shape != confidences.shape:
        raise ValueError(f"need confidences [m] and errors [m], got {confidences.shape} and {errors.shape}")
    if confidences.size == 0:
        raise ValueError("need at least one calibration item, got 0")
    if not np.all(np.isfinite(confidences)):
        raise ValueError(f"confidences contain {int(np.sum(~np.isfinite(confidences)))} non-finite values")
    if not np.isin(errors, (0, 1)).all():
        raise ValueError(f"errors must be 0/1 indicators, got values {np.unique(errors)[:5]}")
    if not 0.0 < target_risk < 1.0:
        raise ValueError(f"target_risk={target_risk} must be in (0, 1)")
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta={delta} must be in (0, 1)")
    return confidences, errors.astype(np.int64)


def reject_all_threshold(confidences: np.ndarray) -> float:
    """A threshold above every confidence seen and above 1: accepts nothing."""
    return float(np.nextafter(max(1.0, float(np.max(confidences))), np.inf))


def selective_risk(confidences: np.ndarray, errors: np.ndarray, threshold: float) -> tuple[float, float, int, int]:
    """(coverage, risk, n_accepted, errors_accepted) of the rule ``confidence >= threshold``.

    The risk of an empty acceptance set is reported as 0.0 (no accepted answer was wrong).
    """
    confidences = np.asarray(confidences, dtype=np.float64)
    errors = np.asarray(errors, dtype=np.int64)
    accepted = confidences >= threshold
    n_acc, e_acc = int(accepted.sum()), int(errors[accepted].sum())
    return n_acc / max(len(confidences), 1), (e_acc / n_acc if n_acc else 0.0), n_acc, e_acc


def certify_sgr(confidences: np.ndarray, errors: np.ndarray, target_risk: float, delta: float) -> Certificate:
    """SGR binary search (see the module docstring); every number behind the answer is returned."""
    kappa, err = _check(confidences, errors, target_risk, delta)
    m = len(kappa)
    ascending = np.sort(kappa)
    # Bisection for the lowest passing index takes at most ceil(log2(m + 1)) tests; the union
    # bound divides delta by that worst case, fixed before looking at any error.
    tests = sgr_tests(m)
    level = delta / tests
    best: Certificate | None = None
    lo, hi = 0, m - 1  # indices into ``ascending``: a lower index is a lower threshold, more coverage
    while lo <= hi:
        z = (lo + hi) // 2
        theta = float(ascending[z])
        coverage, _, n_acc, e_acc = selective_risk(kappa, err, theta)
        bound = upper_bound(e_acc, n_acc, level)
        if bound <= target_risk:
            if best is None or coverage > best.coverage:
                best = Certificate(theta, target_risk, delta, bound, coverage, m, n_acc, e_acc, tests, "sgr",
                                   f"{e_acc} errors among {n_acc} accepted: Clopper-Pearson upper bound "
                                   f"{bound:.4f} <= {target_risk} at level delta/{tests} = {level:.4g}")
            hi = z - 1
        else:
            lo = z + 1
    if best is not None:
        return best
    return Certificate(reject_all_threshold(kappa), target_risk, delta, 1.0, 0.0, m, 0, 0, tests, "sgr",
                       f"no tested threshold had a bound <= {target_risk} at level delta/{tests}: "
                       f"accept nothing (more calibration data or a better model is needed)")


# Coverages tried by certify_coverage_grid, fixed before any data is seen (most first).
COVERAGE_GRID = (1.0, 0.975, 0.95, 0.925, 0.9, 0.85, 0.8, 0.7, 0.5)


def certify_coverage_grid(confidences: np.ndarray, errors: np.ndarray, target_risk: float, delta: float,
                          coverages: tuple[float, ...] = COVERAGE_GRID) -> Certificate:
    """The largest coverage of ``coverages`` whose Clopper-Pearson bound at ``delta / len(coverages)``
    is ``<= target_risk`` (see the module docstring); the threshold is the confidence quantile at
    that coverage (ties accepted together, so the coverage reported is the one realised)."""
    kappa, err = _check(confidences, errors, target_risk, delta)
    if not coverages or not all(0.0 < c <= 1.0 for c in coverages):
        raise ValueError(f"coverages {coverages} must be in (0, 1]")
    m, tests = len(kappa), len(coverages)
    level = delta / tests
    descending = np.sort(kappa)[::-1]
    best: Certificate | None = None
    for wanted in coverages:
        theta = float(descending[max(1, math.floor(wanted * m + 1e-9)) - 1])
        coverage, _, n_acc, e_acc = selective_risk(kappa, err, theta)
        bound = upper_bound(e_acc, n_acc, level)
        if bound <= target_risk and (best is None or coverage > best.coverage):
            best = Certificate(theta, target_risk, delta, bound, coverage, m, n_acc, e_acc, tests, "coverage-grid",
                               f"{e_acc} errors among {n_acc} accepted (coverage {coverage:.1%}): Clopper-Pearson "
                               f"upper bound {bound:.4f} <= {target_risk} at level delta/{tests} = {level:.4g}")
    if best is not None:
        return best
    return Certificate(reject_all_threshold(kappa), target_risk, delta, 1.0, 0.0, m, 0, 0, tests, "coverage-grid",
                       f"no coverage of {coverages} had a bound <= {target_risk} at level delta/{tests}: "
                       f"accept nothing (more calibration data or a better model is needed)")


def naive_threshold(confidences: np.ndarray, errors: np.ndarray, target_risk: float) -> float:
    """The lowest threshold whose *empirical* risk on these items is ``<= target_risk``.

    No guarantee at all: it overfits the calibration sample (see ``auditstream bench certify``).
    """
    kappa, err = _check(confidences, errors, target_risk, 0.5)
    order = np.argsort(-kappa, kind="stable")
    sorted_kappa = kappa[order]
    cum_risk = np.cumsum(err[order]) / np.arange(1, len(kappa) + 1)
    # A threshold can only sit where the next confidence differs (ties are accepted together).
    boundary = np.append(sorted_kappa[1:] != sorted_kappa[:-1], True)
    ok = np.flatnonzero((cum_risk <= target_risk) & boundary)
    return float(sorted_kappa[ok[-1]]) if ok.size else reject_all_threshold(kappa)


def sgr_tests(m: int) -> int:
    """How many thresholds SGR tests on ``m`` items (the union-bound divisor of delta)."""
    return max(1, math.ceil(math.log2(m + 1)))


def min_certifiable_risk(m: int, delta: float, tests: int | None = None) -> float:
    """The smallest risk SGR can certify from ``m`` items, all clean: ``1 - (delta/k)^(1/m)``."""
    return upper_bound(0, m, delta / (sgr_tests(m) if tests is None else tests))


def risk_coverage_curve(confidences: np.ndarray, errors: np.ndarray, max_points: int = 101) -> list[dict[str, float]]:
    """Points (threshold, coverage, risk) of the rule ``confidence >= threshold``, by descending
    threshold, at most ``max_points`` of them spread evenly over coverage (always incl. full)."""
    kappa = np.asarray(confidences, dtype=np.float64)
    err = np.asarray(errors, dtype=np.int64)
    if kappa.ndim != 1 or err.shape != kappa.shape or kappa.size == 0:
        raise ValueError(f"need confidences [m] and errors [m] with m >= 1, got {kappa.shape} and {err.shape}")
    order = np.argsort(-kappa, kind="stable")
    sorted_kappa, cum_err = kappa[order], np.cumsum(err[order])
    boundary = np.flatnonzero(np.append(sorted_kappa[1:] != sorted_kappa[:-1], True))
    picks = boundary[np.unique(np.linspace(0, len(boundary) - 1, min(max_points, len(boundary))).round().astype(int))]
    m = len(kappa)
    return [{"threshold": float(sorted_kappa[i]), "coverage": float(i + 1) / m, "risk": float(cum_err[i]) / float(i + 1)}
            for i in picks]


def area_under_risk_coverage(confidences: np.ndarray, errors: np.ndarray) -> float:
    """AURC: the mean selective risk over all coverages (lower is a better confidence ranking)."""
    kappa = np.asarray(confidences, dtype=np.float64)
    err = np.asarray(errors, dtype=np.float64)
    order = np.argsort(-kappa, kind="stable")
    return float(np.mean(np.cumsum(err[order]) / np.arange(1, len(kappa) + 1)))
