"""``auditstream bench faults --scenario slow_0.8x / slow_1.5x``: a genuinely slow model (CPU
work, stack/faults_slow.py) whose full batch takes 0.8x / 1.5x the max poll interval: no
rebalance at 0.8x; at 1.5x one (the first batch), then smaller batches that fit, one batch
reprocessed and no more (with confluent-kafka: its max poll interval may be 8 s, kafka-python's
must exceed its 30 s request timeout, so a test with it would take minutes).

The serving consumer sizes its batches from the model's measured speed; another job taking the
cores afterwards makes a batch of that size overrun the interval (a second rebalance the scenario
rightly reports). So these run alone (tests/conftest.py, ALONE_MODULES), not beside the other
timing tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.stack.test_faults_bench import assert_nothing_lost, bench_faults

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_inference_at_0_8x_the_max_poll_interval_causes_no_rebalance(tmp_path: Path) -> None:
    result = bench_faults(tmp_path, "slow_0.8x", "--requests", "50", "--poll-interval-s", "8", client="confluent")
    assert_nothing_lost(result, 50)
    assert result["first_batch_factor"] is not None, result
    if result["first_batch_factor"] < 1.0:
        assert result["rebalances"] == 0, result
    else:  # the machine ran the batch slower than measured (other jobs): this became the overrun case
        assert result["rebalances"] <= 1, result
    assert result["batch_limit"] < result["batch_records"]  # over half the interval: later batches smaller


def test_inference_at_1_5x_the_max_poll_interval_rebalances_once_and_reprocesses_one_batch(tmp_path: Path) -> None:
    result = bench_faults(tmp_path, "slow_1.5x", "--requests", "50", "--poll-interval-s", "8", client="confluent")
    assert_nothing_lost(result, 50)
    assert result["first_batch_factor"] > 1.0 and result["rebalances"] == 1
    assert result["batch_limit"] < result["batch_records"] / 2  # the next batches fit in half the interval
    assert result["duplicates"] <= result["batch_records"]  # the batch that overran, answered again, no loop
