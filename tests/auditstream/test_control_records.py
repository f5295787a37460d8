"""Hostile records on the compacted control topic (auditstream/control.py): whatever a record
holds, the :class:`ControlView` skips it with a log line and a count, keeps the model's last good
state, applies the records after it, and its thread keeps running. The topic keeps a bad record,
so one that stopped the view would stop every restarted one too: serving would silently stop
following tightened thresholds, queue depths and rollouts. Valid records decode unchanged."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import queue
import time
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

from auditstream import kafka
from auditstream.control import MAX_REASON_CHARS, MAX_THRESHOLD_OVERRIDES, ControlState, ControlView, Rollout, decode_control
from auditstream.wire import MAX_ID_CHARS, MAX_RECORD_BYTES
from auditstream.errors import DecodeError
from auditstream.kafka import Record
from auditstream.settings import Settings
from tests.auditstream.test_wire_fuzz import FUZZ, json_values, mutated_json

TOPIC = "t.control"
GOOD = ControlState("tiny", 3, {"1": 0.97}, "tightened", 100.0)
NEWER = ControlState("tiny", 5, {"1": 0.98}, "tightened again", 200.0)
ROLLOUT = Rollout("tiny", "2", "3", 0.25, "canary", 100.0)


class FakeConsumer:
    """What the view's thread reads: one batch of records per poll, then nothing."""

    def __init__(self) -> None:
        self.batches: queue.Queue[list[Record]] = queue.Queue()
        self.closed = False

    def poll(self, max_records: int, timeout_ms: int) -> list[Record]:
        try:
            return self.batches.get(timeout=timeout_ms / 1000)
        except queue.Empty:
            return []

    def assignment(self) -> set:
        return {(TOPIC, 0)}

    def lag(self) -> dict:
        return {(TOPIC, 0): 0}

    def close(self) -> None:
        self.closed = True


def offline_view() -> ControlView:
    """A view whose consumer is a :class:`FakeConsumer` (``view.fake``); not started."""
    fake = FakeConsumer()
    with mock.patch.object(kafka, "make_consumer", lambda *args, **kwargs: fake):
        view = ControlView(Settings(topic_prefix="t"), bootstrap="unused", poll_timeout_ms=20)
    view.fake = fake
    return view


@pytest.fixture
def view():
    view = offline_view()
    yield view
    view.stop()


def spelled(obj: dict, name: str, token: str) -> bytes:
    """``obj`` with field ``name`` written as a raw JSON token (1e400, NaN: no float holds them)."""
    return json.dumps({**obj, name: "@@"}).replace('"@@"', token).encode()


STATE = {"v": 1, "model": "tiny"}
ROLLOUT_BODY = {"model": "tiny", "live_version": "2"}


def rollout_record(**changes) -> bytes:
    return json.dumps({"v": 1, "kind": "rollout", "rollout": {**ROLLOUT_BODY, **changes}}).encode()


REPORTED = {
    "human_queue_depth 1e400": spelled(STATE, "human_queue_depth", "1e400"),
    "human_queue_depth Infinity": spelled(STATE, "human_queue_depth", "Infinity"),
    "threshold_override a list": json.dumps({**STATE, "threshold_override": [1]}).encode(),
    "100k nested brackets": b"[" * 100_000 + b"]" * 100_000,
}
OTHERS = {
    "not JSON": b"garbage",
    "a JSON array": b"[]",
    "a JSON number": b"7",
    "human_queue_depth negative": json.dumps({**STATE, "human_queue_depth": -1}).encode(),
    "human_queue_depth a float": json.dumps({**STATE, "human_queue_depth": 2.5}).encode(),
    "threshold_override 1e400": json.dumps({**STATE, "threshold_override": {"1": "@@"}}).replace('"@@"', "1e400").encode(),
    "threshold_override NaN": json.dumps({**STATE, "threshold_override": {"1": "@@"}}).replace('"@@"', "NaN").encode(),
    "threshold_override a string": json.dumps({**STATE, "threshold_override": {"1": "high"}}).encode(),
    "threshold_override true": json.dumps({**STATE, "threshold_override": {"1": True}}).encode(),
    "updated_at_s 1e400": spelled(STATE, "updated_at_s", "1e400"),
    "model a number": json.dumps({**STATE, "model": 7}).encode(),
    "reason a list": json.dumps({**STATE, "reason": ["x"]}).encode(),
    "version 2": json.dumps({**STATE, "v": 2}).encode(),
    "an integer of 400 digits": spelled(STATE, "human_queue_depth", "1" * 400),
}
ROLLOUTS = {
    "rollout canary_share 1e400": rollout_record(canary_share="@@").replace(b'"@@"', b"1e400"),
    "rollout canary_share 2": rollout_record(canary_share=2, canary_version="3"),
    "rollout canary without a version": rollout_record(canary_share=0.5),
    "rollout live_version a list": rollout_record(live_version=[2]),
    "rollout model missing": json.dumps({"v": 1, "kind": "rollout", "rollout": {"live_version": "2"}}).encode(),
    "rollout updated_at_s Infinity": rollout_record(updated_at_s="@@").replace(b'"@@"', b"Infinity"),
}


@pytest.mark.parametrize("name", list(REPORTED) + list(OTHERS))
def test_a_hostile_state_is_skipped_and_the_last_good_one_kept(view, name, caplog) -> None:
    value = {**REPORTED, **OTHERS}[name]
    with pytest.raises(DecodeError):
        ControlState.from_bytes(value)
    view.apply(GOOD.to_bytes(), GOOD.key)
    with caplog.at_level(logging.WARNING, logger="auditstream.control"):
        view.apply(value, b"tiny")
    assert view.get("tiny") == GOOD and view.skipped == 1
    assert "(key b'tiny') skipped" in caplog.text
    view.apply(NEWER.to_bytes(), NEWER.key)  # the next record still applies
    assert view.get("tiny") == NEWER


@pytest.mark.parametrize("name", list(ROLLOUTS))
def test_a_hostile_rollout_is_skipped_and_the_last_good_one_kept(view, name) -> None:
    view.apply(ROLLOUT.to_bytes(), ROLLOUT.key)
    view.apply(ROLLOUTS[name], ROLLOUT.key)
    assert view.rollout("tiny") == ROLLOUT and view.skipped == 1
    newer = dataclasses.replace(ROLLOUT, live_version="3", canary_version=None, canary_share=0.0, updated_at_s=200.0)
    view.apply(newer.to_bytes(), newer.key)
    assert view.rollout("tiny") == newer


def test_a_record_under_another_models_key_is_skipped(view) -> None:
    """Keyed "other" but naming tiny: on another partition it could overwrite tiny's own record
    in any order, and neither tiny's tombstone nor its own would remove it."""
    view.apply(GOOD.to_bytes(), GOOD.key)
    view.apply(NEWER.to_bytes(), b"other")
    view.apply(ROLLOUT.to_bytes(), b"tiny")  # a rollout under a state's key
    assert view.get("tiny") == GOOD and view.rollout("tiny") is None and view.skipped == 2


def wait_for(condition, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_the_view_thread_outlives_every_hostile_record(view, monkeypatch, caplog) -> None:
    """The reported records, then one whose apply fails in a way no check foresaw, on the topic
    before the good ones: the thread reads on and applies them."""
    real_apply = ControlView.apply

    def apply(self, value, *args):
        if value == b"boom":
            raise RuntimeError("a case nobody thought of")
        return real_apply(self, value, *args)

    monkeypatch.setattr(ControlView, "apply", apply)
    hostile = list(REPORTED.values()) + [b"boom"]
    view.fake.batches.put([Record(TOPIC, 0, i, b"tiny", v) for i, v in enumerate(hostile)])
    view.fake.batches.put([Record(TOPIC, 0, len(hostile), GOOD.key, GOOD.to_bytes())])
    view.start()
    assert wait_for(lambda: view.get("tiny") == GOOD), "the view stopped before the good record"
    assert view.skipped == len(hostile)
    assert f"control record at {TOPIC}[0]@0 (key b'tiny') skipped: bad_schema" in caplog.text  # where, and why
    assert f"control record at {TOPIC}[0]@{len(hostile) - 1} (key b'tiny') skipped: applying it failed" in caplog.text
    view.fake.batches.put([Record(TOPIC, 1, 0, ROLLOUT.key, ROLLOUT.to_bytes()), Record(TOPIC, 0, 9, b"tiny", b"boom")])
    assert wait_for(lambda: view.rollout("tiny") == ROLLOUT)
    assert view._thread.is_alive() and view.wait_caught_up(1)


# -- properties


def apply_bad_then_good(bad: bytes) -> None:
    """The hostile record under tiny's key, then a good state: never raises, the good one wins."""
    view = offline_view()
    try:
        ControlState.from_bytes(bad)
    except DecodeError:
        pass
    view.apply(bad, b"tiny")
    view.apply(GOOD.to_bytes(), GOOD.key)
    assert view.get("tiny") == GOOD
    for state in view.states().values():  # whatever was kept is usable by triage
        assert math.isfinite(state.updated_at_s) and state.human_queue_depth >= 0
        assert all(math.isfinite(t) for t in state.threshold_override.values())


@FUZZ
@given(data=st.binary(max_size=512))
def test_any_bytes_are_a_state_or_skipped(data) -> None:
    apply_bad_then_good(data)


@FUZZ
@given(obj=json_values)
def test_any_json_is_a_state_or_skipped(obj) -> None:
    apply_bad_then_good(json.dumps(obj).encode())
    apply_bad_then_good(json.dumps({"v": 1, "kind": "rollout", "rollout": obj}).encode())


@FUZZ
@given(data=st.data())
def test_mutated_valid_records_are_a_state_or_skipped(data) -> None:
    """Near-valid records (a state, a rollout) reach the field checks random JSON never gets to."""
    apply_bad_then_good(mutated_json(data, json.loads(data.draw(st.sampled_from([GOOD.to_bytes(), ROLLOUT.to_bytes()])))))


# Any text but NUL, which the wire refuses in every record (test_a_nul_character_anywhere_is_skipped).
text = st.characters(codec="utf-8", exclude_characters="\x00")
names = st.text(text, min_size=1, max_size=20)
times = st.floats(0.0, 2.0e9)


@FUZZ
@given(model=names, depth=st.integers(0, 2**62), overrides=st.dictionaries(st.text(text, max_size=5), st.floats(0.0, 1.01)),
       reason=st.text(text, max_size=30), updated_at_s=times)
def test_valid_states_decode_unchanged(model, depth, overrides, reason, updated_at_s) -> None:
    state = ControlState(model, depth, overrides, reason, updated_at_s)
    assert ControlState.from_bytes(state.to_bytes()) == state
    view = offline_view()
    view.apply(state.to_bytes(), state.key)
    assert view.get(model) == state


@FUZZ
@given(model=names, live=names, canary=st.none() | names, share=st.floats(0.0, 1.0), reason=st.text(text, max_size=30),
       updated_at_s=times)
def test_valid_rollouts_decode_unchanged(model, live, canary, share, reason, updated_at_s) -> None:
    rollout = Rollout(model, live, canary, share if canary else 0.0, reason, updated_at_s)
    view = offline_view()
    view.apply(rollout.to_bytes(), rollout.key)
    assert view.rollout(model) == rollout


@pytest.mark.parametrize("record", [json.dumps({**STATE, "reason": "a\x00b"}).encode(),
                                    json.dumps({**STATE, "threshold_override": {"1\x00": 0.9}}).encode(),
                                    rollout_record(live_version="2\x00")], ids=["reason", "version", "rollout"])
def test_a_nul_character_anywhere_is_skipped(view, record) -> None:
    view.apply(GOOD.to_bytes(), GOOD.key)
    view.apply(ROLLOUT.to_bytes(), ROLLOUT.key)
    view.apply(record, ROLLOUT.key if b"rollout" in record else GOOD.key)
    assert view.get("tiny") == GOOD and view.rollout("tiny") == ROLLOUT and view.skipped == 1


# -- bounded: the monitor republishes every state each tick, and the topic hands it to every restart

# Every field at its longest: a model name and versions of MAX_ID_CHARS characters that JSON
# escapes to 12 bytes each, the most overrides, the longest reason, 64-bit integers.
WIDE = "\U0001F600"
WORST_STATE = ControlState(WIDE * MAX_ID_CHARS, 2**63 - 1,
                           {f"{i:03d}" + WIDE * (MAX_ID_CHARS - 3): -1.7976931348623157e308
                            for i in range(MAX_THRESHOLD_OVERRIDES)},
                           WIDE * MAX_REASON_CHARS, -1.7976931348623157e308)


def test_the_largest_state_fits_any_topic() -> None:
    """Under 1 MiB, the broker default a topic made by hand keeps: no state the monitor can
    build or keep is refused by the producer (a refusal stopped the monitor on every restart)."""
    assert len(WORST_STATE.to_bytes()) < 1024 * 1024
    worst_rollout = Rollout(WIDE * MAX_ID_CHARS, WIDE * MAX_ID_CHARS, WIDE * MAX_ID_CHARS, 0.5, WIDE * 10**6, 1e308)
    assert len(worst_rollout.reason) == MAX_REASON_CHARS and len(worst_rollout.to_bytes()) < 64 * 1024


def test_a_huge_reason_is_cut_and_the_override_kept(view) -> None:
    """A hand-made record with 2 M emoji of reason (8 MB, under the record limit; 24 MB once the
    monitor republished it): decoded with its reason cut, so its override still applies."""
    raw = json.dumps({**STATE, "threshold_override": {"3": 0.99}, "reason": WIDE * 2_000_000},
                     ensure_ascii=False).encode()
    assert len(raw) <= MAX_RECORD_BYTES
    view.apply(raw, b"tiny")
    state = view.get("tiny")
    assert state.threshold_override == {"3": 0.99} and state.reason == WIDE * MAX_REASON_CHARS
    rollout = decode_control(json.dumps({"v": 1, "kind": "rollout", "rollout": {**ROLLOUT_BODY, "reason": WIDE * 2_000_000}},
                                        ensure_ascii=False).encode())
    assert rollout.reason == WIDE * MAX_REASON_CHARS


@pytest.mark.parametrize("record", [
    json.dumps({**STATE, "threshold_override": {str(i): 0.9 for i in range(MAX_THRESHOLD_OVERRIDES + 1)}}).encode(),
    json.dumps({**STATE, "threshold_override": {"9" * (MAX_ID_CHARS + 1): 0.9}}).encode(),
    rollout_record(canary_version="3" * (MAX_ID_CHARS + 1)),
], ids=["too many overrides", "a version too long", "a canary version too long"])
def test_an_unbounded_record_is_skipped(view, record) -> None:
    view.apply(GOOD.to_bytes(), GOOD.key)
    view.apply(ROLLOUT.to_bytes(), ROLLOUT.key)
    view.apply(record, ROLLOUT.key if b"rollout" in record else GOOD.key)
    assert view.get("tiny") == GOOD and view.rollout("tiny") == ROLLOUT and view.skipped == 1


# -- on the broker


@pytest.mark.kafka
@pytest.mark.slow
def test_hostile_records_on_the_topic_do_not_stop_a_real_view(stream_settings) -> None:
    from auditstream.kafka import make_producer
    from monitor.service import publish_control

    topic = stream_settings.topic("control")
    producer = make_producer(stream_settings)
    try:
        # keys of their own: compaction never replaces them, so every restarted view meets them
        for i, value in enumerate(list(REPORTED.values()) + [ROLLOUTS["rollout canary_share 1e400"]]):
            producer.send(topic, f"hostile-{i}".encode(), value)
        producer.flush(30)
        publish_control(producer, stream_settings, [GOOD], 30.0)  # after the hostile ones
    finally:
        producer.close()
    view = ControlView(stream_settings, poll_timeout_ms=100).start()
    try:
        assert view.wait_caught_up(30), "the view never caught up with the control topic"
        assert wait_for(lambda: view.get("tiny") == GOOD, 10), view.states()
        assert view._thread.is_alive() and view.skipped == len(REPORTED) + 1
    finally:
        view.stop()
