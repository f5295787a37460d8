"""The control channel: the pure planner (tables) and the compacted topic round trip through a
real broker (a ControlView reads back what the monitor published, including after a restart)."""

from __future__ import annotations

import dataclasses
import json
import logging
import time

import pytest

from auditstream.control import MAX_REASON_CHARS, MAX_THRESHOLD_OVERRIDES, ControlState, ControlView, decode_control
from auditstream.errors import DecodeError
from auditstream.kafka import make_producer
from auditstream.wire import MAX_ID_CHARS, Route
from monitor.control import DEFER_ALL, cleared, plan_control
from qc.snapshot import ModelQC
from monitor.service import publish_control
from store.records import QueueStat, StoreStats


def snap(model="zip", version="1", over_budget=False, suggested=None, ci_high=0.01) -> ModelQC:
    return ModelQC(model=model, version=version, predictions=1000, auto=900, human=100, coverage=0.9, audited=300,
                   errors=9, error_estimate=0.03, ci_low=0.01, ci_high=ci_high, certified_risk=0.02,
                   over_budget=over_budget, ks_statistic=None, ks_pvalue=None, cusum_statistic=None, cusum_alarm=False,
                   suggested_threshold=suggested, effective_sample_size=300.0, reason="")


def stats(*queues: tuple[str, Route, int]) -> StoreStats:
    return StoreStats(queue=[QueueStat(m, "1", r, d, 10.0) for m, r, d in queues], verdicts={})


def test_queue_depth_counts_only_deferred_items_per_model():
    states = plan_control([], stats(("zip", Route.HUMAN, 7), ("zip", Route.AUTO_QC, 50), ("digits", Route.HUMAN, 2)),
                          {}, auto_tighten=False, now_s=1.0)
    assert {s.model: s.human_queue_depth for s in states} == {"digits": 2, "zip": 7}
    assert all(not s.threshold_override for s in states)


@pytest.mark.parametrize(
    "auto_tighten, over_budget, suggested, previous, expected",
    [
        (False, True, 0.97, {}, {}),  # off: never changes a threshold
        (True, False, 0.97, {}, {}),  # within budget: nothing to do
        (True, True, 0.97, {}, {"1": 0.97}),  # over budget: tightened to the suggestion
        (True, True, None, {}, {"1": DEFER_ALL}),  # no threshold passes: defer everything
        (True, True, 0.95, {"1": 0.97}, {"1": 0.97}),  # never loosens an earlier override
        (True, False, None, {"1": 0.97}, {"1": 0.97}),  # sticky once back within budget
        (False, False, None, {"2": 0.9}, {"2": 0.9}),  # other versions' overrides kept
    ],
)
def test_overrides_only_tighten_and_stick(auto_tighten, over_budget, suggested, previous, expected):
    before = {"zip": ControlState("zip", 0, previous, "earlier", 0.0)} if previous else {}
    (state,) = plan_control([snap(over_budget=over_budget, suggested=suggested)], stats(), before, auto_tighten, 2.0)
    assert state.threshold_override == expected
    if expected and not previous:
        assert "shown above its budget" in state.reason


def test_the_reason_names_what_was_judged_and_its_bound():
    """A kind judged on the false-discovery rate of its accepted parts (a detector) cites that
    bound, and says it gets no suggestion -- not the answer-level bound and "no threshold passes"."""
    (state,) = plan_control([dataclasses.replace(snap(over_budget=True), budget=0.02)], stats(), {}, True, 2.0)
    assert state.reason == ("version 1: audited error rate shown above its budget 0.02 (lower bound 0.0100); "
                            "threshold raised to 1.0100 (no threshold passes: every answer deferred)")
    detector = dataclasses.replace(snap(over_budget=True), ci_low=0.25, budget=0.02, part_fdr_low=0.031,
                                   part_fdr_estimate=0.05, part_fdr_high=0.07)
    (state,) = plan_control([detector], stats(), {}, True, 2.0)
    assert state.reason == ("version 1: audited false-discovery rate of accepted parts shown above its budget 0.02 "
                            "(lower bound 0.0310); threshold raised to 1.0100 (this kind gets no threshold "
                            "suggestion: every answer deferred)")


def test_threshold_for_never_goes_below_the_card():
    state = ControlState("zip", threshold_override={"1": 0.97, "2": 0.5})
    assert state.threshold_for("1", 0.9) == 0.97
    assert state.threshold_for("2", 0.9) == 0.9  # an override can only tighten
    assert state.threshold_for("3", 0.9) == 0.9


def test_clearing_is_explicit_and_per_version():
    state = ControlState("zip", 3, {"1": 0.97, "2": 0.99}, "x", 0.0)
    assert cleared(state, "1", 5.0).threshold_override == {"2": 0.99}
    assert cleared(state, None, 5.0).threshold_override == {}
    assert cleared(state, None, 5.0).human_queue_depth == 3


def test_the_planned_state_of_a_huge_hand_made_record_is_bounded():
    """A hand-made state with an override and 8 MB of reason (2 M emoji, 24 MB once JSON escapes
    them): the monitor keeps the override and republishes it every tick, well within what the
    producer takes (it once raised MSG_SIZE_TOO_LARGE every tick and on every restart)."""
    raw = json.dumps({"v": 1, "model": "zip", "threshold_override": {"3": 0.99}, "reason": "\U0001F600" * 2_000_000},
                     ensure_ascii=False).encode("utf-8")
    (state,) = plan_control([], stats(), {"zip": decode_control(raw)}, auto_tighten=False, now_s=1.0)
    assert state.threshold_override == {"3": 0.99} and len(state.reason) == MAX_REASON_CHARS
    assert len(state.to_bytes()) < 64 * 1024


def test_a_version_no_control_record_can_name_gets_no_override(caplog):
    """A prediction's version is any string: one too long for a control record, or one past the
    most overrides a record holds, is logged and left without an override -- the others are
    planned as usual, and the tick does not fail."""
    long_version = "7" * (MAX_ID_CHARS + 1)
    full = {"zip": ControlState("zip", 0, {str(i): 0.9 for i in range(MAX_THRESHOLD_OVERRIDES)}, "", 0.0)}
    with caplog.at_level(logging.ERROR, logger="monitor.control"):
        (state,) = plan_control([snap(version=long_version, over_budget=True, suggested=0.97)], stats(), {}, True, 1.0)
        assert state.threshold_override == {}
        (state,) = plan_control([snap(version="new", over_budget=True, suggested=0.97),
                                 snap(version="3", over_budget=True, suggested=0.99)], stats(), full, True, 1.0)
    assert len(state.threshold_override) == MAX_THRESHOLD_OVERRIDES and "new" not in state.threshold_override
    assert state.threshold_override["3"] == 0.99  # a version already overridden is still tightened
    assert caplog.text.count("its threshold cannot be raised") == 2


@pytest.mark.parametrize("value", [b"", b"\xff", b"[]", b'{"v": 2, "model": "x"}', b'{"v": 1}',
                                   b'{"v": 1, "model": "x", "threshold_override": {"1": "high"}}'])
def test_bad_control_records_raise_decode_error(value):
    with pytest.raises(DecodeError):
        ControlState.from_bytes(value)


@pytest.mark.kafka
@pytest.mark.slow
@pytest.mark.parametrize("client", ["confluent", "kafka-python"])
def test_a_new_view_reads_back_the_latest_state_per_model(stream_settings, client):
    """Also with most of the topic's partitions empty: librdkafka reports no position for a
    partition before its first record, and the view must still count as caught up."""
    stream_settings = dataclasses.replace(stream_settings, kafka_client=client)
    producer = make_producer(stream_settings)
    try:
        publish_control(producer, stream_settings, [ControlState("zip", 5, {"1": 0.97}, "tightened", 1.0),
                                                    ControlState("digits", 1, {}, "", 1.0)], 30.0)
        publish_control(producer, stream_settings, [ControlState("zip", 9, {"1": 0.98}, "tightened again", 2.0)], 30.0)
    finally:
        producer.close()
    view = ControlView(stream_settings).start()  # as a restarted monitor or a new consumer would
    try:
        assert view.wait_caught_up(60), "the view never caught up with the control topic"
        deadline = time.monotonic() + 10
        while view.get("zip") is None or view.get("zip").human_queue_depth != 9:
            assert time.monotonic() < deadline, view.states()
            time.sleep(0.1)
        assert view.get("zip").threshold_override == {"1": 0.98}
        assert view.get("digits").human_queue_depth == 1
    finally:
        view.stop()
