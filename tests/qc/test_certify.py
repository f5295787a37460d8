"""Certificate arithmetic against closed forms, and the guarantee itself by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qc.binomial import upper_bound
from qc.certify import (COVERAGE_GRID, area_under_risk_coverage, certify_coverage_grid, certify_sgr,
                        min_certifiable_risk, naive_threshold, risk_coverage_curve, selective_risk)


@pytest.mark.parametrize("m", [1, 10, 59, 299, 1000])
@pytest.mark.parametrize("delta", [0.01, 0.05, 0.1])
def test_zero_errors_bound_is_closed_form(m, delta):
    assert upper_bound(0, m, delta) == pytest.approx(1 - delta ** (1 / m), rel=1e-9)


def test_299_clean_items_certify_one_percent_and_298_do_not():
    assert upper_bound(0, 299, 0.05) <= 0.01 < upper_bound(0, 298, 0.05)


def test_one_error_bound_solves_the_binomial_tail_equation():
    # With 1 error in n, the bound p solves P(X <= 1 | n, p) = delta: (1-p)^n + n p (1-p)^(n-1) = delta.
    n, delta = 400, 0.05
    p = upper_bound(1, n, delta)
    assert (1 - p) ** n + n * p * (1 - p) ** (n - 1) == pytest.approx(delta, rel=1e-6)


def test_all_clean_items_are_all_accepted_with_the_union_bound_divisor():
    m, delta = 2000, 0.05
    conf = np.linspace(0.5, 1.0, m)
    cert = certify_sgr(conf, np.zeros(m, dtype=int), target_risk=0.01, delta=delta)
    tests = math.ceil(math.log2(m + 1))
    assert cert.tests == tests
    assert cert.coverage == 1.0 and cert.n_accepted == m and cert.errors_accepted == 0
    assert cert.certified_risk == pytest.approx(1 - (delta / tests) ** (1 / m), rel=1e-9)
    assert cert.certified_risk == pytest.approx(min_certifiable_risk(m, delta, tests))
    assert cert.certified


def test_too_few_items_certify_nothing_and_reject_everything():
    conf = np.linspace(0.9, 1.0, 50)  # 50 clean items prove at best 1 - (0.05/6)^(1/50) ~ 9.1%
    cert = certify_sgr(conf, np.zeros(50, dtype=int), target_risk=0.02, delta=0.05)
    assert not cert.certified and cert.coverage == 0.0 and cert.certified_risk == 1.0
    assert cert.threshold > 1.0 and selective_risk(conf, np.zeros(50, dtype=int), cert.threshold)[2] == 0


def test_the_certified_threshold_is_the_most_coverage_the_bound_allows():
    # 1000 items; the 100 least confident hold 30 errors. Here the bound grows monotonically as
    # the threshold falls, so the bisection must stop exactly where one more item breaks it.
    conf = np.arange(1000) / 1000
    errors = np.zeros(1000, dtype=int)
    errors[np.arange(0, 90, 3)] = 1
    cert = certify_sgr(conf, errors, target_risk=0.02, delta=0.05)
    level = 0.05 / cert.tests
    _, _, n_acc, e_acc = selective_risk(conf, errors, cert.threshold)
    assert (n_acc, e_acc) == (cert.n_accepted, cert.errors_accepted)
    assert cert.certified_risk == pytest.approx(upper_bound(e_acc, n_acc, level)) and cert.certified_risk <= 0.02
    _, _, n_more, e_more = selective_risk(conf, errors, cert.threshold - 0.001)
    assert upper_bound(e_more, n_more, level) > 0.02
    assert 0.9 < cert.coverage < 0.95


def _synthetic(rng, m):
    # Confidence ~ U(0, 1), P(error | c) = 0.3 (1 - c)^2, so the selective risk above theta is
    # 0.1 (1 - theta)^2 in closed form.
    conf = rng.random(m)
    return conf, (rng.random(m) < 0.3 * (1 - conf) ** 2).astype(int)


def test_sgr_keeps_its_promise_and_the_naive_rule_does_not():
    rng = np.random.default_rng(0)
    target, delta, trials = 0.02, 0.05, 300
    broken_sgr = broken_naive = 0
    for _ in range(trials):
        conf, errors = _synthetic(rng, 800)
        true_risk = lambda theta: 0.1 * (1 - min(theta, 1.0)) ** 2  # noqa: E731
        broken_sgr += true_risk(certify_sgr(conf, errors, target, delta).threshold) > target
        broken_naive += true_risk(naive_threshold(conf, errors, target)) > target
    assert broken_sgr / trials <= delta
    assert broken_naive / trials >= 0.3


def test_the_coverage_grid_keeps_its_promise():
    rng = np.random.default_rng(1)
    target, delta, trials = 0.02, 0.05, 300
    broken = 0
    for _ in range(trials):
        conf, errors = _synthetic(rng, 800)
        cert = certify_coverage_grid(conf, errors, target, delta)
        broken += 0.1 * (1 - min(cert.threshold, 1.0)) ** 2 > target
    assert broken / trials <= delta


def test_the_coverage_grid_certifies_small_samples_the_bisection_cannot():
    """486 items, 2 errors at low confidence: the bisection's first test (243 items, no error)
    misses 2% at delta/9 and it never looks at more items; the grid's full coverage meets it."""
    conf = np.linspace(0.5, 1.0, 486)
    errors = np.zeros(486, dtype=int)
    errors[:2] = 1
    assert not certify_sgr(conf, errors, 0.02, 0.05).certified
    grid = certify_coverage_grid(conf, errors, 0.02, 0.05)
    assert grid.certified and grid.coverage == pytest.approx(1.0) and grid.tests == len(COVERAGE_GRID)
    assert grid.certified_risk == pytest.approx(upper_bound(2, 486, 0.05 / len(COVERAGE_GRID)))


def test_naive_threshold_on_a_table():
    conf = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    errors = np.array([0, 0, 1, 0, 1])
    assert naive_threshold(conf, errors, 0.25) == 0.6  # 1 error in 4
    assert naive_threshold(conf, errors, 0.1) == 0.8
    assert naive_threshold(np.array([0.5]), np.array([1]), 0.1) > 1.0


def test_risk_coverage_curve_and_aurc():
    conf = np.array([0.9, 0.8, 0.8, 0.4])
    errors = np.array([0, 0, 1, 1])
    curve = risk_coverage_curve(conf, errors)
    assert [p["coverage"] for p in curve] == [0.25, 0.75, 1.0]  # the tie at 0.8 is accepted together
    assert [p["risk"] for p in curve] == pytest.approx([0.0, 1 / 3, 0.5])
    assert area_under_risk_coverage(conf, errors) == pytest.approx(np.mean([0, 0, 1 / 3, 0.5]))
    assert len(risk_coverage_curve(np.random.default_rng(1).random(5000), np.zeros(5000, int), max_points=50)) <= 50


@pytest.mark.parametrize("kwargs, match", [
    ({"target_risk": 0.0}, "target_risk"),
    ({"delta": 1.0}, "delta"),
    ({"errors": np.array([0, 2, 0])}, "0/1"),
    ({"confidences": np.array([0.5, np.nan, 0.1])}, "non-finite"),
    ({"errors": np.array([0, 1])}, "shape|need"),
])
def test_bad_input_says_what_is_wrong(kwargs, match):
    args = {"confidences": np.array([0.5, 0.6, 0.7]), "errors": np.array([0, 1, 0]), "target_risk": 0.1, "delta": 0.05}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        certify_sgr(**args)
