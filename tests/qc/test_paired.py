"""The paired promotion gate: closed-form bounds, the decision table, and its error rate by simulation."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from auditstream.registry import ModelCard, TensorSpec, TriageSpec
from qc.paired import (
    TRAFFIC,
    PairedCounts,
    PairedGateConfig,
    difference_upper_bound,
    judge_stratum,
    look_delta,
    pairs_needed,
    paired_gate,
    traffic_counts,
)
from qc.promotion import decide, pairs_by_stratum


def card(version: str, certified: float | None = 0.015, target: float | None = 0.02) -> ModelCard:
    return ModelCard("digits", version, "classification", [TensorSpec("x", "float32", [None, 8])],
                     [TensorSpec("probs", "float32", [None, 10])],
                     TriageSpec(0.9, target_risk=target, delta=0.05, certified_risk=certified, coverage=0.8,
                                method="test" if certified is not None else "uncertified"))


def test_no_discordance_bound_is_the_closed_form_and_pairs_needed_matches_it():
    # b = c = 0: U = 1 - (delta/2)^(1/n); passes once n > ln(delta/2) / ln(1 - margin)
    assert difference_upper_bound(0, 0, 300, 0.05) == pytest.approx(1 - 0.025 ** (1 / 300))
    assert pairs_needed(0, 0, 0, 0.02, 0.05) == math.ceil(math.log(0.025) / math.log(0.98))  # 183
    assert difference_upper_bound(0, 0, 0, 0.05) == 1.0


@pytest.mark.parametrize("b, c, n, passes, needed", [
    (5, 20, 300, True, 300),  # better: passes now
    (20, 5, 300, False, None),  # worse by 5 points: more audits would not help
    (1, 1, 100, False, 499),  # as good, too few pairs
    (0, 0, 250, True, 250),  # identical answers on enough pairs
])
def test_judge_stratum(b, c, n, passes, needed):
    r = judge_stratum(PairedCounts("AUTO_QC", n, b, c), 0.02, 0.05)
    assert r.passes is passes and r.pairs_needed == needed
    if needed and not passes:  # the promise: at the same rates that many pairs do pass
        scaled = judge_stratum(PairedCounts("AUTO_QC", needed, round(b * needed / n), round(c * needed / n)), 0.02, 0.05)
        assert scaled.passes


def test_looks_spend_delta_that_sums_to_delta():
    assert sum(look_delta(0.05, k) for k in range(1, 100_000)) == pytest.approx(0.05, rel=1e-4)
    with pytest.raises(ValueError, match="look=0"):
        look_delta(0.05, 0)


def test_strata_split_the_looks_delta():
    results = paired_gate([PairedCounts("AUTO_QC", 500, 0, 0), PairedCounts("HUMAN", 500, 0, 0)], PairedGateConfig(), 2)
    assert all(r.delta_used == pytest.approx(look_delta(0.05, 2) / 2) for r in results)


def test_a_route_the_candidate_did_not_answer_still_counts_as_a_stratum():
    audits = [("AUTO_QC", False, False)] * 300 + [("HUMAN", True, None)] * 5
    strata = pairs_by_stratum(audits, per_route=True)
    assert [(s.stratum, s.n) for s in strata] == [("AUTO_QC", 300), ("HUMAN", 0)]
    d = decide(card("2"), card("1"), strata, PairedGateConfig())
    assert not d.promote and d.code == "too_few_pairs" and "HUMAN" in d.reason
    pooled = decide(card("2"), card("1"), pairs_by_stratum(audits, per_route=False), PairedGateConfig(per_route=False))
    assert pooled.promote and pooled.code == "not_worse"


@pytest.mark.parametrize("candidate, live, code", [
    (card("1"), card("1"), "already_live"),
    (card("2", certified=None, target=None), card("1"), "no_certificate"),
    (card("2", certified=0.03), card("1"), "certificate_misses_target"),
    (card("2", certified=0.04, target=0.05), card("1"), "target_looser_than_live"),
])
def test_certificate_rows_refuse_before_any_pair_is_counted(candidate, live, code):
    d = decide(candidate, live, [PairedCounts("AUTO_QC", 10_000, 0, 100)], PairedGateConfig())
    assert not d.promote and d.code == code


def test_uncertified_kinds_are_judged_on_the_pairs_alone():
    policy_live, policy_cand = card("1", None, None), card("2", None, None)
    d = decide(policy_cand, policy_live, [PairedCounts("AUTO_QC", 400, 0, 3)], PairedGateConfig())
    assert d.promote and "paired comparison alone" in d.reason


def test_decisions_say_how_many_more_pairs_are_needed():
    d = decide(card("2"), card("1"), [PairedCounts("AUTO_QC", 50, 0, 0)], PairedGateConfig())
    first_look = math.ceil(math.log(look_delta(0.05, 1) / 2) / math.log(0.98))  # 208 at delta 0.05 * 6 / pi^2
    assert d.code == "too_few_pairs" and d.pairs_needed == first_look - 50 and "158 more paired audits" in d.reason
    d = decide(card("2"), card("1"), [PairedCounts("AUTO_QC", 400, 40, 2)], PairedGateConfig())
    assert d.code == "worse" and d.pairs_needed is None


def test_a_candidate_worse_by_the_margin_passes_at_most_delta_of_the_time():
    """Simulation at the boundary of H0 (p10 - p01 = margin) with several nuisance rates."""
    rng = np.random.default_rng(0)
    config, n, trials = PairedGateConfig(margin=0.02, delta=0.05), 2000, 4000
    for p01 in (0.0, 0.01, 0.05):
        p10 = p01 + config.margin
        draws = rng.multinomial(n, [p10, p01, 1 - p10 - p01], size=trials)
        passed = np.mean([judge_stratum(PairedCounts("x", n, int(b), int(c)), config.margin, config.delta).passes
                          for b, c, _ in draws])
        assert passed <= config.delta
    # and an equal candidate passes most of the time with this many pairs
    draws = rng.multinomial(n, [0.01, 0.01, 0.98], size=500)
    assert np.mean([judge_stratum(PairedCounts("x", n, int(b), int(c)), 0.02, 0.05).passes for b, c, _ in draws]) > 0.9


def test_bad_counts_and_configs_are_refused():
    with pytest.raises(ValueError, match="b \\+ c"):
        PairedCounts("x", 3, 2, 2)
    with pytest.raises(ValueError, match="margin"):
        PairedGateConfig(margin=0)
    assert dataclasses.asdict(PairedGateConfig())["per_route"] is True


def test_traffic_counts_take_agreement_as_concordance_and_an_unaudited_disagreement_against_the_candidate():
    pairs = [(True, None)] * 5 + [(False, (True, False)), (False, (False, True)), (False, (True, True)),
                                  (False, (False, False)), (False, None), (False, None)]
    assert traffic_counts(pairs) == PairedCounts(TRAFFIC, 11, candidate_only_wrong=3, live_only_wrong=1, both_wrong=1,
                                                 unaudited_disagreements=2)
    assert traffic_counts([]) == PairedCounts(TRAFFIC, 0, 0, 0)
    # an identical candidate passes on traffic alone once ln(delta/2)/ln(1 - margin) requests were compared
    n = pairs_needed(0, 0, 0, 0.02, 0.05)
    assert judge_stratum(traffic_counts([(True, None)] * n), 0.02, 0.05).passes
    assert not judge_stratum(traffic_counts([(True, None)] * (n - 1)), 0.02, 0.05).passes


@pytest.mark.parametrize("audit_share", [0.0, 0.2, 1.0])
def test_the_traffic_gate_passes_a_candidate_worse_by_the_margin_at_most_delta_of_the_time(audit_share):
    """Requests of a traffic where the candidate is worse by exactly the margin; a share of the
    disagreements is audited (the rest count against the candidate): the gate stays valid."""
    rng = np.random.default_rng(1)
    margin, delta, n, trials = 0.02, 0.05, 1500, 2000
    for p01 in (0.0, 0.02):
        p10 = p01 + margin
        passed = 0
        for b, c, _ in rng.multinomial(n, [p10, p01, 1 - p10 - p01], size=trials):
            audited_b, audited_c = rng.binomial(b, audit_share), rng.binomial(c, audit_share)
            pairs = ([(True, None)] * (n - b - c) + [(False, (False, True))] * audited_b
                     + [(False, (True, False))] * audited_c + [(False, None)] * (b - audited_b + c - audited_c))
            passed += judge_stratum(traffic_counts(pairs), margin, delta).passes
        assert passed / trials <= delta
    # a candidate that disagrees rarely, and is right where audited, passes with this many requests
    pairs = [(True, None)] * (n - 6) + [(False, (True, False))] * 5 + [(False, None)]
    assert judge_stratum(traffic_counts(pairs), margin, delta).passes
