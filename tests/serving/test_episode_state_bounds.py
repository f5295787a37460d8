"""What an episode-state record may hold (serving/episodes.py), on both sides of the topic.

Read back: a record over ``max_state_bytes``, with more frames than the consumer keeps, with
frames out of order, or with fields no state has, is skipped, logged and counted at restore;
the other episodes' states are adopted. Before, each of these was adopted (a record of 30k
frames, or one megabyte of an unknown field, was parsed and kept in memory).

Written: a step whose frames would make its episode's state larger than ``max_state_bytes`` is
that record's ``too_large`` dead letter (original bytes), the episode is ended (tombstoned at
the next checkpoint, counted, logged) and its next step starts it afresh. Before, the snapshot
was produced whatever its size: over the state topic's ``max.message.bytes`` it was refused,
the checkpoint failed, and the consumer met the same step after every restart.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditstream.errors import AuditstreamError, DecodeError, ModelRefused
from auditstream.kafka import Record
from auditstream.registry import ModelRegistry, TensorSpec
from auditstream.wire import DeadLetter, InferenceRequest, Reason
from auditstream.wire.tensors import encode_tensor
from serving.consumer import process_batch
from serving.episodes import (
    MAX_STATE_BYTES, MAX_STATE_FRAMES, MIN_STATE_BYTES, EpisodeState, EpisodeStore, state_bytes_bound,
)
from serving.runtime import load_session
from tests.auditstream.test_wire_fuzz import FUZZ
from tests.serving.test_episode_state_records import (
    D, NOW, OWNED, TOPIC, assert_only_the_good_one_adopted, good_state, restore_bad_then_good, state_obj,
    store_over,
)
from tests.serving.test_episodes import config_for
from tests.serving.tiny_policy import policy_card, publish_policy


def frames_obj(steps: list[int]) -> list:
    tensor = encode_tensor(np.zeros(D, np.float32))
    return [[s, tensor, None] for s in steps]


def many_frames(n: int) -> bytes:
    return json.dumps(state_obj(next_step=n, steps_seen=n, frames=frames_obj(list(range(n))))).encode()


# Records the old restore adopted.
ADOPTED_BEFORE = {
    "30k frames, 2.6 MB (MAX_STATE_FRAMES: 2,023)": many_frames(30_000),
    "MAX_STATE_FRAMES + 1 frames": many_frames(MAX_STATE_FRAMES + 1),
    "frames out of order": json.dumps(state_obj(frames=frames_obj([1, 0]))).encode(),
    "a step twice": json.dumps(state_obj(frames=frames_obj([1, 1]))).encode(),
    "a megabyte in an unknown field": json.dumps(state_obj(junk="x" * 1_000_000)).encode(),
    "an unknown nested field": json.dumps(state_obj(history=[[[[0] * 50] * 50] * 50])).encode(),
}


@pytest.mark.parametrize("name", list(ADOPTED_BEFORE))
def test_a_state_over_the_bounds_is_skipped_and_the_others_adopted(name, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="serving.episodes"):
        store = restore_bad_then_good(ADOPTED_BEFORE[name])
    assert_only_the_good_one_adopted(store)
    assert store.skipped == 1
    assert f"episode-state record {TOPIC}[0]@0 (key b'x') skipped" in caplog.text


def test_a_record_over_max_state_bytes_is_skipped_before_it_is_parsed(monkeypatch) -> None:
    big = EpisodeState("x", 3, 1, 1, None, [[0, np.zeros(D, np.float32), None]], NOW, model="stacked").to_bytes() + b" " * 5000
    parsed: list[int] = []
    import serving.episodes as episodes

    real = episodes.strict_loads
    monkeypatch.setattr(episodes, "strict_loads", lambda data, *a: parsed.append(len(data)) or real(data, *a))
    store = store_over([Record(TOPIC, 0, 0, b"x", big), Record(TOPIC, 0, 1, b"ep-good", good_state().to_bytes())],
                       max_state_bytes=MIN_STATE_BYTES)
    store.restore(OWNED)
    assert_only_the_good_one_adopted(store)
    assert store.skipped == 1 and len(big) not in parsed
    with pytest.raises(ValueError, match="exceeds max_state_bytes"):
        EpisodeState.from_bytes(big, MIN_STATE_BYTES)


def test_a_frame_stack_no_state_may_hold_is_refused() -> None:
    with pytest.raises(ModelRefused, match="frame_stack"):  # a card: refused at start-up with one line
        EpisodeStore(policy_card("huge", MAX_STATE_FRAMES + 1, frame_stack=MAX_STATE_FRAMES + 1), TOPIC)
    for bad in (0, MIN_STATE_BYTES - 1, MAX_STATE_BYTES + 1, 1.5e6, True):
        with pytest.raises(ValueError, match="max_state_bytes"):
            store_over([], max_state_bytes=bad)


@pytest.mark.parametrize("frame_stack, dtype, says", [
    (0, "float32", "frame_stack=0 must be an integer from 1 to 1024"),
    ("4", "float32", "frame_stack='4' must be an integer"),
    (True, "float32", "frame_stack=True must be an integer"),
    (2000, "float32", "frame_stack=2000 must be an integer"),
    (3, "float32", "nor a flat width divisible by 3"),  # [None, 8]
    (1, "float16", "dtype float16 not allowed on the wire"),  # the checkpoint's to_bytes raised, stopping the loop
    (1, "int8", "dtype int8 not allowed on the wire"),
    (2, "bool", "dtype bool not allowed on the wire"),
])
def test_a_card_whose_frames_no_state_can_hold_is_refused_when_the_store_is_made(frame_stack, dtype, says) -> None:
    """Before: check_servable passed such a card and EpisodeStore raised a plain ValueError after the
    model was loaded (a traceback), or -- float16 -- the first checkpoint raised and stopped the loop."""
    card = dataclasses.replace(policy_card("pol", 8), preprocessing={"frame_stack": frame_stack},
                               inputs=[TensorSpec("obs", dtype, [None, 8])])
    with pytest.raises(ModelRefused, match="refusing model pol v0: ") as refused:
        EpisodeStore(card, TOPIC)
    assert says in str(refused.value) and isinstance(refused.value, AuditstreamError)


# -- properties of the restore path

tensors = st.builds(lambda n, dtype: encode_tensor(np.zeros(n, dtype)), st.integers(0, 8),
                    st.sampled_from([np.float32, np.float64, np.int64]))
frame_entries = st.lists(st.tuples(st.integers(-2, 12), tensors | st.none(), st.none() | st.integers(-1, 3))
                         .map(list), max_size=8)
extra_fields = st.dictionaries(st.text(max_size=8), st.none() | st.integers() | st.text(max_size=20), max_size=2)


@FUZZ
@given(frames=frame_entries, next_step=st.integers(0, 12), steps_seen=st.integers(0, 12), extra=extra_fields,
       max_state_bytes=st.sampled_from([MIN_STATE_BYTES, MAX_STATE_BYTES]))
def test_whatever_restore_adopts_is_within_the_bounds(frames, next_step, steps_seen, extra, max_state_bytes) -> None:
    """States near the bounds (frame counts around the 3 kept, steps in and out of order, stray
    fields): restore never raises, keeps the good record, and adopts only states a consumer
    could have written: at most ``keep`` frames of increasing steps, within ``max_state_bytes``."""
    obj = state_obj(frames=frames, next_step=next_step, steps_seen=steps_seen)
    obj.update({k: v for k, v in extra.items()})
    store = restore_bad_then_good(json.dumps(obj).encode()) if max_state_bytes == MAX_STATE_BYTES else None
    if store is None:
        store = store_over([Record(TOPIC, 0, 0, b"x", json.dumps(obj).encode()),
                            Record(TOPIC, 0, 1, b"ep-good", good_state().to_bytes())], max_state_bytes=max_state_bytes)
        store.restore(OWNED)
    assert store.restore_error is None and "ep-good" in store.states
    assert store.restored + store.skipped == 2
    for state in store.states.values():
        steps = [f[0] for f in state.frames]
        assert len(steps) <= store.keep and steps == sorted(set(steps))
        assert len(state.to_bytes()) <= store.max_state_bytes


keys = st.text(min_size=1, max_size=256)  # unicode, escapes, surrogates: JSON spells them longer
observations = st.builds(lambda shape, dtype: np.zeros(shape, dtype),
                         st.lists(st.integers(0, 5), min_size=0, max_size=4).map(tuple),
                         st.sampled_from([np.float32, np.float64, np.uint8, np.int32, np.int64]))
big = st.integers(0, 2**63 - 1)


@FUZZ
@given(key=keys, obs=st.lists(observations, max_size=4), numbers=st.tuples(big, big, big),
       last=st.none() | big, when=st.floats(0.0, 1.7e308), model=keys)
def test_the_size_bound_holds_for_any_state(key, obs, numbers, last, when, model) -> None:
    """The bound observe checks without encoding is never below the encoded record."""
    partition, next_step, steps_seen = numbers
    frames = [[i, o, last] for i, o in enumerate(obs)]
    state = EpisodeState(key, partition, next_step, steps_seen, last, frames, when, model=model)
    assert len(state.to_bytes()) <= state_bytes_bound(key, obs, model)


# -- what the consumer writes

W = 1000  # observation width: 4,000 bytes of float32, about 5.4 KB of base64 per frame
SMALL = 8192  # max_state_bytes below: one frame fits, two do not


def wide_store(**kwargs) -> EpisodeStore:
    return EpisodeStore(policy_card("wide", W), TOPIC, max_state_bytes=SMALL, **kwargs)


def wide_request(step: int, key: str = "ep-1") -> InferenceRequest:
    return InferenceRequest(f"{key}-s{step}", "wide", np.full(W, step, np.float32), 1.0e9, key, step)


def test_a_step_that_would_overgrow_the_state_ends_the_episode(caplog) -> None:
    store = wide_store()
    frame = np.zeros(W, np.float32)
    store.observe(wide_request(0), frame, 3)
    store.observe(wide_request(0, "ep-2"), frame, 3)
    store.checkpoint_outputs()
    with caplog.at_level(logging.ERROR, logger="serving.episodes"), pytest.raises(DecodeError) as refused:
        store.observe(wide_request(1), frame, 3)
    assert refused.value.code == Reason.TOO_LARGE.value and "max_state_bytes=8192" in refused.value.detail
    assert "ep-1" not in store.states and "ep-2" in store.states  # only that episode
    assert store.ended_oversized == 1 and "episode 'ep-1' ended" in caplog.text
    outputs = store.checkpoint_outputs()
    assert [(o.key, o.value) for o in outputs] == [(b"ep-1", None)]  # its tombstone, no snapshot
    store.observe(wide_request(2), frame, 3)  # the next step starts it afresh
    assert store.states["ep-1"].steps_seen == 1 and store.states["ep-1"].next_step == 3
    assert all(len(o.value) <= SMALL for o in store.checkpoint_outputs() if o.value is not None)


def test_a_first_frame_too_large_for_any_state_leaves_no_trace() -> None:
    store = EpisodeStore(policy_card("wide", 4 * W), TOPIC, max_state_bytes=SMALL)
    with pytest.raises(DecodeError, match="max_state_bytes"):
        store.observe(InferenceRequest("r", "wide", np.zeros(4 * W, np.float32), 1e9, "ep-1", 0),
                      np.zeros(4 * W, np.float32), 3)
    assert store.states == {} and store.checkpoint_outputs() == []


def test_the_checkpoint_never_writes_a_snapshot_over_the_bound(monkeypatch) -> None:
    """Should the bound observe checks ever be wrong, the encoded record is checked again."""
    import serving.episodes as episodes

    monkeypatch.setattr(episodes, "state_bytes_bound", lambda key, frames, model="": 0)
    store = wide_store()
    for step in range(3):
        store.observe(wide_request(step), np.zeros(W, np.float32), 3)
    assert [(o.key, o.value) for o in store.checkpoint_outputs()] == [(b"ep-1", None)]
    assert store.states == {} and store.ended_oversized == 1
    assert store.checkpoint_outputs() == []  # one tombstone, not one per checkpoint


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(widths=st.lists(st.integers(0, 1200), min_size=1, max_size=10))
def test_no_snapshot_the_consumer_writes_exceeds_max_state_bytes(widths) -> None:
    """Frames of any size (a card with a dynamic frame width): every snapshot produced fits, and
    a step is either taken or refused as too_large."""
    card = policy_card("wide", W)
    card.inputs[0].shape[1] = None  # any width
    store = EpisodeStore(card, TOPIC, max_state_bytes=SMALL)
    for step, width in enumerate(widths):
        try:
            store.observe(InferenceRequest(f"s{step}", "wide", np.zeros(width, np.float32), 1e9, "ep-1", step),
                          np.zeros(width, np.float32), 3)
        except DecodeError as e:
            assert e.code == Reason.TOO_LARGE.value
        for out in store.checkpoint_outputs():
            assert out.value is None or len(out.value) <= SMALL
            if out.value is not None:
                EpisodeState.from_bytes(out.value, SMALL)  # and restore would read it back


def test_process_batch_dead_letters_the_overgrowing_step_with_its_bytes(tmp_path: Path) -> None:
    weights = np.random.default_rng(3).standard_normal((W, 2)).astype(np.float32)
    model = publish_policy(ModelRegistry(tmp_path / "models"), "wide", weights, threshold=0.0)
    session, config = load_session(model), config_for(model)
    store = EpisodeStore(model.card, TOPIC, max_state_bytes=SMALL)
    records = [Record("t.requests.wide", 3, s, b"ep-1", wide_request(s).to_bytes()) for s in range(3)]
    results = process_batch(records, session, config, 1.0e9, store)
    assert [r.dead_letter_reason for r in results] == [None, Reason.TOO_LARGE.value, None]
    letter = DeadLetter.from_bytes(results[1].outputs[0].value)
    assert letter.value == records[1].value and "the episode is ended" in letter.detail
    assert store.ended_oversized == 1 and store.states["ep-1"].steps_seen == 1


# -- on the broker


@pytest.mark.kafka
@pytest.mark.slow
def test_a_state_topic_of_16_kib_ends_the_episode_that_outgrows_it(broker, tmp_path) -> None:
    """A state topic made by hand with max.message.bytes 16 KiB: serve reads the limit, refuses
    the step whose two frames (2 x 10.7 KB of base64) would not fit as a too_large dead letter
    with its bytes, tombstones the episode, and answers its next step; the consumer keeps going
    and every snapshot it writes fits the topic."""
    import threading
    import time
    import uuid

    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from prometheus_client import CollectorRegistry

    from auditstream import topics as T
    from auditstream.kafka import ensure_model_topics, make_producer, make_reader
    from auditstream.kafka.limits import RECORD_OVERHEAD_BYTES
    from auditstream.wire import Action
    from serving.app import ServeApp
    from serving.metrics import ServeMetrics

    width, limit = 2000, 16384
    settings = dataclasses.replace(broker, topic_prefix=f"eb{uuid.uuid4().hex[:10]}", models_dir=tmp_path / "models",
                                   state_dir=tmp_path / "state")
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    try:
        admin.create_topics([NewTopic(settings.episode_state_topic("wide"), settings.partitions, 1,
                                      topic_configs={"max.message.bytes": str(limit), "cleanup.policy": "compact"})])
    finally:
        admin.close()
    weights = np.random.default_rng(3).standard_normal((width, 2)).astype(np.float32)
    model = publish_policy(ModelRegistry(settings.models_dir), "wide", weights, threshold=0.0)
    ensure_model_topics(settings, ["wide"])
    producer = make_producer(settings)
    reader = make_reader(settings, [settings.topic(T.ACTIONS), settings.topic(T.DEAD_LETTER),
                                    settings.episode_state_topic("wide")])
    app = None
    try:
        app = ServeApp(settings, model, ServeMetrics("wide", CollectorRegistry()), use_control=False)
        runner = threading.Thread(target=app.run, daemon=True)
        runner.start()
        steps = [InferenceRequest(f"ep-1-s{s}", "wide", np.full(width, s, np.float32), time.time(), "ep-1", s)
                 for s in range(3)]
        actions, letters, states = [], [], []
        for step in steps:
            producer.send(settings.request_topic("wide"), step.key, step.to_bytes())
            producer.flush(30)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and runner.is_alive() and \
                    step.request_id not in [a.request_id for a in actions] + [InferenceRequest.from_bytes(d.value).request_id
                                                                         for d in letters]:
                for r in reader.poll(100, 100):
                    if r.topic == settings.topic(T.ACTIONS):
                        actions.append(Action.from_bytes(r.value))
                    elif r.topic == settings.topic(T.DEAD_LETTER):
                        letters.append(DeadLetter.from_bytes(r.value))
                    else:
                        states.append(r)
        assert runner.is_alive(), "the consumer stopped"
        assert app.episodes.max_state_bytes == limit - RECORD_OVERHEAD_BYTES - 4 * 256
        assert [a.request_id for a in actions] == ["ep-1-s0", "ep-1-s2"]
        assert [d.reason for d in letters] == [Reason.TOO_LARGE.value]
        assert letters[0].value == steps[1].to_bytes()  # the original bytes
        assert app.episodes.ended_oversized == 1
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(r.value is None for r in states):
            states += [r for r in reader.poll(100, 100) if r.topic == settings.episode_state_topic("wide")]
        assert any(r.value is None for r in states), "no tombstone for the ended episode"
        assert all(r.value is None or len(r.value) <= app.episodes.max_state_bytes for r in states)
    finally:
        if app is not None:
            app.loop.stop()
            runner.join(timeout=60)
            app.close()
        producer.close()
        reader.close()


def test_a_replay_window_whose_frames_cannot_fit_the_state_topic_is_refused_at_start() -> None:
    """Review 2026-12-05: the frames kept grow with the replay window, which is the consumer's
    AUDITSTREAM_MAX_IN_FLIGHT_BATCHES (a throughput setting); at 50 an episode of large frames was
    ended as too_large every 27 steps. A window that cannot fit, where a smaller one would, is one
    ConfigError at start naming the setting and the most that fits; frames too large for any
    state stay each step's too_large (above)."""
    from auditstream.errors import ConfigError

    with pytest.raises(ConfigError, match=r"AUDITSTREAM_MAX_IN_FLIGHT_BATCHES=50: expected at most (\d+) for policy wide") as refused:
        EpisodeStore(policy_card("wide", W), TOPIC, max_state_bytes=40_000, replay_window=50)
    most = int(re.search(r"at most (\d+)", str(refused.value)).group(1))
    store = EpisodeStore(policy_card("wide", W), TOPIC, max_state_bytes=40_000, replay_window=most)
    frame = np.zeros(W, np.float32)
    for step in range(3 * store.keep):  # the state never outgrows the topic
        store.observe(wide_request(step), frame, 3)
    assert store.ended_oversized == 0 and len(store.states["ep-1"].frames) == store.keep
    with pytest.raises(ConfigError):
        EpisodeStore(policy_card("wide", W), TOPIC, max_state_bytes=40_000, replay_window=most + 1)
    EpisodeStore(policy_card("wide", W), TOPIC, max_state_bytes=SMALL, replay_window=50)  # no window fits: not refused
