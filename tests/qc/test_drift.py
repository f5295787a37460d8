"""Drift: the KS test on confidences and the Bernoulli CUSUM's ARL design."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qc.drift import (
    BernoulliCusum,
    ConfidenceWindow,
    cusum_arl,
    cusum_run_lengths,
    design_bernoulli_cusum,
    ks_drift,
)


def test_ks_detects_a_shifted_distribution_and_not_an_identical_one():
    rng = np.random.default_rng(0)
    reference = rng.beta(8, 1, 5000)
    same = ks_drift(rng.beta(8, 1, 2000), reference)
    shifted = ks_drift(rng.beta(5, 1, 2000), reference)
    assert same.pvalue > 0.01 and same.statistic < 0.05
    assert shifted.pvalue < 1e-10 and shifted.statistic > 0.1
    assert (shifted.n_window, shifted.n_reference) == (2000, 5000)


def test_ks_false_alarm_rate_is_its_level():
    rng = np.random.default_rng(1)
    reference = rng.random(1000)
    pvalues = [ks_drift(rng.random(300), reference).pvalue for _ in range(400)]
    assert np.mean(np.array(pvalues) < 0.05) == pytest.approx(0.05, abs=0.035)


def _float32_confidences(rng, n):
    """Max-softmax-like float32 confidences of a confident model: 1 / (1 + e^-m), m ~ U(2, 20), at
    full float32 precision (a producer other than serve); 12% fall in [0.9999995, 1), which a
    6-decimal card stores as 1.0."""
    m = rng.uniform(2.0, 20.0, n).astype(np.float32)
    return (np.float32(1.0) / (np.float32(1.0) + np.exp(-m))).astype(np.float64)


def test_ks_against_a_rounded_card_reference_keeps_its_level():
    # 400 live windows of 2,000 drawn from the distribution the reference came from (each with a
    # fresh reference sample, stored as cards store it). Unrounded live against the 6-decimal
    # reference fired in all 400 (D >= the 12% share moved to 1.0); rounded alike, p < 0.05 in 3.75%
    # (KS with ties is conservative) and p < 0.001 in none. Bounds: 9% for the 5% level (a binomial
    # count of 36 of 400 at p = 0.05 has probability 2e-4) and 3 windows for the 0.1% level (4 or
    # more of 400 at p = 0.001: 8e-5).
    from training.selective import reference_statistics

    rng = np.random.default_rng(20261211)
    pvalues = np.array([ks_drift(_float32_confidences(rng, 2000),
                                 reference_statistics(_float32_confidences(rng, 2000), seed=i)["confidence_sample"]).pvalue
                        for i in range(400)])
    assert np.mean(pvalues < 0.05) <= 0.09 and np.sum(pvalues < 1e-3) <= 3
    live = _float32_confidences(rng, 2000)
    stored = np.round(live, 6)
    assert ks_drift(live, stored).statistic == 0.0  # the same values, rounded alike
    assert ks_drift(live, stored, decimals=None).statistic > 0.1  # compared as given: the old false drift


def test_ks_refuses_empty_samples_and_window_is_bounded():
    with pytest.raises(ValueError, match="0 live"):
        ks_drift([math.nan], [0.5])
    window = ConfidenceWindow(3)
    for c in (0.1, 0.2, 0.3, 0.4):
        window.add(c)
    assert list(window.values) == [0.2, 0.3, 0.4] and len(window) == 3


def test_arl_solver_matches_a_hand_solved_chain():
    # m = 1, H = 2: L0 = 1 + (1-p) L0 + p L1, L1 = 1 + (1-p) L0  =>  L0 = (1 + p) / p^2
    p = 0.3
    assert cusum_arl(p, 1, 2) == pytest.approx((1 + p) / p**2)
    # H = 1: the first error alarms, a geometric run length with mean 1/p
    assert cusum_arl(p, 5, 1) == pytest.approx(1 / p)


def test_design_for_one_to_two_percent():
    d = design_bernoulli_cusum(0.01, 0.02, 200_000)
    assert d.step_up == round(math.log(2) / -math.log(0.98 / 0.99)) == 68
    assert d.arl0 >= 200_000 and cusum_arl(0.01, d.step_up, d.h_units - 1) < 200_000  # smallest such H
    assert d.arl1 < 2000
    assert d.h_nats > 0 and math.exp(d.h_nats) < d.arl0  # Lorden: ARL0 >= e^h
    with pytest.raises(ValueError, match="p0=0.02, p1=0.01"):
        design_bernoulli_cusum(0.02, 0.01)


def test_simulated_run_lengths_match_the_designed_arl():
    d = design_bernoulli_cusum(0.01, 0.02, 200_000)
    rl = cusum_run_lengths(d, 0.02, 20_000, np.random.default_rng(2))
    assert rl.mean() == pytest.approx(d.arl1, rel=0.03)
    short = design_bernoulli_cusum(0.05, 0.1, 2_000)  # in-control ARL small enough to simulate fully
    rl0 = cusum_run_lengths(short, 0.05, 20_000, np.random.default_rng(3))
    assert rl0.mean() == pytest.approx(short.arl0, rel=0.05)


def test_sequential_chart_agrees_with_the_vectorised_one():
    d = design_bernoulli_cusum(0.05, 0.1, 2_000)
    rng = np.random.default_rng(4)
    lengths = []
    for _ in range(1500):
        chart = BernoulliCusum(d)
        while not chart.update(bool(rng.random() < 0.1)):
            pass
        lengths.append(chart.observations)
        assert chart.alarm and chart.alarms == 1 and chart.state == 0
    assert np.mean(lengths) == pytest.approx(d.arl1, rel=0.08)


def test_alarm_latches_until_reset_and_statistic_is_in_nats():
    d = design_bernoulli_cusum(0.01, 0.02)
    chart = BernoulliCusum(d)
    chart.update(True)
    assert chart.statistic == pytest.approx(d.step_up * d.unit_nats)
    assert chart.statistic == pytest.approx(math.log(2), rel=0.01)  # one error: log(p1 / p0)
    while not chart.update(True):
        pass
    assert chart.alarm and chart.state == 0
    chart.update(False)
    assert chart.alarm
    chart.reset()
    assert not chart.alarm


def test_horizon_censors_runs():
    d = design_bernoulli_cusum(0.01, 0.02)
    rl = cusum_run_lengths(d, 0.01, 500, np.random.default_rng(5), max_audits=1000)
    assert np.all((rl <= 1000) | (rl == 1001)) and np.mean(rl == 1001) > 0.95
