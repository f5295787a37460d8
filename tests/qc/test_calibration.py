"""Temperature scaling and ECE on synthetic data with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qc.calibration import (classification_ece, expected_calibration_error, fit_temperature, nll,
                                 reliability_bins, softmax)


def _sample_labels(rng, probs):
    cum = probs.cumsum(1)
    return (rng.random((len(probs), 1)) > cum).sum(1).clip(0, probs.shape[1] - 1)


@pytest.mark.parametrize("true_temperature", [0.5, 1.0, 2.5])
def test_fit_recovers_a_known_temperature(true_temperature):
    rng = np.random.default_rng(3)
    z = rng.normal(0, 2.0, size=(20000, 10))
    labels = _sample_labels(rng, softmax(z))  # labels are drawn from softmax(z): z is calibrated
    logits = z * true_temperature  # a model that is over- (T > 1) or under-confident (T < 1)
    assert fit_temperature(logits, labels) == pytest.approx(true_temperature, rel=0.05)


def test_a_perfectly_separated_slice_keeps_a_finite_temperature():
    """Every held-out item right: maximum likelihood sends T to 0 (all probabilities 1, no
    ranking left); the weak prior keeps it near what the margins support."""
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 10, 150)
    logits = rng.normal(0, 1.0, (150, 10))
    logits[np.arange(150), labels] += 6.0  # the right class always wins
    assert fit_temperature(logits, labels, log_prior_sd=None) < 0.05  # the degenerate MLE
    assert 0.2 < fit_temperature(logits, labels) < 1.0


def test_temperature_scaling_lowers_nll_and_ece():
    rng = np.random.default_rng(4)
    z = rng.normal(0, 2.0, size=(5000, 10))
    labels = _sample_labels(rng, softmax(z))
    logits = 3.0 * z
    t = fit_temperature(logits, labels)
    assert nll(logits, labels, t) < nll(logits, labels)
    assert classification_ece(softmax(logits, t), labels) < classification_ece(softmax(logits), labels) / 3


def test_ece_of_perfectly_calibrated_data_is_near_zero():
    rng = np.random.default_rng(5)
    conf = rng.random(200_000)
    correct = rng.random(200_000) < conf
    assert expected_calibration_error(conf, correct) < 0.005


def test_ece_of_overconfidence_is_the_gap():
    conf = np.full(10_000, 0.9)
    correct = np.arange(10_000) < 6000  # 60% accurate at 90% confidence
    assert expected_calibration_error(conf, correct) == pytest.approx(0.3)


def test_bins_are_half_open_and_zero_lands_in_the_first():
    bins = reliability_bins(np.array([0.0, 0.5, 0.5000001, 1.0]), np.array([1, 1, 0, 1]), n_bins=2)
    assert [b.count for b in bins] == [2, 2]


@pytest.mark.parametrize("logits, labels, match", [
    (np.zeros((3, 4)), np.array([0, 1]), "need logits"),
    (np.zeros((2, 4)), np.array([0, 4]), "labels must be in"),
    (np.array([[0.0, np.inf]]), np.array([0]), "non-finite"),
    (np.zeros((0, 4)), np.zeros(0, dtype=int), "at least one"),
])
def test_bad_input_says_what_is_wrong(logits, labels, match):
    with pytest.raises(ValueError, match=match):
        fit_temperature(logits, labels)


def test_confidences_outside_unit_interval_are_refused():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expected_calibration_error(np.array([0.5, 1.2]), np.array([1, 0]))


@pytest.mark.parametrize("confidences, correct, match", [
    ([0.5, np.nan, 0.9], [1, 0, 1], "NaN or infinite"),  # before: ECE nan, silently
    ([0.5, np.inf], [1, 0], "NaN or infinite"),
    ([np.nan], [1], "NaN or infinite"),
    ([0.5, 0.9], [1, np.nan], "correct must be"),
    ([0.5, 0.9], [1, 2], "correct must be"),
])
def test_a_nan_confidence_or_correctness_is_refused_not_an_ece_of_nan(confidences, correct, match):
    with pytest.raises(ValueError, match=match):
        expected_calibration_error(np.array(confidences), np.array(correct))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(allow_nan=True, allow_infinity=True), st.integers(0, 1)), min_size=1, max_size=30))
def test_property_ece_is_a_number_in_the_unit_interval_or_a_clear_error(rows):
    confidences, correct = np.array([c for c, _ in rows]), np.array([k for _, k in rows])
    try:
        ece = expected_calibration_error(confidences, correct)
    except ValueError:
        assert not (np.isfinite(confidences).all() and (confidences >= 0).all() and (confidences <= 1).all())
        return
    assert 0.0 <= ece <= 1.0
