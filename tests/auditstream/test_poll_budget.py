"""auditstream.poll_budget: the batch-size limit that keeps polls inside max.poll.interval."""

from __future__ import annotations

import pytest

from auditstream.poll_budget import PollBudget


@pytest.mark.parametrize(("records", "elapsed_s", "limit", "overruns"), [
    (64, 1.0, 64, 0),    # fast: unchanged
    (64, 4.9, 64, 0),    # just under the target (half of 10 s)
    (64, 8.0, 40, 0),    # 0.8x the interval: 64 * 5 / 8 = 40 records fit in the target
    (64, 15.0, 21, 1),   # 1.5x: one overrun, 64 * 5 / 15 = 21.3 -> 21
    (1, 15.0, 1, 1),     # one record alone is too slow: nothing fits, limit 1
])
def test_one_batch_sets_the_limit(records: int, elapsed_s: float, limit: int, overruns: int) -> None:
    budget = PollBudget(max_batch_size=64, max_poll_interval_s=10.0)
    budget.observe(records, elapsed_s)
    assert (budget.limit, budget.overruns) == (limit, overruns)


def test_a_slow_spell_overruns_once_then_fits_and_the_limit_grows_back() -> None:
    budget, per_record_s = PollBudget(max_batch_size=64, max_poll_interval_s=10.0), 15.0 / 64  # 1.5x per full batch
    for _ in range(20):
        budget.observe(budget.limit, budget.limit * per_record_s)
    assert budget.overruns == 1 and budget.limit * per_record_s <= budget.target_s
    for _ in range(10):  # inference fast again: doubling back to the configured size, never past it
        budget.observe(budget.limit, budget.limit * 0.001)
    assert budget.limit == 64


def test_the_messages_say_what_happened_and_what_to_raise() -> None:
    budget = PollBudget(max_batch_size=8, max_poll_interval_s=10.0)
    assert "at most 2 records (were 8)" in budget.observe(8, 20.0)
    assert "AUDITSTREAM_MAX_POLL_INTERVAL_MS" in budget.observe(1, 12.0)
    assert budget.observe(1, 12.0) is None  # said once
    assert budget.observe(0, 99.0) is None


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="share"):
        PollBudget(8, 10.0, share=1.0)
