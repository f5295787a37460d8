"""Hostile records on the compacted episode-state topic (serving/episodes.py): whatever a record
holds, :meth:`EpisodeStore.restore` (the consumer's on_assign hook) skips it with a log line and
a count, never raises, and still adopts the good records around it. A record the topic keeps is
met again by every restart, so one that raised would stop the policy consumer for good. Valid
states round-trip unchanged."""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
import uuid

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from auditstream import topics as T
from auditstream.kafka import Record, ensure_model_topics, make_producer, make_reader
from auditstream.registry import ModelRegistry
from auditstream.wire import Action, InferenceRequest
from serving.app import ServeApp
from serving.episodes import EpisodeState, EpisodeStore
from serving.metrics import ServeMetrics
from tests.auditstream.test_wire_fuzz import FUZZ, json_values, mutated_json
from tests.serving.tiny_policy import policy_card, publish_policy

K, D = 3, 4  # frames stacked, observation width
TOPIC = "t.episode-state"
OWNED = [("t.requests.stacked", 3)]
NOW = 1.0e9


def store_over(records: list[Record], **kwargs) -> EpisodeStore:
    return EpisodeStore(policy_card("stacked", K * D, frame_stack=K), TOPIC, lambda: records,
                        clock=lambda: NOW, **kwargs)


def good_state(key: str = "ep-good") -> EpisodeState:
    return EpisodeState(key, 3, 2, 2, 1, [[0, np.zeros(D, np.float32), 0], [1, np.ones(D, np.float32), 1]], NOW - 5,
                        model="stacked")


def state_obj(**changes) -> dict:
    obj = json.loads(good_state("x").to_bytes())
    obj.update(changes)
    return obj


def spelled(name: str, token: str) -> bytes:
    """The good state with field ``name`` written as a raw JSON token (1e400, NaN: no float holds them)."""
    return json.dumps(state_obj(**{name: "@@"})).replace('"@@"', token).encode()


def restore_bad_then_good(bad: bytes, bad_key: bytes = b"x") -> EpisodeStore:
    """The hostile record first, a good one after it, on the same partition of the state topic."""
    store = store_over([Record(TOPIC, 0, 0, bad_key, bad), Record(TOPIC, 0, 1, b"ep-good", good_state().to_bytes())])
    store.restore(OWNED)  # must not raise: it runs inside the client's rebalance callback
    return store


def assert_only_the_good_one_adopted(store: EpisodeStore) -> None:
    assert set(store.states) == {"ep-good"} and store.restored == 1
    assert store.restore_error is None  # the consumer keeps serving
    assert store.states["ep-good"].to_bytes() == good_state().to_bytes()


REPORTED = {
    "a JSON array": b"[]",
    "a JSON number": b"7",
    "partition Infinity": spelled("partition", "Infinity"),
    "next_step 1e400": spelled("next_step", "1e400"),
    "200k nested brackets": b"[" * 200_000 + b"]" * 200_000,
    "updated_at_s NaN": spelled("updated_at_s", "NaN"),
}
OTHERS = {
    "not JSON": b"\xff\xfe",
    "partition a string": json.dumps(state_obj(partition="3")).encode(),
    "next_step a bool": json.dumps(state_obj(next_step=True)).encode(),
    "negative steps_seen": json.dumps(state_obj(steps_seen=-1)).encode(),
    "steps_seen past next_step": json.dumps(state_obj(steps_seen=3)).encode(),
    "last_action a float": json.dumps(state_obj(last_action=1.5)).encode(),
    "frames a dict": json.dumps(state_obj(frames={})).encode(),
    "a frame of two items": json.dumps(state_obj(frames=[[0, {}]])).encode(),
    "a frame from the future": json.dumps(state_obj(frames=[[2, state_obj()["frames"][0][1], 0]])).encode(),
    "state version 2": json.dumps(state_obj(v=2)).encode(),
    "a field missing": json.dumps({k: v for k, v in state_obj().items() if k != "last_action"}).encode(),
    "episode_key empty": json.dumps(state_obj(episode_key="")).encode(),
}


# Well-formed states this consumer still must not adopt.
UNSERVABLE = {
    "updated_at_s 1e308 (would never expire)": EpisodeState("x", 3, 0, 0, None, [], 1e308, model="stacked").to_bytes(),
    "a frame of another width": EpisodeState("x", 3, 1, 1, None, [[0, np.zeros(D + 1, np.float32), None]], NOW,
                                             model="stacked").to_bytes(),
    "a frame of another dtype": EpisodeState("x", 3, 1, 1, None, [[0, np.zeros(D, np.float64), None]], NOW,
                                             model="stacked").to_bytes(),
    "another episode's key": EpisodeState("y", 3, 0, 0, None, [], NOW, model="stacked").to_bytes(),
    # Two models' consumers once shared one state topic and adopted each other's episodes.
    "another model's state": EpisodeState("x", 3, 0, 0, None, [], NOW, model="other-policy").to_bytes(),
}


@pytest.mark.parametrize("name", list(REPORTED) + list(OTHERS) + list(UNSERVABLE))
def test_a_hostile_record_is_skipped_and_the_next_one_adopted(name, caplog) -> None:
    value = {**REPORTED, **OTHERS, **UNSERVABLE}[name]
    if name not in UNSERVABLE:
        with pytest.raises(ValueError, match="unreadable episode state"):
            EpisodeState.from_bytes(value)
    with caplog.at_level(logging.WARNING, logger="serving.episodes"):
        store = restore_bad_then_good(value)
    assert_only_the_good_one_adopted(store)
    assert store.skipped == 1
    assert f"episode-state record {TOPIC}[0]@0 (key b'x') skipped" in caplog.text  # where it is, and why


def test_a_nan_time_no_longer_keeps_an_episode_forever() -> None:
    store = store_over([Record(TOPIC, 0, 0, b"x", REPORTED["updated_at_s NaN"])], ttl_s=1.0)
    store.restore(OWNED)
    store.checkpoint_outputs()
    assert store.states == {} and store.skipped == 1


def test_a_state_under_another_episodes_key_cannot_replace_it() -> None:
    """Keyed "zzz" but naming ep-good: adopted, it would overwrite ep-good's state, and neither
    ep-good's tombstone nor its own would ever remove it."""
    impostor = EpisodeState("ep-good", 3, 40, 40, 0, [], NOW, model="stacked").to_bytes()
    store = store_over([Record(TOPIC, 0, 0, b"ep-good", good_state().to_bytes()),
                        Record(TOPIC, 0, 1, b"zzz", impostor)])
    store.restore(OWNED)
    assert_only_the_good_one_adopted(store)
    assert store.skipped == 1


def test_a_failure_the_checks_missed_skips_only_its_record(monkeypatch, caplog) -> None:
    real = EpisodeState.from_bytes.__func__

    def from_bytes(cls, data: bytes, *args) -> EpisodeState:
        if data == b"boom":
            raise RecursionError("a case nobody thought of")
        return real(cls, data, *args)

    monkeypatch.setattr(EpisodeState, "from_bytes", classmethod(from_bytes))
    store = restore_bad_then_good(b"boom")
    assert_only_the_good_one_adopted(store)
    assert store.skipped == 1 and "RecursionError" in caplog.text


# -- properties


def restore_never_raises(bad: bytes) -> None:
    store = restore_bad_then_good(bad)
    assert store.restore_error is None
    assert store.states["ep-good"].to_bytes() == good_state().to_bytes()
    for state in store.states.values():  # whatever was adopted can be served from and written back
        EpisodeState.from_bytes(state.to_bytes())
        assert np.isfinite(state.updated_at_s)


def from_bytes_or_value_error(data: bytes) -> None:
    try:
        EpisodeState.from_bytes(data)
    except ValueError:
        pass


@FUZZ
@given(data=st.binary(max_size=512))
def test_any_bytes_are_a_state_or_skipped(data) -> None:
    from_bytes_or_value_error(data)
    restore_never_raises(data)


@FUZZ
@given(obj=json_values)
def test_any_json_is_a_state_or_skipped(obj) -> None:
    data = json.dumps(obj).encode()
    from_bytes_or_value_error(data)
    restore_never_raises(data)


# Values JSON can spell that a Python float or int cannot hold: each parses, then must be refused.
@FUZZ
@given(data=st.data())
def test_mutated_valid_states_are_a_state_or_skipped(data) -> None:
    """Near-valid records reach the field checks that random JSON never gets to."""
    record = mutated_json(data, json.loads(good_state("x").to_bytes()))
    from_bytes_or_value_error(record)
    restore_never_raises(record)


@FUZZ
@given(key=st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=20), partition=st.integers(0, 2**31 - 1),
       steps=st.lists(st.integers(0, 2**40), min_size=0, max_size=K, unique=True),  # the store keeps K
       actions=st.lists(st.none() | st.integers(0, 2**31), min_size=4, max_size=4),
       updated_at_s=st.floats(0.0, NOW))
def test_valid_states_round_trip_unchanged(key, partition, steps, actions, updated_at_s) -> None:
    steps = sorted(steps)
    next_step = steps[-1] + 1 if steps else 0
    frames = [[s, np.full(D, s % 7, np.float32), a] for s, a in zip(steps, actions)]
    state = EpisodeState(key, partition, next_step, len(steps), actions[0], frames, updated_at_s, model="stacked")
    again = EpisodeState.from_bytes(state.to_bytes())
    assert (again.episode_key, again.partition, again.next_step, again.steps_seen, again.last_action,
            again.updated_at_s) == (key, partition, next_step, len(steps), actions[0], updated_at_s)
    assert again.to_bytes() == state.to_bytes()
    store = store_over([Record(TOPIC, 0, 0, key.encode(), state.to_bytes())])
    store.restore([("t.requests.stacked", partition)])
    assert store.states[key].to_bytes() == state.to_bytes()


# -- on the broker


@pytest.mark.kafka
@pytest.mark.slow
def test_hostile_state_records_do_not_stop_a_real_policy_consumer(broker, tmp_path) -> None:
    """The reported records on the real state topic, under keys no later record replaces (as a
    restarted consumer meets them): the consumer restores past them and answers the episode."""
    settings = dataclasses.replace(broker, topic_prefix=f"es{uuid.uuid4().hex[:10]}", models_dir=tmp_path / "models",
                                   state_dir=tmp_path / "state")
    weights = np.random.default_rng(3).standard_normal((K * D, 2)).astype(np.float32)
    model = publish_policy(ModelRegistry(settings.models_dir), "stacked", weights, frame_stack=K, threshold=0.0)
    ensure_model_topics(settings, ["stacked"])
    producer = make_producer(settings)
    reader = make_reader(settings, [settings.topic(T.ACTIONS)])
    app = None
    try:
        for i, value in enumerate(REPORTED.values()):
            producer.send(settings.episode_state_topic("stacked"), f"hostile-{i}".encode(), value)
        producer.flush(30)
        registry = CollectorRegistry()
        app = ServeApp(settings, model, ServeMetrics(model.card.name, registry), use_control=False)
        runner = threading.Thread(target=app.run, daemon=True)
        runner.start()
        step = InferenceRequest("ep-1-s0", "stacked", np.ones(D, np.float32), time.time(), "ep-1", 0)
        producer.send(settings.request_topic("stacked"), step.key, step.to_bytes())
        producer.flush(30)
        deadline, actions = time.monotonic() + 30, []
        while not actions and time.monotonic() < deadline and runner.is_alive():
            answers = (Action.from_bytes(r.value) for r in reader.poll(100, 100))
            actions = [a for a in answers if a.request_id == "ep-1-s0"]
        assert actions, "the policy consumer gave no action" + ("" if runner.is_alive() else ": it stopped")
        assert app.episodes.skipped >= len(REPORTED) and app.episodes.restore_error is None
        skipped = registry.get_sample_value("auditstream_serve_skipped_state_records",
                                            {"model": "stacked", "topic": "episode-state"})
        assert skipped == app.episodes.skipped  # what an operator sees on /metrics
    finally:
        if app is not None:
            app.loop.stop()
            runner.join(timeout=60)
            app.close()
        producer.close()
        reader.close()
