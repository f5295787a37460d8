"""OPE estimators on a tiny MDP whose value is known exactly (tests/training/rl/rl_toy.py); weighted
DR equal to a term-by-term reference on any finite inputs, and non-finite inputs refused naming
the episode and step."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.rl.fqe import fit_fqe, fqe, select_basis
from training.rl.offline_data import StepRecord, build_dataset
from training.rl.ope import doubly_robust, evaluate, on_policy_value, wis
from training.rl.ope_stats import OPEInputError
from training.rl.policy_export import NumpyPolicy

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


# -- non-finite inputs are refused; finite ones give exactly the textbook sums (issue: DR's
#    nan_to_num on the sum of a step's two terms dropped the other term)


class TableQ:
    """Q-values looked up by row (observations are the row index)."""

    def __init__(self, table: np.ndarray) -> None:
        self.table = table

    def q_values(self, observations: np.ndarray, steps: np.ndarray) -> np.ndarray:
        return self.table[np.asarray(observations)[:, 0].astype(int)]


def row_policy(table: np.ndarray) -> NumpyPolicy:
    return NumpyPolicy(lambda obs: table[np.asarray(obs)[:, 0].astype(int)], table.shape[1])


def reference_wdr(data, pi: np.ndarray, q: np.ndarray, gamma: float) -> float:
    """Weighted DR written out term by term (Thomas & Brunskill 2016): Σ_t γ^t [Σ_e w_t (r_t - Q_t)
    / Σ_e w_t + Σ_e w_{t-1} V_t / Σ_e w_{t-1}]; an ended episode keeps its last weight and adds
    nothing; NaN (undefined) when no episode keeps any weight to its end."""
    episodes = []
    for s in data.episode_slices():
        rows = range(s.start, s.stop)
        w, ws = 1.0, []
        for i in rows:
            w *= pi[i, data.actions[i]] / float(data.behaviour_action_prob[i])
            ws.append(w)
        episodes.append([(ws[k], float(data.rewards[i]), q[i, data.actions[i]], float(q[i] @ pi[i]))
                         for k, i in enumerate(rows)])
    if sum(e[-1][0] for e in episodes) == 0:
        return float("nan")
    horizon = max(len(e) for e in episodes)
    total = 0.0
    for t in range(horizon):
        num = den = num_prev = den_prev = 0.0
        for e in episodes:
            w_prev = 1.0 if t == 0 else e[min(t - 1, len(e) - 1)][0]
            if t < len(e):
                w, r, q_t, v_t = e[t]
                num += w * (r - q_t)
                num_prev += w_prev * v_t
            else:
                w = e[-1][0]
            den += w
            den_prev += w_prev
        total += gamma ** t * ((num / den if den > 0 else 0.0) + (num_prev / den_prev if den_prev > 0 else 0.0))
    return total


def small_logs(draw, n_actions: int):
    """(dataset, target probabilities, Q-values) with some target probabilities exactly 0."""
    records, pi_rows, q_rows = [], [], []
    for e in range(draw(st.integers(1, 5))):
        length = draw(st.integers(1, 4))
        for t in range(length):
            mu = np.asarray(draw(st.lists(st.integers(1, 5), min_size=n_actions, max_size=n_actions)), float)
            pi = np.asarray(draw(st.lists(st.integers(0, 3), min_size=n_actions, max_size=n_actions)), float)
            pi = pi / pi.sum() if pi.sum() else np.full(n_actions, 1.0 / n_actions)
            action = draw(st.integers(0, n_actions - 1))
            reward = draw(st.floats(-10, 10, allow_nan=False, width=32))
            records.append(StepRecord(f"e{e:02d}", t, [float(len(records))], action, (mu / mu.sum()).tolist(), reward,
                                      False, t == length - 1))
            pi_rows.append(pi)
            q_rows.append(draw(st.lists(st.floats(-10, 10, allow_nan=False), min_size=n_actions, max_size=n_actions)))
    data = build_dataset(records)
    order = data.observations[:, 0].astype(int)  # rows as the builder ordered them
    return data, np.asarray(pi_rows)[order], np.asarray(q_rows)[order]


@settings(max_examples=150, deadline=None)
@given(st.data(), st.sampled_from([2, 3]), st.sampled_from([0.5, 0.9, 1.0]))
def test_weighted_dr_is_the_textbook_sum_on_finite_inputs(draw, n_actions, gamma) -> None:
    data, pi, q = small_logs(draw.draw, n_actions)
    obs_to_row = np.empty(len(pi), dtype=int)
    obs_to_row[data.observations[:, 0].astype(int)] = np.arange(len(pi))
    target = NumpyPolicy(lambda obs: pi[obs_to_row[np.asarray(obs)[:, 0].astype(int)]], n_actions)
    q_model = TableQ(q[obs_to_row])
    got = doubly_robust(data, target, gamma, q_model, bootstrap=20).value
    expected = reference_wdr(data, pi, q, gamma)
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-6, nan_ok=True)


def test_a_target_no_logged_episode_supports_is_undefined_not_zero_or_q() -> None:
    """Every episode's weight is 0 from step 1 (the target never takes the logged action there):
    nothing logged says what the target earns after step 0. WIS gave 1 (step 0 only, as if it
    earned 0 after), DR step 0's term plus Q's guess of step 1 -- confident numbers with zero-width
    intervals. Both are NaN, interval too, and say why; the gate then has no estimate."""
    records = [StepRecord(f"e{e}", t, [float(2 * e + t)], 0, [0.5, 0.5], 1.0, False, t == 1)
               for e in range(3) for t in range(2)]
    data = build_dataset(records)
    pi = np.tile([[1.0, 0.0], [0.0, 1.0]], (3, 1))  # step 0: the logged action; step 1: never
    q = np.full((6, 2), 2.0)
    for est in (doubly_robust(data, row_policy(pi), 0.5, TableQ(q), bootstrap=20),
                wis(data, row_policy(pi), 0.5, bootstrap=20), wis(data, row_policy(pi), 0.5, bootstrap=20, weighted=False)):
        assert np.isnan([est.value, est.lower, est.upper]).all(), est
        assert "importance weights are all 0" in est.details["undefined"]
        assert est.details["effective_sample_size"] > 0 and est.details["final_effective_sample_size"] == 0
    assert np.isnan(reference_wdr(data, pi, q, 0.5))


def test_resamples_without_weight_are_left_out_and_counted() -> None:
    """One of 30 episodes keeps weight: the estimate is defined, and the resamples that miss that
    episode (about e^-1 of them) are undefined -- counted, not averaged in as 0."""
    records = [StepRecord(f"e{e:02d}", t, [float(2 * e + t)], int(e == 0 and t == 1), [0.5, 0.5], 1.0, False, t == 1)
               for e in range(30) for t in range(2)]
    data = build_dataset(records)
    pi = np.tile([[1.0, 0.0], [0.0, 1.0]], (30, 1))  # step 1: action 1, logged in episode e00 only
    est = wis(data, row_policy(pi), 0.5, bootstrap=200)
    assert est.value == pytest.approx(1.0 + 0.5) and est.lower == est.upper == pytest.approx(1.5)
    assert 40 < est.details["undefined_resamples"] < 110 and np.isnan(est.resamples).sum() == est.details["undefined_resamples"]
    assert est.details["final_effective_sample_size"] == pytest.approx(1.0)


@pytest.mark.parametrize("where, value, match", [
    ("q", np.nan, r"Q-values \[nan, 2.0\] at episode 'e1' step 1"),
    ("q", np.inf, r"Q-values \[inf, 2.0\] at episode 'e1' step 1"),
    ("pi", np.nan, r"target policy probabilities \[nan, 0.5\] at episode 'e1' step 1"),
    ("pi", np.inf, r"target policy probabilities \[inf, 0.5\] at episode 'e1' step 1"),
])
def test_non_finite_q_values_or_target_probabilities_are_refused_naming_the_step(where, value, match) -> None:
    records = [StepRecord(f"e{e}", t, [float(2 * e + t)], 0, [0.5, 0.5], 1.0, False, t == 1)
               for e in range(3) for t in range(2)]
    data = build_dataset(records)
    pi, q = np.full((6, 2), 0.5), np.full((6, 2), 2.0)
    (q if where == "q" else pi)[3, 0] = value  # row 3: episode e1, step 1
    with pytest.raises(OPEInputError, match=match):
        doubly_robust(data, row_policy(pi), 0.9, TableQ(q), bootstrap=20)
    if where == "pi":  # WIS and FQE use no fitted Q, but the same target probabilities
        with pytest.raises(OPEInputError, match=match):
            wis(data, row_policy(pi), 0.9, bootstrap=20)
        with pytest.raises(OPEInputError, match="target policy probabilities"):
            fqe(data, row_policy(pi), 0.9, features=tabular_features, bootstrap=20)


def test_an_overflowing_importance_weight_is_refused_naming_the_step() -> None:
    records = [StepRecord("e0", t, [float(t)], 0, [1e-30, 1.0 - 1e-30], 1.0, False, t == 19) for t in range(20)]
    data = build_dataset(records)
    with pytest.raises(OPEInputError, match="cumulative importance weight .* at episode 'e0' step 10"):
        wis(data, row_policy(np.tile([[1.0, 0.0]], (20, 1))), 0.9, bootstrap=20)


@pytest.mark.parametrize("rows, match", [
    (2 * MU, r"sums to 2, not 1"),  # scores: PDIS gave 12.41 for a true value of 1.26
    (MU - 0.7, r"has an entry < 0"),  # logits-like
])
def test_target_probabilities_that_are_not_a_distribution_are_refused(rows, match) -> None:
    data = simulate(30, seed=0)
    policy = NumpyPolicy(lambda obs: rows[np.asarray(obs).argmax(axis=1)], 2)
    for run in (lambda: wis(data, policy, GAMMA, bootstrap=20), lambda: wis(data, policy, GAMMA, bootstrap=20, weighted=False),
                lambda: doubly_robust(data, policy, GAMMA, bootstrap=20),
                lambda: fqe(data, policy, GAMMA, tabular_features, bootstrap=20)):
        with pytest.raises(OPEInputError, match=r"target policy probabilities .* at episode 'e00000' step 0 .*" + match):
            run()


def test_dr_refits_q_on_every_bootstrap_resample() -> None:
    """Each DR resample is DR computed on the resampled episodes with Q fitted on them: the
    bootstrap repeats the whole procedure (Q fixed at the full-data fit left Q's own variance
    out). Same resamples as WIS, so the gate still pairs them."""
    data, target = simulate(60, seed=1), table_policy(PI)
    est = evaluate(data, target, GAMMA, bootstrap=30, seed=4, features=tabular_features)["dr"]
    assert est.resample_key == wis(data, target, GAMMA, bootstrap=30, seed=4).resample_key
    fixed = doubly_robust(data, target, GAMMA, fit_fqe(data, target, GAMMA, tabular_features), bootstrap=30, seed=4)
    assert est.value == pytest.approx(fixed.value, rel=1e-9)  # the point estimate is unchanged
    counts = np.random.default_rng(4).multinomial(60, np.full(60, 1 / 60), size=30)  # bootstrap_counts(60, 30, 4)
    for k in range(4):
        resampled = data.select_episodes(np.repeat(np.arange(60), counts[k]))
        refit = doubly_robust(resampled, target, GAMMA, fit_fqe(resampled, target, GAMMA, tabular_features), bootstrap=20)
        assert est.resamples[k] == pytest.approx(refit.value, rel=1e-9, abs=1e-12)
        assert abs(fixed.resamples[k] - refit.value) > 1e-6  # what the old interval was made of


def test_episodes_for_an_interval_is_where_a_single_episode_resample_is_rarer_than_the_tail() -> None:
    from training.rl.args import episodes_for_an_interval

    assert [episodes_for_an_interval(c) for c in (0.4, 0.5, 0.9, 0.95, 0.99, 0.999)] == [2, 3, 3, 4, 4, 5]


@pytest.mark.parametrize("episodes", [1, 3])
def test_too_few_episodes_give_a_point_estimate_without_an_interval(episodes) -> None:
    """One episode: every resample is that episode, and each estimator gave [v, v]; three: the
    interval's ends were single episodes' values (DR's point was its upper end). No interval
    (null in JSON) and the reason, the value kept."""
    data, target = simulate(episodes, seed=2), table_policy(PI)
    estimates = {**evaluate(data, target, GAMMA, bootstrap=50), "on_policy": on_policy_value(data, GAMMA, bootstrap=50)}
    for name, est in estimates.items():
        assert np.isfinite(est.value) and np.isnan([est.lower, est.upper]).all(), (name, est)
        assert "needs at least 4" in est.details["no_interval"], name
        as_json = est.to_dict()
        assert as_json["lower"] is None and as_json["upper"] is None and as_json["value"] == est.value


def test_four_episodes_give_an_interval_and_fqe_none_without_its_misspecification_allowance() -> None:
    """At 0.9, three episodes are enough for a bootstrap interval (1/27 < 0.05), but not for the
    held-out error that widens FQE's (two folds of two): FQE gave a bare bootstrap interval."""
    target = table_policy(PI)
    four = evaluate(simulate(4, seed=3), target, GAMMA, bootstrap=50)
    assert all(est.lower <= est.upper for est in four.values()), four
    three = evaluate(simulate(3, seed=3), target, GAMMA, 0.9, bootstrap=50)
    assert np.isfinite([three["wis"].lower, three["wis"].upper]).all()
    assert np.isnan([three["fqe"].lower, three["fqe"].upper]).all() and np.isfinite(three["fqe"].value)
    assert "misspecification" in three["fqe"].details["no_interval"]
    assert three["fqe"].to_dict()["misspecification_allowance"] is None


def test_an_undefined_estimate_is_null_in_json_with_its_reason() -> None:
    import json

    records = [StepRecord(f"e{e}", t, [float(2 * e + t)], 0, [0.5, 0.5], 1.0, False, t == 1)
               for e in range(6) for t in range(2)]
    pi = np.tile([[1.0, 0.0], [0.0, 1.0]], (6, 1))  # never the logged action at step 1
    as_json = wis(build_dataset(records), row_policy(pi), 0.5, bootstrap=20).to_dict()
    assert as_json["value"] is None and as_json["lower"] is None and "importance weights are all 0" in as_json["undefined"]
    json.dumps(as_json, allow_nan=False)


def test_dr_resamples_the_episodes_wis_does_when_their_normal_equations_fit() -> None:
    """300 small episodes (normal equations of a few MB): DR pooled them into 256 groups anyway,
    so its resamples were not WIS's or the logged value's and the gate could not pair them."""
    from training.rl.promotion import difference_lower_bound

    data, target = simulate(300, seed=1), table_policy(PI)
    dr = doubly_robust(data, target, GAMMA, bootstrap=50, features=tabular_features)
    live = on_policy_value(data, GAMMA, bootstrap=50)
    assert dr.resample_key == wis(data, target, GAMMA, bootstrap=50).resample_key == live.resample_key
    assert difference_lower_bound(dr, live)[1] == "paired bootstrap"


def test_resamples_of_groups_are_shared_by_every_estimator_given_their_key(monkeypatch) -> None:
    """When memory does pool episodes into groups, WIS and the logged value can take DR's
    resamples (its key), and a grouped resample is the estimate on the groups it drew."""
    import training.rl.fqe as fqe_module
    from training.rl.ope_stats import resample_units

    monkeypatch.setattr(fqe_module, "MAX_GROUP_BYTES", 40 * 8 * 20 * 20)  # 40 episodes of d = 2 x 10 fit
    data, target = simulate(100, seed=5), table_policy(PI)
    dr = doubly_robust(data, target, GAMMA, bootstrap=30, features=tabular_features)
    assert dr.resample_key == ("groups", 100, 40, 30, 0)
    w = wis(data, target, GAMMA, resamples=dr.resample_key)
    live = on_policy_value(data, GAMMA, resamples=dr.resample_key)
    assert w.resample_key == live.resample_key == dr.resample_key
    assert w.value == wis(data, target, GAMMA).value and live.value == on_policy_value(data, GAMMA).value
    groups, counts = resample_units(dr.resample_key, 100)
    episodes = np.repeat(np.arange(100), counts[1][groups].astype(int))
    assert live.resamples[0] == pytest.approx(on_policy_value(data.select_episodes(episodes), GAMMA).value)
    with pytest.raises(ValueError, match="dataset has 60"):
        wis(simulate(60, seed=5), target, GAMMA, resamples=dr.resample_key)
