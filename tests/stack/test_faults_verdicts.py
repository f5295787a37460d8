"""The fault bench's pass rule for the slowed-inference scenarios (a pure function)."""

from stack.faults_slow import slow_passed


def test_a_slowed_run_may_rebalance_once_only_when_a_batch_overran_the_interval() -> None:
    assert slow_passed({"factor": 0.8, "first_batch_factor": 0.79, "rebalances": 0})
    assert not slow_passed({"factor": 0.8, "first_batch_factor": 0.79, "rebalances": 1})
    # the machine ran the 0.8x batch at 1.07x the interval: the overrun case, one rebalance allowed
    assert slow_passed({"factor": 0.8, "first_batch_factor": 1.07, "rebalances": 1})
    assert not slow_passed({"factor": 0.8, "first_batch_factor": 1.07, "rebalances": 2})
    assert slow_passed({"factor": 1.5, "first_batch_factor": None, "rebalances": 1})
    assert not slow_passed({"factor": 1.5, "first_batch_factor": 1.4, "rebalances": 2})
    assert not slow_passed({"factor": 0.8, "first_batch_factor": None, "rebalances": 1})
