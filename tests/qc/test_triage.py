"""Triage as tables: routes, reasons, inclusion probabilities, capacity, redelivery safety."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from auditstream.registry import TriageSpec
from auditstream.wire import Route
from qc.triage import (DEFAULT_QC_SALT, POLICIES, TriagePolicy, derived_salt, get_policy, hash_uniform,
                            inclusion_probability, triage)

SPEC = TriageSpec(threshold=0.9, certified_risk=0.01, target_risk=0.01)
NO_QC = get_policy("no-qc")
ALWAYS_QC = TriagePolicy(name="all", qc_rate=1.0)


@pytest.mark.parametrize(
    ("confidence", "parts", "policy", "route", "reason_has"),
    [
        (0.95, None, NO_QC, Route.AUTO, ">= threshold 0.9000"),
        (0.90, None, NO_QC, Route.AUTO, ">= threshold"),  # the threshold itself is accepted
        (0.8999, None, NO_QC, Route.HUMAN, "< threshold 0.9000"),
        (math.nan, None, NO_QC, Route.HUMAN, "nan < threshold"),
        (0.95, None, ALWAYS_QC, Route.AUTO_QC, "QC sample (uniform, p=1)"),
        (0.5, None, ALWAYS_QC, Route.HUMAN, "< threshold"),
        # sequences: every character must clear the threshold
        (0.99, [0.99, 0.97, 0.95], NO_QC, Route.AUTO, ">= threshold"),
        (0.99, [0.99, 0.85, 0.95], NO_QC, Route.HUMAN, "part 1 of 3 has confidence 0.8500"),
        (0.99, [0.99, 0.95, math.nan], NO_QC, Route.HUMAN, "part 2 of 3 has confidence nan"),
        (0.99, [], NO_QC, Route.AUTO, ">= threshold"),  # a detection with no boxes: the image score decides
        (0.80, [0.99], NO_QC, Route.HUMAN, "0.8000 < threshold"),
        (0.99, [0.93, 0.96], dataclasses.replace(NO_QC, part_threshold=0.95), Route.HUMAN, "part threshold 0.9500"),
        (0.99, [0.96, 0.97], dataclasses.replace(NO_QC, part_threshold=0.95), Route.AUTO, ">= threshold"),
    ],
)
def test_route_table(confidence, parts, policy, route, reason_has):
    decision = triage("req-1", confidence, SPEC, policy, part_confidences=parts)
    assert decision.route is route
    assert reason_has in decision.reason
    assert decision.over_capacity is False
    if route is Route.HUMAN:
        assert decision.qc_inclusion_prob == 1.0


def test_positional_call_is_unchanged_for_serving():
    decision = triage("abc", 0.97, SPEC, TriagePolicy(qc_rate=0.0))
    assert (decision.route, decision.qc_inclusion_prob) == (Route.AUTO, 0.0)


@pytest.mark.parametrize(
    ("confidence", "expected"),
    [
        (0.99, 0.02),  # 1 - c = reference error: pi = qc_rate
        (0.96, 0.04),  # 4x the risk: sqrt(4) = 2x the rate
        (0.9, min(0.5, 0.02 * math.sqrt(10))),
        (0.9999, 0.005),  # floored
        (1.0, 0.005),
        (0.0, 0.2),  # sqrt(100) * 0.02 = 0.2 < cap
    ],
)
def test_risk_weighted_inclusion_probability_table(confidence, expected):
    assert inclusion_probability(confidence, POLICIES["risk-weighted"]) == pytest.approx(expected)


def test_risk_weighted_is_decreasing_floored_and_capped():
    policy = get_policy("risk-weighted", risk_exponent=1.0, qc_cap=0.3)
    probs = [inclusion_probability(c, policy) for c in np.linspace(0.0, 1.0, 501)]
    assert all(a >= b for a, b in zip(probs, probs[1:]))
    assert min(probs) == policy.qc_floor and max(probs) == 0.3


def test_uniform_sampling_rate_and_stored_probability():
    policy = get_policy("uniform", qc_rate=0.1)
    decisions = [triage(f"req-{i}", 0.95, SPEC, policy) for i in range(20_000)]
    share = np.mean([d.route is Route.AUTO_QC for d in decisions])
    assert share == pytest.approx(0.1, abs=0.01)
    assert {d.qc_inclusion_prob for d in decisions} == {0.1}


def test_risk_weighted_samples_low_confidence_more():
    policy = POLICIES["risk-weighted"]
    low = np.mean([triage(f"a{i}", 0.91, SPEC, policy).route is Route.AUTO_QC for i in range(20_000)])
    high = np.mean([triage(f"b{i}", 0.9995, SPEC, policy).route is Route.AUTO_QC for i in range(20_000)])
    assert low == pytest.approx(inclusion_probability(0.91, policy), abs=0.01)
    assert high == pytest.approx(0.005, abs=0.003)
    assert low > 5 * high


def test_redelivery_gets_the_same_decision():
    policy = get_policy("risk-weighted", qc_rate=0.3)
    for i in range(500):
        first = triage(f"req-{i}", 0.93, SPEC, policy)
        assert triage(f"req-{i}", 0.93, SPEC, policy) == first
    assert hash_uniform("x") == hash_uniform("x") != hash_uniform("x", salt="cusum")


@pytest.mark.parametrize(("depth", "over"), [(None, False), (99, False), (100, True), (5000, True)])
def test_capacity_flags_but_never_auto_accepts(depth, over):
    policy = get_policy("uniform", max_human_queue_depth=100)
    deferred = triage("r", 0.5, SPEC, policy, human_queue_depth=depth)
    assert deferred.route is Route.HUMAN and deferred.over_capacity is over
    assert ("over capacity" in deferred.reason) is over
    accepted = triage("r", 0.99, SPEC, policy, human_queue_depth=depth)
    assert accepted.route in (Route.AUTO, Route.AUTO_QC) and accepted.over_capacity is False
    # the route and inclusion probability never depend on the queue (redelivery-safe)
    assert (deferred.route, deferred.qc_inclusion_prob) == (triage("r", 0.5, SPEC, policy).route, 1.0)


@pytest.mark.parametrize(
    "overrides",
    [{"qc_rate": 1.5}, {"qc_rate": -0.1}, {"sampling": "stratified"}, {"max_human_queue_depth": 0},
     {"part_threshold": 2.0}, {"sampling": "risk-weighted", "qc_floor": 0.0},
     {"sampling": "risk-weighted", "qc_floor": 0.6, "qc_cap": 0.5}, {"sampling": "risk-weighted", "risk_exponent": 0}],
)
def test_bad_policies_raise_with_the_numbers(overrides):
    with pytest.raises(ValueError) as e:
        dataclasses.replace(TriagePolicy(), **overrides)
    assert any(str(v) in str(e.value) for v in overrides.values())


def test_registry_is_frozen_and_names_policies():
    assert {"uniform", "risk-weighted", "no-qc"} <= set(POLICIES)
    assert all(name == p.name for name, p in POLICIES.items())
    with pytest.raises(TypeError):
        POLICIES["mine"] = TriagePolicy()  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        POLICIES["uniform"].qc_rate = 0.5  # type: ignore[misc]
    with pytest.raises(ValueError, match="unknown triage policy 'nope'"):
        get_policy("nope")


def test_qc_sampling_depends_on_the_secret_salt():
    """Same id and salt: same route. Another salt: another sample of the same rate, so a producer
    who knows only the public default cannot pick ids that are never audited."""
    a, b = get_policy("uniform", qc_rate=0.2, salt="s3cret-a"), get_policy("uniform", qc_rate=0.2, salt="s3cret-b")
    ids = [f"req-{i}" for i in range(5000)]
    sampled_a = {i for i in ids if triage(i, 0.99, SPEC, a).route is Route.AUTO_QC}
    sampled_b = {i for i in ids if triage(i, 0.99, SPEC, b).route is Route.AUTO_QC}
    assert sampled_a == {i for i in ids if triage(i, 0.99, SPEC, a).route is Route.AUTO_QC}  # redelivery-safe
    assert len(sampled_a) == pytest.approx(1000, abs=100) and len(sampled_b) == pytest.approx(1000, abs=100)
    assert len(sampled_a & sampled_b) == pytest.approx(200, abs=60)  # independent draws: 0.2 * 0.2 * 5000
    # ids a producer found "never audited" under the public default are audited under a secret salt
    public = get_policy("uniform", qc_rate=0.2)
    never_public = [i for i in ids if triage(i, 0.99, SPEC, public).route is Route.AUTO]
    assert sum(triage(i, 0.99, SPEC, a).route is Route.AUTO_QC for i in never_public) > 0.15 * len(never_public)


def test_default_salt_keeps_the_historic_hash():
    assert get_policy("uniform").salt == DEFAULT_QC_SALT == "qc"
    assert hash_uniform("x", get_policy("uniform").salt) == hash_uniform("x")
    assert derived_salt(DEFAULT_QC_SALT, "cusum") == "cusum"
    assert derived_salt("s3cret", "cusum") not in ("cusum", "s3cret")


def test_salt_never_in_reprs():
    from auditstream.settings import Settings

    policy = get_policy("risk-weighted", salt="hunter2-salt")
    settings = Settings(qc_salt="hunter2-salt")
    assert "hunter2-salt" not in repr(policy) and "hunter2-salt" not in str(policy)
    assert "hunter2-salt" not in repr(settings) and "qc_salt='***'" in repr(settings)
    with pytest.raises(ValueError, match="salt must be a non-empty string"):
        get_policy("uniform", salt="")
