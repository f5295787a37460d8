"""QC statistics against closed-form answers and simulation (fixed seeds), and the live tracker."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom

from auditstream.registry import ModelCard, TensorSpec, TriageSpec
from auditstream.wire import Prediction, Route, Verdict, VerdictKind
from qc.binomial import (
    clopper_pearson,
    clopper_pearson_effective,
    error_estimate,
    estimate_from_sums,
    lower_bound,
    upper_bound,
)
from monitor.tracker import QCConfig, QCTracker, suggest_threshold
from qc.triage import POLICIES, inclusion_probability

# --------------------------------------------------------------------------------------------
# Clopper-Pearson


@pytest.mark.parametrize(("x", "n"), [(0, 10), (1, 10), (10, 1000), (5, 20), (20, 20), (37, 400)])
def test_clopper_pearson_solves_its_defining_equations(x, n):
    low, high = clopper_pearson(x, n, 0.95)
    # P(X >= x | low) = 0.025 and P(X <= x | high) = 0.025: the exact (inverted binomial test) bounds
    if x > 0:
        assert binom.sf(x - 1, n, low) == pytest.approx(0.025, rel=1e-6)
    else:
        assert low == 0.0
    if x < n:
        assert binom.cdf(x, n, high) == pytest.approx(0.025, rel=1e-6)
    else:
        assert high == 1.0


def test_clopper_pearson_closed_forms():
    assert clopper_pearson(0, 10)[1] == pytest.approx(1 - 0.025 ** (1 / 10))  # 0.30850
    assert clopper_pearson(10, 10)[0] == pytest.approx(0.025 ** (1 / 10))
    assert upper_bound(0, 300, 0.05) == pytest.approx(1 - 0.05 ** (1 / 300))  # "rule of three": ~3/300
    assert lower_bound(7, 50, 0.05) == pytest.approx(1 - upper_bound(43, 50, 0.05))  # symmetry
    low, high = clopper_pearson(10, 1000)
    assert (round(low, 4), round(high, 4)) == (0.0048, 0.0183)
    assert high - low < 0.014  # the bench's 1.4-point target at exactly 10 errors


def test_effective_interval_equals_exact_on_integers_and_errors_on_bad_input():
    for x, n in [(0, 50), (3, 50), (50, 50), (12, 700)]:
        assert clopper_pearson_effective(x / n, n) == pytest.approx(clopper_pearson(x, n))
    assert clopper_pearson_effective(0.5, 0.0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="p_hat=1.5"):
        clopper_pearson_effective(1.5, 10)


def test_weighted_estimate_with_equal_weights_is_clopper_pearson():
    y = np.array([1] * 7 + [0] * 493)
    est = error_estimate(y, np.full(y.size, 0.02))
    assert est.estimate == pytest.approx(7 / 500)
    assert (est.low, est.high) == pytest.approx(clopper_pearson(7, 500))
    assert est.effective_sample_size == 500
    none = error_estimate([], [])
    assert (none.estimate, none.low, none.high, none.n) == (None, 0.0, 1.0, 0)
    with pytest.raises(ValueError, match="inclusion probabilities"):
        error_estimate([0, 1], [0.5, 0.0])


def test_weighted_estimate_by_hand():
    # two audits: an error with pi = 0.5 (w 2) and a clean one with pi = 0.1 (w 10)
    est = error_estimate([1, 0], [0.5, 0.1])
    assert est.estimate == pytest.approx(2 / 12)
    p = 2 / 12
    var = (4 * (1 - p) ** 2 + 100 * p**2) / 144
    assert p * (1 - p) / var > 2 and est.effective_sample_size == 2  # Korn-Graubard n* capped at the audits
    assert est.low <= est.estimate <= est.high
    clean = error_estimate([0, 0, 0], [0.5, 0.1, 0.1])  # no error: Kish n = (sum w)^2 / sum w^2
    assert clean.effective_sample_size == pytest.approx(22**2 / 204)
    assert clean.low == 0.0 and clean.high > 1 - 0.025 ** (1 / 3)  # wider than 3 uniform audits could give


def _policy_sample(rng, trials, n, q_hi, q_lo):
    """The default risk-weighted policy on answers 90% at confidence 0.9999 (pi at the floor 0.005,
    weight 200) erring at ``q_hi`` and 10% at 0.92 (pi 0.057) erring at ``q_lo``: (y, pi) [trials, n]."""
    policy = POLICIES["risk-weighted"]
    pi_hi, pi_lo = inclusion_probability(0.9999, policy), inclusion_probability(0.92, policy)
    hi = rng.random((trials, n)) < 0.9 * pi_hi / (0.9 * pi_hi + 0.1 * pi_lo)  # an audit's stratum
    y = np.where(hi, rng.random((trials, n)) < q_hi, rng.random((trials, n)) < q_lo).astype(float)
    return y, np.where(hi, pi_hi, pi_lo)


def test_more_errors_never_lower_the_weighted_upper_bound():
    # The reviewer's counterexample (Korn-Graubard until 2026-12): 56 light audits (pi 0.0566) with 5
    # errors and 44 heavy ones (pi 0.005, weight 200) without: n* = 511 from 100 audits, upper bound
    # 2.2% -- below the 6.6% that the same audits gave with no error at all.
    pi = np.r_[np.full(56, 0.05657), np.full(44, 0.005)]
    for light_errors in range(0, 12):
        y = np.r_[np.ones(light_errors), np.zeros(100 - light_errors)]
        w = 1 / pi
        _, _, high, n_eff = estimate_from_sums(100, w.sum(), (w * y).sum(), (w * w).sum(), (w * w * y).sum())
        est = error_estimate(y, pi)
        assert n_eff <= 100 and est.effective_sample_size <= 100
        if light_errors:
            assert high >= previous_sums and est.high >= previous_audits, light_errors
        previous_sums, previous_audits = high, est.high
    # an error at weight 200 would move the estimate by 200 / sum(w): 44 clean heavy audits cannot rule out 2%
    assert error_estimate(np.zeros(100), pi).high > 0.05


def test_weighted_interval_covers_when_the_heavy_audits_show_no_error():
    # The project's own policy, where errors at the floor are rare: Korn-Graubard covered 0.68 at 100
    # audits (the true rate above its upper bound in 30% of runs); a 95% interval may leave it above in 2.5%.
    true_p = 0.9 * 0.015 + 0.1 * 0.08
    y, pi = _policy_sample(np.random.default_rng(5), 1500, 100, 0.015, 0.08)
    w = 1 / pi
    _, low, high, _ = estimate_from_sums(np.full(y.shape[0], 100), w.sum(1), (w * y).sum(1), (w * w).sum(1),
                                         (w * w * y).sum(1), min_inclusion_prob=0.005)
    assert np.mean(true_p > high) < 0.025 and np.mean((low <= true_p) & (true_p <= high)) >= 0.95
    per_audit = [error_estimate(y[i], pi[i], min_inclusion_prob=0.005) for i in range(200)]
    above = np.mean([true_p > e.high for e in per_audit])
    assert above < 0.03, f"the true rate above the betting interval's upper bound in {above:.3f} of 200 runs"
    assert np.mean([e.high - e.low for e in per_audit]) < np.mean(high[:200] - low[:200])  # betting: narrower


def test_an_all_equal_sample_above_the_floor_is_not_taken_for_a_uniform_one():
    # 40 audits all at pi = 0.5 under a policy whose floor is 0.005: half the answers may sit at the
    # floor, unseen (1% of audits), so the sample says little about them.
    est = error_estimate(np.zeros(40), np.full(40, 0.5), min_inclusion_prob=0.005)
    assert est.high > 0.5
    assert error_estimate(np.zeros(40), np.full(40, 0.5)).high == pytest.approx(clopper_pearson(0, 40)[1])  # uniform


def test_betting_interval_is_the_sequence_of_qc_sequential():
    from qc.binomial import betting_interval
    from qc.sequential import ErrorSequence, SequenceConfig, surviving_interval

    rng = np.random.default_rng(8)
    pi = rng.choice([0.005, 0.05, 0.3, 1.0], 300)
    y = (rng.random(300) < np.where(pi < 0.01, 0.01, 0.1)).astype(float)
    # qc.binomial's one-off interval is the running intersection (ever crossed) of the sequence
    # whose stakes weigh all past audits alike
    seq = ErrorSequence(None, SequenceConfig(min_inclusion_prob=0.005, bet_cap=0.9, stake_window=None))
    for e, p in zip(y, pi):
        seq.update(bool(e), float(p))
    low, high = surviving_interval(seq.grid, seq.state.shown_over, seq.state.shown_under)
    assert betting_interval(y, pi, min_inclusion_prob=0.005, bet_cap=0.9) == (low, high)
    report = seq.report()  # from the current wealth: a superset of the running intersection
    assert report.low <= low <= high <= report.high


# --------------------------------------------------------------------------------------------
# simulation: a stream whose errors cluster at low confidence, with a miscalibrated model


def _simulate(rng, reps, items, error_scale):
    """Per replication sums of the risk-weighted sample; the true error rate is 0.02 * error_scale / 2."""
    policy = POLICIES["risk-weighted"]
    grid = np.linspace(0.9, 1.0, 10_001)
    table = np.array([inclusion_probability(float(c), policy) for c in grid])
    sums = np.zeros((6, reps))  # the five estimator sums, then the unweighted error count
    for r in range(reps):
        c = 1.0 - 0.1 * rng.random(items) ** 9
        y = (rng.random(items) < np.minimum(1.0, error_scale * (1.0 - c))).astype(float)
        pi = table[np.rint((c - 0.9) * 1e5).astype(int)]
        s = rng.random(items) < pi
        w, ys = 1.0 / pi[s], y[s]
        sums[:, r] = (s.sum(), w.sum(), (w * ys).sum(), (w * w).sum(), (w * w * ys).sum(), ys.sum())
    return sums


@pytest.mark.parametrize("error_scale", [1.0, 2.5])  # calibrated, and overconfident (2.5x the promised errors)
def test_weighted_estimator_is_unbiased_and_its_interval_covers(error_scale):
    rng = np.random.default_rng(7)
    true_p = 0.01 * error_scale
    sums = _simulate(rng, reps=1500, items=20_000, error_scale=error_scale)
    est, low, high, n_eff = estimate_from_sums(*sums[:5])
    mc_error = est.std(ddof=1) / np.sqrt(est.size)
    assert abs(est.mean() - true_p) < max(3 * mc_error, 2e-4)
    unweighted = sums[5].sum() / sums[0].sum()  # audits over-sample low confidence: weighting matters
    assert unweighted > 2 * true_p
    coverage = np.mean((low <= true_p) & (true_p <= high))
    assert coverage >= 0.93, f"95% interval covered {coverage:.3f}"
    assert np.all(n_eff <= sums[0])  # n* is capped at the audits (Korn-Graubard truncation)


def test_small_samples_stay_conservative():
    rng = np.random.default_rng(11)
    sums = _simulate(rng, reps=1500, items=3_000, error_scale=2.0)  # ~40 audits, ~2 errors each
    _, low, high, _ = estimate_from_sums(*sums[:5])
    coverage = np.mean((low <= 0.02) & (0.02 <= high))
    assert coverage >= 0.93, f"95% interval covered {coverage:.3f}"


# --------------------------------------------------------------------------------------------
# threshold suggestion


def test_suggest_threshold_picks_the_smallest_safe_threshold():
    rng = np.random.default_rng(3)
    c = rng.uniform(0.9, 1.0, 20_000)
    y = (c < 0.95) & (rng.random(c.size) < 0.2)  # 20% errors below 0.95, none above
    t = suggest_threshold(c, y.astype(float), np.ones(c.size), current=0.9, budget=0.01)
    assert t is not None and 0.949 <= t < 0.956  # the grid point at ~0.95 (grid step 0.005)
    assert suggest_threshold(c, np.ones(c.size), np.ones(c.size), current=0.9, budget=0.01) is None


def test_shown_at_most_asked_after_every_25_audits_keeps_its_level():
    # The monitor asks again at every snapshot. 1,000 runs of 1,000 uniform audits whose error rate is
    # 2% above the bound (every "shown" is false), asked after every 25th audit at alpha = 5%: the
    # fixed-sample Clopper-Pearson bound (anytime=False) ever said "shown" in 16.3% of runs; the
    # betting gambler (anytime=True, the default) in 3.9%, within Ville's 5%. Bound 7.5%: under a
    # true rate of 5% a count of 75 of 1,000 or more has probability 3e-4 (binomial tail).
    from qc.binomial import shown_at_most
    runs, audits, bound, alpha = 1000, 1000, 0.05, 0.05
    y = (np.random.default_rng(20261210).random((runs, audits)) < bound * 1.02).astype(float)
    pi = np.ones(audits)

    def ever_shown(r, anytime):
        return any(shown_at_most(y[r, :k], pi[:k], bound, alpha, anytime=anytime) for k in range(25, audits + 1, 25))

    anytime = np.mean([ever_shown(r, True) for r in range(runs)])
    assert anytime <= 0.075, f"asked every 25 audits, the gambler wrongly showed the bound in {anytime:.3f} of runs"
    one_look = np.mean([ever_shown(r, False) for r in range(300)])
    assert one_look > 0.1  # what the fixed-sample bound does under the same looks (16% of 1,000 runs)


def test_suggest_threshold_on_uniform_audits_uses_the_anytime_test():
    # 24 errors in 2,000 uniform audits (1.2%): Clopper-Pearson at one look puts the rate <= 2% at
    # 97.5%, the gambler does not (yet). The tracker asks at every tick, so the suggestion must not
    # take the one-look bound (it did until 2026-12); 15 errors convince the gambler too.
    from qc.binomial import shown_at_most
    n, pi, c = 2000, np.full(2000, 0.02), np.full(2000, 0.97)
    for errors, expected in ((24, None), (15, 0.97)):
        y = np.zeros(n)
        y[np.linspace(0, n - 1, errors).astype(int)] = 1.0
        assert shown_at_most(y, pi, 0.02, 0.025, min_inclusion_prob=0.02, anytime=False)  # the one-look bound
        assert suggest_threshold(c, y, pi, current=0.9, budget=0.02, min_inclusion_prob=0.02) == expected
        assert suggest_threshold(c, y, pi, current=0.9, budget=0.02) == expected  # no floor given: uniform too


def _policy_suggestions(seed: int, runs: int, audits: int, confident_error: float, other_error: float) -> list:
    """suggest_threshold (budget 2%) on ``runs`` risk-weighted samples: answers at 0.9999 (the
    floor's weight) erring ``confident_error``, the rest at 0.92 erring ``other_error``."""
    y, pi = _policy_sample(np.random.default_rng(seed), runs, audits, confident_error, other_error)
    c = np.where(pi < 0.01, 0.9999, 0.92)
    return [suggest_threshold(c[i], y[i], pi[i], current=0.9, budget=0.02, min_inclusion_prob=0.005)
            for i in range(runs)]


def test_suggest_threshold_does_not_accept_answers_over_budget_under_risk_weighted_audits():
    # 90% of answers at 0.9999 erring 2% (within the 2% budget, barely: weight 200 each), 10% at 0.92
    # erring 5%: every answer together 2.3%, over budget. Suggesting 0.92 (all answers) is wrong;
    # Korn-Graubard did so in 26% of runs, a valid 1 - alpha/k bound (k = 2 candidates) in <= 1.25%.
    wrong = _policy_suggestions(seed=9, runs=300, audits=100, confident_error=0.02, other_error=0.05)
    rate = np.mean([s is not None and s <= 0.92 for s in wrong])
    assert rate < 0.03, f"suggested a threshold over budget in {rate:.3f} of 300 runs"


def test_suggest_threshold_finds_the_confident_answers_when_they_are_within_budget():
    # the same design with the confident answers erring 0.2% and the others 20% (all: 2.18%), budget 2%:
    # 0.9999 is the only safe threshold, shown within budget in most runs of 800 audits
    found = _policy_suggestions(seed=10, runs=40, audits=800, confident_error=0.002, other_error=0.2)
    assert all(s is None or s > 0.92 for s in found) and sum(s is not None for s in found) >= 24


# --------------------------------------------------------------------------------------------
# the tracker


def _card(version="1", certified=0.01, reference=None):
    return ModelCard(name="zip", version=version, task="classification", inputs=[TensorSpec("x", "float32", [None, 4])],
                     outputs=[TensorSpec("p", "float32", [None, 10])],
                     triage=TriageSpec(threshold=0.9, certified_risk=certified, target_risk=certified),
                     reference={"confidence_sample": list(reference) if reference is not None else []})


def _prediction(i, confidence, route, pi, version="1"):
    return Prediction(request_id=f"r{i}", model="zip", model_version=version, task="classification", output=1,
                      confidence=confidence, route=route, reason="", qc_inclusion_prob=pi, created_at_s=0.0)


def _verdict(i, kind, pi, version="1", route=Route.AUTO_QC, gold=False):
    return Verdict(verdict_id=f"v{i}", request_id=f"r{i}", model="zip", model_version=version, auditor="a", kind=kind,
                   decided_at_s=1.0, item_route=route, inclusion_prob=pi, is_gold=gold)


def _feed(tracker, rng, n, error_rate, version="1", qc_rate=0.5, start=0, shift=0.0):
    for i in range(start, start + n):
        c = min(1.0, rng.uniform(0.5, 1.0) + shift)
        route = Route.HUMAN if c < 0.9 else (Route.AUTO_QC if rng.random() < qc_rate else Route.AUTO)
        tracker.observe_prediction(_prediction(i, c, route, 1.0 if route is Route.HUMAN else qc_rate, version))
        if route is Route.AUTO_QC:
            kind = VerdictKind.REJECT if rng.random() < error_rate else VerdictKind.ACCEPT
            tracker.observe_verdict(_verdict(i, kind, qc_rate, version))


def test_tracker_counts_coverage_and_ignores_redeliveries_skips_and_gold():
    tracker = QCTracker(lambda m, v: _card(v), QCConfig(min_inclusion_prob=0.5))
    preds = [_prediction(0, 0.95, Route.AUTO_QC, 0.5), _prediction(1, 0.97, Route.AUTO, 0.5),
             _prediction(2, 0.5, Route.HUMAN, 1.0), _prediction(3, 0.93, Route.AUTO_QC, 0.5)]
    for p in preds + preds:  # every record delivered twice
        tracker.observe_prediction(p)
    verdicts = [_verdict(0, VerdictKind.CORRECT, 0.5), _verdict(3, VerdictKind.SKIP, 0.5),
                _verdict(2, VerdictKind.REJECT, 1.0, route=Route.HUMAN), _verdict(9, VerdictKind.REJECT, 0.5, gold=True)]
    for v in verdicts + verdicts:
        tracker.observe_verdict(v)
    (qc,) = tracker.snapshot()
    assert (qc.predictions, qc.auto, qc.human, qc.coverage) == (4, 3, 1, 0.75)
    assert (qc.audited, qc.errors, qc.error_estimate) == (1, 1, 1.0)
    assert qc.certified_risk == 0.01 and qc.budget == 0.01
    assert not qc.over_budget and qc.budget_state == "not_yet_known" and "not yet known" in qc.reason


def test_tracker_over_budget_suggests_a_threshold_and_within_budget_does_not():
    rng = np.random.default_rng(5)
    good = QCTracker(lambda m, v: _card(v, certified=0.05), QCConfig(min_inclusion_prob=0.5))
    _feed(good, rng, 12_000, error_rate=0.01)
    (qc,) = good.snapshot()
    assert qc.audited > 1000 and qc.ci_low < 0.01 < qc.ci_high <= 0.05
    assert not qc.over_budget and qc.suggested_threshold is None and "within budget, verified" in qc.reason
    assert qc.budget_state == "within_budget"

    bad = QCTracker(lambda m, v: _card(v, certified=0.01), QCConfig(min_inclusion_prob=1.0))
    for i in range(8000):  # errors only below confidence 0.95
        c = rng.uniform(0.9, 1.0)
        bad.observe_prediction(_prediction(i, c, Route.AUTO_QC, 1.0))
        bad.observe_verdict(_verdict(i, VerdictKind.REJECT if c < 0.95 and rng.random() < 0.1 else VerdictKind.ACCEPT, 1.0))
    (qc,) = bad.snapshot()
    assert qc.over_budget and qc.budget_state == "over_budget" and "OVER BUDGET" in qc.reason
    assert qc.ci_low > 0.01
    assert qc.suggested_threshold is not None and 0.949 <= qc.suggested_threshold < 0.956


def test_tracker_ks_detects_a_shift_and_not_the_reference_itself():
    rng = np.random.default_rng(9)
    reference = rng.uniform(0.5, 1.0, 5000)
    same = QCTracker(lambda m, v: _card(v, reference=reference), QCConfig())
    _feed(same, rng, 3000, 0.01)
    shifted = QCTracker(lambda m, v: _card(v, reference=reference), QCConfig())
    _feed(shifted, rng, 3000, 0.01, shift=-0.1)
    (a,), (b,) = same.snapshot(), shifted.snapshot()
    assert a.ks_pvalue > 0.01 and "DRIFT" not in a.reason
    assert b.ks_pvalue < 1e-6 and b.ks_statistic > 0.1 and "DRIFT" in b.reason


def test_tracker_ks_does_not_flag_the_shipped_digits_model_on_its_own_reference_images():
    # The card's reference sample is rounded to 6 decimals; served confidences are float32 values,
    # 67 of the 360 test images in [0.9999995, 1). Compared unrounded, the model "drifted" against the
    # very images its reference came from (D = 0.186, p = 7e-6: both alert conditions) and in every
    # bootstrap window of 2,000; the live window is now rounded to the reference's grid.
    import json
    from pathlib import Path

    ort = pytest.importorskip("onnxruntime")
    from training.data.split import load_split
    from qc.drift import ks_drift

    shipped = Path(__file__).resolve().parents[2] / "stack" / "demo_models" / "digits"
    card = ModelCard.from_dict(json.loads((shipped / "card.json").read_text()))
    session = ort.InferenceSession(str(shipped / "model.onnx"), providers=["CPUExecutionProvider"])
    images = load_split("test").images.astype(np.float32)
    # float32 at full precision, as a producer other than serve may publish them
    live = session.run(None, {session.get_inputs()[0].name: images})[0].max(1)
    assert np.sum((live >= 0.9999995) & (live < 1.0)) > 30  # the values the rounding moved

    tracker = QCTracker(lambda m, v: card, QCConfig())
    for i, c in enumerate(live):
        tracker.observe_prediction(Prediction(request_id=f"r{i}", model=card.name, model_version=card.version,
                                              task="classification", output=0, confidence=float(c), route=Route.AUTO,
                                              reason="", qc_inclusion_prob=0.02, created_at_s=0.0))
    (qc,) = tracker.snapshot()
    assert qc.ks_pvalue > 0.5 and qc.ks_statistic < 0.05 and "DRIFT" not in qc.reason
    rng = np.random.default_rng(17)
    reference = card.reference["confidence_sample"]
    fired = [ks_drift(rng.choice(live, 2000).astype(np.float64), reference).pvalue < 1e-3 for _ in range(50)]
    assert not any(fired)


def test_tracker_cusum_alarms_on_a_doubled_error_rate_only():
    rng = np.random.default_rng(13)
    steady = QCTracker(lambda m, v: _card(v, certified=0.02), QCConfig())
    _feed(steady, rng, 12_000, 0.02, qc_rate=1.0)
    worse = QCTracker(lambda m, v: _card(v, certified=0.02), QCConfig())
    _feed(worse, rng, 12_000, 0.06, qc_rate=1.0)
    (a,), (b,) = steady.snapshot(), worse.snapshot()
    assert not a.cusum_alarm and "CUSUM ok" in a.reason
    assert b.cusum_alarm and "CUSUM ALARM" in b.reason


def test_tracker_without_card_still_counts():
    tracker = QCTracker(lambda m, v: None, QCConfig())
    tracker.observe_prediction(_prediction(0, 0.95, Route.AUTO, 0.02))
    (qc,) = tracker.snapshot()
    assert qc.predictions == 1 and qc.certified_risk is None and "no model card" in qc.reason
    assert qc.ks_statistic is None and qc.cusum_statistic is None


def test_bench_qc_command_prints_the_targets_as_json(capsys):
    from auditstream.cli import main

    assert main(["bench", "qc", "--replications", "60", "--stream-items", "5000", "--cusum-runs", "200",
                 "--anytime-runs", "40", "--anytime-audits", "3000"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = __import__("json").loads(lines[-1])
    for key in ("ci_width_1000", "ess_ratio", "bias", "cusum_median_delay", "cusum_false_alarms_per_100k",
                "anytime_false_alarm_rate", "fixed_n_false_alarm_rate", "anytime_detection_median_audits",
                "anytime_width_1000"):
        assert key in result
    assert result["ci_width_1000"] < 0.014 and result["cusum_median_delay"] < 2000
    assert any("Clopper-Pearson" in line for line in lines[:-1])


def test_made_up_versions_are_tracked_up_to_a_bound_and_known_ones_always():
    """Any writer of the predictions or audit topics names model and version: a stream of
    made-up versions must not grow the statistics (and the metrics' label sets) without end,
    and must not crowd out a version the registry knows."""
    from monitor.tracker import MAX_VERSIONS_WITHOUT_CARD

    tracker = QCTracker(lambda m, v: _card(v) if v == "1" else None, QCConfig(min_inclusion_prob=0.5))
    made_up = MAX_VERSIONS_WITHOUT_CARD + 36
    for i in range(made_up):
        tracker.observe_prediction(_prediction(i, 0.95, Route.AUTO_QC, 0.5, version=f"fake-{i}"))
        tracker.observe_verdict(_verdict(i, VerdictKind.REJECT, 0.5, version=f"fake-{i}"))
    tracker.observe_prediction(_prediction(10_000, 0.95, Route.AUTO_QC, 0.5, version="1"))
    tracker.observe_verdict(_verdict(10_000, VerdictKind.ACCEPT, 0.5, version="1"))
    assert len(tracker.states) == MAX_VERSIONS_WITHOUT_CARD + 1 and ("zip", "1") in tracker.states
    assert tracker.untracked == 2 * 36  # each left-out prediction and verdict
    assert len(tracker.snapshot()) == MAX_VERSIONS_WITHOUT_CARD + 1
    (known,) = [s for s in tracker.snapshot() if s.version == "1"]
    assert known.audited == 1 and known.errors == 0
