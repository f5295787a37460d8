"""qc.detection_certify: matching, the two p-values, conformal risk control, and the promises
themselves by simulation over re-splits of synthetic scored images (images are the i.i.d. unit)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qc.detection_certify import (LowThreshold, ScoredBoxes, certify_detection, certify_high, certify_low,
                                  fdr_losses, hoeffding_bentkus_p, match_boxes, miss_losses, per_image_counts,
                                  score_images, served_thresholds, triage_outcome, wsr_p)

K = 16  # rows per image, as the detector's graph has


def synthetic(n: int, rng: np.random.Generator) -> ScoredBoxes:
    """Images with 1-8 objects; each object is found (p = 0.97) by a true box scoring ~Beta(9, 1);
    false boxes (Poisson 3 per image) score ~Beta(1.3, 3), so the FDR of ``score >= t`` climbs past
    a few percent as ``t`` falls; at most K boxes per image (the highest)."""
    scores, true, image = [], [], []
    n_objects = rng.integers(1, 9, size=n)
    for i, m in enumerate(n_objects):
        found = rng.random(m) < 0.97
        s = np.concatenate([rng.beta(9, 1, size=found.sum()), rng.beta(1.3, 3, size=rng.poisson(3))])
        t = np.concatenate([np.ones(found.sum(), bool), np.zeros(len(s) - found.sum(), bool)])
        top = np.argsort(-s)[:K]
        scores.append(s[top])
        true.append(t[top])
        image.append(np.full(len(top), i))
    return ScoredBoxes(np.concatenate(scores), np.concatenate(true), np.concatenate(image), n_objects)


@pytest.fixture(scope="module")
def population() -> ScoredBoxes:
    return synthetic(100_000, np.random.default_rng(0))


def population_fdr(pop: ScoredBoxes, t: float) -> float:
    kept = pop.scores >= t
    return float((kept & ~pop.true).sum() / max(kept.sum(), 1))


def test_matching_is_greedy_by_score_one_object_per_box_and_by_class() -> None:
    truth = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float)
    boxes = np.array([[0, 0, 10, 10], [1, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], float)
    # The duplicate (second) box finds its object taken; the third box has the wrong class.
    true = match_boxes(boxes, np.array([1, 1, 3, 2]), np.array([0.9, 0.95, 0.8, 0.7]), truth, np.array([1, 2]))
    assert true.tolist() == [False, True, False, False]  # the higher-scored duplicate takes object 0
    scored = score_images([(boxes, np.array([1, 1, 2, 2]), np.array([0.9, 0.8, 0.7, 0.6]))],
                          [(truth, np.array([1, 2]))])
    assert scored.true.tolist() == [True, False, True, False] and scored.n_objects.tolist() == [2]
    accepted, false, matched = per_image_counts(scored, 0.75)
    assert (accepted[0], false[0], matched[0]) == (2, 1, 1)
    assert miss_losses(scored, 0.75).tolist() == [0.5] and miss_losses(scored, 0.0).tolist() == [0.0]


def test_fdr_loss_is_in_unit_interval_and_its_mean_is_below_alpha_exactly_when_the_pooled_fdr_is() -> None:
    data = synthetic(2000, np.random.default_rng(1))
    alpha = 0.05
    for t in (0.95, 0.8, 0.5, 0.3, 0.1):
        losses = fdr_losses(data, t, alpha, K)
        assert losses.min() >= 0 and losses.max() <= 1
        accepted, false, _ = per_image_counts(data, t)
        assert (losses.mean() <= alpha) == (false.sum() / accepted.sum() <= alpha)
    with pytest.raises(ValueError, match="max_boxes"):
        fdr_losses(data, 0.0, alpha, 3)


def test_hoeffding_bentkus_p_value() -> None:
    assert hoeffding_bentkus_p(0.2, 100, 0.1) == 1.0  # the mean is above mu: no evidence
    # Zero loss on n items: Hoeffding gives (1 - mu)^n, Bentkus e (1 - mu)^n; the smaller wins.
    assert hoeffding_bentkus_p(0.0, 50, 0.1) == pytest.approx(0.9**50)
    assert hoeffding_bentkus_p(0.02, 1000, 0.05) < 1e-4
    assert hoeffding_bentkus_p(0.0, 0, 0.1) == 1.0


@pytest.mark.parametrize("p_value", ["hoeffding-bentkus", "wsr"])
def test_p_values_are_valid_under_the_null(p_value: str) -> None:
    """At the boundary of the null (mean exactly mu, the worst case: Bernoulli losses) a p-value
    is <= delta in at most a delta share of draws, up to simulation error."""
    rng = np.random.default_rng(2)
    mu, delta, runs, n = 0.1, 0.1, 2000, 200
    hits = 0
    for _ in range(runs):
        losses = (rng.random(n) < mu).astype(float)
        p = hoeffding_bentkus_p(losses.mean(), n, mu) if p_value == "hoeffding-bentkus" else wsr_p(losses, mu, delta)
        hits += p <= delta
    assert hits / runs <= delta + 3 * math.sqrt(delta * (1 - delta) / runs)


def test_wsr_adapts_to_a_small_variance_where_hoeffding_bentkus_cannot() -> None:
    """Losses concentrated just below mu (the FDR losses' shape): WSR rejects, HB does not."""
    rng = np.random.default_rng(3)
    mu = 0.02
    losses = np.clip(0.008 + 0.003 * rng.standard_normal(500), 0, 1)
    assert wsr_p(losses, mu, 0.05) < 0.01
    assert hoeffding_bentkus_p(losses.mean(), len(losses), mu) > 0.05  # a Bernoulli with this mean could do it


def test_fixed_sequence_stops_at_the_first_non_rejection() -> None:
    """Images with a band of false boxes at 0.75-0.85 and many true boxes below it: 0.9 passes,
    0.8 fails, and 0.6 (whose pooled FDR is low again) is never tested."""
    n = 400
    scores, true, image = [], [], []
    for i in range(n):
        s = [0.95, 0.95, 0.8, 0.65, 0.65, 0.65, 0.65, 0.65, 0.65, 0.65]
        scores += s
        true += [True, True, False] + [True] * 7
        image += [i] * len(s)
    data = ScoredBoxes(np.array(scores), np.array(true), np.array(image), np.full(n, 9))
    high = certify_high(data, alpha=0.1, delta=0.05, max_boxes=K, grid=(0.9, 0.8, 0.6))
    assert high.threshold == 0.9 and high.stopped_at == 0.8 and high.tested == 2 and high.certified
    assert high.fdr_calibration == 0.0 and high.boxes_per_image == 2.0
    none = certify_high(data, alpha=0.1, delta=0.05, max_boxes=K, grid=(0.8, 0.6))
    assert not none.certified and none.threshold > 1.0 and none.last_p == 1.0
    with pytest.raises(ValueError, match="highest"):
        certify_high(data, 0.1, 0.05, K, grid=(0.6, 0.8))


def test_crc_picks_the_largest_threshold_whose_bound_holds() -> None:
    # 99 images with one object found at score 0.9 and one image whose object scores 0.3.
    n = 100
    scores = np.array([0.9] * 99 + [0.3])
    data = ScoredBoxes(scores, np.ones(n, bool), np.arange(n), np.ones(n, dtype=np.int64))
    # beta = 0.02: keeping >= 0.9 misses 1/100, bound 100/101 * 0.01 + 1/101 = 0.0198 <= 0.02.
    low = certify_low(data, beta=0.02)
    assert low.certified and low.threshold == 0.9 and low.bound == pytest.approx(2 / 101)
    # beta = 0.015: only keeping the 0.3 box too gives 1/101 <= 0.015.
    assert certify_low(data, beta=0.015).threshold == 0.3
    # beta below 1/(n + 1): nothing is claimed and every row is kept.
    too_strict = certify_low(data, beta=0.005)
    assert not too_strict.certified and too_strict.threshold == 0.0


def test_the_fdr_promise_breaks_in_at_most_delta_of_resplits(population: ScoredBoxes) -> None:
    """Certify on 500 fresh images 200 times; the true (population) FDR at the certified threshold
    exceeds alpha in at most delta of them, up to simulation error; the naive rule (lowest grid
    threshold whose calibration FDR is <= alpha) breaks far more often; the miss-rate promise holds
    on average over the re-splits."""
    rng = np.random.default_rng(4)
    alpha, beta, delta, n, runs = 0.05, 0.05, 0.1, 500, 200
    grid = np.round(np.arange(0.99, 0.0, -0.01), 2)
    curve = {float(t): population_fdr(population, t) for t in grid}
    assert min(curve.values()) < alpha < max(curve.values())  # the promise can be broken at all
    broken = naive_broken = 0
    misses, accepted = [], []
    for _ in range(runs):
        sample = population.subset(rng.choice(population.n_images, size=n, replace=False))
        pilot = synthetic(300, rng)  # independent images choose where the walk starts
        cert = certify_detection(sample, alpha, beta, delta, K, "wsr", pilot=pilot)
        if cert.high.certified:
            broken += population_fdr(population, cert.threshold_high) > alpha
            accepted.append(triage_outcome(population, cert.threshold_high, 0.0)["objects_auto_accepted"])
        naive = min((float(t) for t in grid if _empirical_fdr(sample, t) <= alpha), default=1.0)
        naive_broken += curve.get(naive, 0.0) > alpha
        misses.append(miss_losses(population, cert.threshold_low).mean())
    assert broken / runs <= delta + 3 * math.sqrt(delta * (1 - delta) / runs)
    assert naive_broken / runs > 0.25  # the setup is tight enough to catch a bad rule
    assert len(accepted) > runs * 0.9 and np.mean(accepted) > 0.8  # and the certificate still accepts most objects
    assert np.mean(misses) <= beta + 3 * np.std(misses) / math.sqrt(runs)


def test_served_thresholds_drop_what_the_miss_budget_allows_and_accept_only_at_a_rejected_threshold() -> None:
    """t_low <= t_high: as certified. t_low above t_high: t_high rises to the lowest rejected grid
    threshold >= t_low (never to an untested one); none such: t_low falls to t_high."""
    n = 400  # every image: two clean boxes at 0.95, seven at 0.65, and one false box at 0.3
    scores = np.tile([0.95, 0.95] + [0.65] * 7 + [0.3], n)
    true = np.tile([True] * 9 + [False], n)
    data = ScoredBoxes(scores, true, np.repeat(np.arange(n), 10), np.full(n, 9))
    grid = (0.9, 0.8, 0.7, 0.6, 0.5, 0.2)
    high = certify_high(data, alpha=0.2, delta=0.05, max_boxes=K, grid=grid, start=0.8)  # FDR 10% at 0.2
    assert high.threshold == 0.2 and high.start == 0.8

    def low(t: float) -> LowThreshold:
        return LowThreshold(t, 0.05, n, 0.0, True)

    assert served_thresholds(high, low(0.1), grid) == (0.2, 0.1)
    assert served_thresholds(high, low(0.55), grid) == (0.6, 0.55)  # boxes in [0.55, 0.6) go to auditors
    assert served_thresholds(high, low(0.6), grid) == (0.6, 0.6)
    assert served_thresholds(high, low(0.85), grid) == (0.2, 0.2)  # 0.9 was never tested (the walk began at 0.8)
    none = certify_high(data, alpha=0.001, delta=0.05, max_boxes=K, grid=grid, start=0.8)
    assert not none.certified and served_thresholds(none, low(0.5), grid) == (none.threshold, 0.5)
    cert = certify_detection(data, alpha=0.2, beta=0.02, delta=0.05, max_boxes=K, grid=grid)
    assert cert.low.threshold == 0.65 and (cert.threshold_high, cert.threshold_low) == (0.7, 0.65)
    assert cert.threshold_high_raised and cert.to_dict()["threshold_high_raised_to_low"]
    outcome = triage_outcome(data, cert.threshold_high, cert.threshold_low)
    assert outcome["accepted_fdr"] == 0.0 and outcome["auditor_boxes_per_image"] == 7.0  # the 0.3 box is dropped


def test_with_a_loose_miss_budget_both_promises_still_hold_over_resplits(population: ScoredBoxes) -> None:
    """beta large enough that t_low lands above the walk's end in most re-splits (t_high is then
    raised to it): the FDR at the served t_high still exceeds alpha in at most delta of re-splits,
    and the mean miss share stays <= beta."""
    rng = np.random.default_rng(5)
    alpha, beta, delta, n, runs = 0.05, 0.1, 0.1, 500, 100
    broken, raised, misses = 0, 0, []
    for _ in range(runs):
        sample = population.subset(rng.choice(population.n_images, size=n, replace=False))
        cert = certify_detection(sample, alpha, beta, delta, K, "wsr", pilot=synthetic(300, rng))
        raised += cert.threshold_high_raised
        broken += cert.high.certified and population_fdr(population, cert.threshold_high) > alpha
        misses.append(miss_losses(population, cert.threshold_low).mean())
        assert cert.threshold_low <= cert.threshold_high
    assert raised > runs * 0.9
    assert broken / runs <= delta + 3 * math.sqrt(delta * (1 - delta) / runs)
    assert np.mean(misses) <= beta


def _empirical_fdr(data: ScoredBoxes, t: float) -> float:
    accepted, false, _ = per_image_counts(data, t)
    return float(false.sum() / max(accepted.sum(), 1))


def test_triage_outcome_counts() -> None:
    truth = (np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float), np.array([1, 2]))
    boxes = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], float)
    data = score_images([(boxes, np.array([1, 2, 3]), np.array([0.99, 0.6, 0.4]))], [truth])
    out = triage_outcome(data, threshold_high=0.9, threshold_low=0.5)
    assert out["objects_auto_accepted"] == 0.5 and out["accepted_fdr"] == 0.0
    assert out["auditor_boxes_per_image"] == 1.0 and out["miss_rate"] == 0.0 and out["images_without_human"] == 0.0
