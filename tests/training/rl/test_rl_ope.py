"""OPE estimators on a tiny MDP whose value is known exactly (tests/training/rl/rl_toy.py)."""

from __future__ import annotations

import numpy as np
import pytest

from training.rl.fqe import fit_fqe, fqe, select_basis
from training.rl.ope import doubly_robust, evaluate, on_policy_value, wis

from tests.training.rl.rl_toy import GAMMA, MU, PI, simulate, table_policy, tabular_features, true_value


def test_true_values_differ() -> None:
    # the test is only meaningful if behaviour and target really have different values
    assert abs(true_value(PI) - true_value(MU)) > 0.3


def test_per_decision_is_is_unbiased() -> None:
    truth, target = true_value(PI), table_policy(PI)
    estimates = [wis(simulate(40, seed), target, GAMMA, bootstrap=20, weighted=False).value for seed in range(150)]
    mean, se = np.mean(estimates), np.std(estimates, ddof=1) / np.sqrt(len(estimates))
    assert abs(mean - truth) < 3 * se + 1e-3, (mean, truth, se)


@pytest.mark.parametrize("method", ["wis", "dr", "fqe"])
def test_estimators_converge_and_cover(method: str) -> None:
    truth, target = true_value(PI), table_policy(PI)
    data = simulate(3000, seed=7)
    if method == "wis":
        est = wis(data, target, GAMMA, seed=1)
    elif method == "dr":
        est = doubly_robust(data, target, GAMMA, fit_fqe(data, target, GAMMA, tabular_features), seed=1)
    else:
        est = fqe(data, target, GAMMA, tabular_features, seed=1)
    assert abs(est.value - truth) < 0.05, (est, truth)
    assert est.covers(truth), (est, truth)
    assert est.lower < est.value < est.upper


def test_intervals_cover_in_repeated_trials() -> None:
    truth, target = true_value(PI), table_policy(PI)
    hits = {"wis": 0, "dr": 0, "fqe": 0}
    trials = 30
    for seed in range(trials):
        data = simulate(200, seed=100 + seed)
        for name, est in evaluate(data, target, GAMMA, bootstrap=100, seed=seed, features=tabular_features).items():
            hits[name] += est.covers(truth)
    assert all(h / trials >= 0.8 for h in hits.values()), hits


def test_target_equal_to_behaviour_is_the_on_policy_mean() -> None:
    data = simulate(300, seed=3)
    same = wis(data, table_policy(MU), GAMMA, seed=0)
    logged = on_policy_value(data, GAMMA, seed=0)
    assert same.value == pytest.approx(logged.value, abs=1e-6)  # propensities are float32
    assert abs(logged.value - true_value(MU)) < 4 * (logged.upper - logged.lower)


def test_basis_selection_returns_a_known_family() -> None:
    data = simulate(60, seed=5)
    assert select_basis(data, table_policy(PI), GAMMA).kind in ("rff", "quadratic", "quadratic+rff")


def test_bad_inputs_are_refused() -> None:
    data = simulate(20, seed=1)
    with pytest.raises(ValueError, match="gamma"):
        wis(data, table_policy(PI), 1.5)
    with pytest.raises(ValueError, match="bootstrap"):
        wis(data, table_policy(PI), GAMMA, bootstrap=5)
    with pytest.raises(ValueError, match="confidence"):
        wis(data, table_policy(PI), GAMMA, confidence=1.0)
