"""auditstream.batching: the compute estimate recovers a known cost line; the latency budget
shortens the wait by a full batch's compute and never lengthens it; Kafka queueing counts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from auditstream.batching import ComputeEstimate, collect_for_ms, queued_s


def test_estimate_recovers_fixed_plus_per_record_cost() -> None:
    est = ComputeEstimate()
    assert est.seconds(64) is None
    for n in [1, 8, 64, 32, 16, 64, 4] * 5:
        est.observe(n, 0.002 + 0.0015 * n)  # 2 ms per batch + 1.5 ms per record
    assert est.seconds(64) == pytest.approx(0.002 + 0.0015 * 64, rel=1e-6)
    assert est.seconds(1) == pytest.approx(0.0035, rel=1e-6)


def test_estimate_with_one_batch_size_scales_proportionally() -> None:
    est = ComputeEstimate()
    est.observe(32, 0.064)
    assert est.seconds(64) == pytest.approx(0.128)


def test_estimate_follows_a_slowdown() -> None:
    est = ComputeEstimate(decay=0.8)
    for n in (8, 64) * 10:
        est.observe(n, 0.001 * n)
    for n in (8, 64) * 10:
        est.observe(n, 0.003 * n)  # the machine got three times slower
    assert est.seconds(64) == pytest.approx(0.192, rel=0.05)


@pytest.mark.parametrize("max_wait, budget, full_batch_s, expected", [
    (20, 0, 0.5, 20),  # no budget: size + wait only
    (20, 150, None, 20),  # nothing measured yet
    (20, 150, 0.100, 20),  # 150 - 100 = 50 > 20: the wait limit binds
    (20, 110, 0.100, 10),  # the budget binds
    (20, 80, 0.100, 0),  # a full batch alone overruns it: cut at once
])
def test_collect_for_ms(max_wait: float, budget: float, full_batch_s: float | None, expected: float) -> None:
    assert collect_for_ms(max_wait, budget, full_batch_s) == pytest.approx(expected)


@pytest.mark.parametrize("timestamp_ms, now_s, expected", [
    (0, 1000.0, 0.0),  # no timestamp
    (1_000_050, 1000.0, 0.0),  # written "in the future": another host's clock
    (999_970, 1000.0, 0.030),
    (900_000, 1000.0, 0.150),  # capped at the budget
])
def test_queued_s(timestamp_ms: int, now_s: float, expected: float) -> None:
    assert queued_s(timestamp_ms, now_s, 150) == pytest.approx(expected)


@given(timestamp_ms=st.integers(-(2**63), 2**63 - 1), now_s=st.floats(0, 4e9), at_most_ms=st.integers(0, 60_000))
def test_any_timestamp_a_client_writes_counts_a_wait_within_the_bound(timestamp_ms: int, now_s: float,
                                                                         at_most_ms: int) -> None:
    # Record timestamps come from every producer (other clients, hand-made records, wrong clocks):
    # whatever they say, the wait counted is finite, never negative and never over the bound, so a
    # batch is at worst cut sooner, never held longer.
    waited = queued_s(timestamp_ms, now_s, at_most_ms)
    assert 0.0 <= waited <= at_most_ms / 1000.0
