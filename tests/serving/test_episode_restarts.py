"""A restored episode state cannot freeze its episode (serving/episodes.py).

Before, a state record from another writer with ``next_step`` far ahead (``EpisodeState.from_bytes``
took any int64) was adopted, and every real step after it was below ``next_step``: taken for a
replay, it never moved the state, the frame stack froze and the decision's context said
``steps_seen = -999999999999999`` until the idle expiry. Now restore refuses a ``next_step`` that
does not follow the newest kept frame, a replay is only a step the state holds, and a step
below ``next_step`` that it does not hold makes the episode go on from it (counted in
``EpisodeStore.restarted``). The property: whatever state was restored and whatever steps come,
every step the state does not hold moves it and the stack, and ``steps_seen`` is >= 1."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from auditstream.errors import DecodeError
from auditstream.kafka import Record
from auditstream.wire import InferenceRequest
from auditstream.wire.tensors import encode_tensor
from auditstream.wire.codec import MAX_STEP
from serving.episodes import DEFAULT_REPLAY_WINDOW, EpisodeState, EpisodeStore
from tests.auditstream.test_wire_fuzz import FUZZ
from tests.serving.tiny_policy import policy_card

K, D, GAP = 3, 4, 50  # frames stacked, observation width, max_step_gap of the stores below
KEEP = max(K, 2) - 1 + DEFAULT_REPLAY_WINDOW  # frames a store keeps
KEY, PARTITION, NOW = "ep", 3, 1.0e9
INT64 = 2**63 - 1


def store_restored(value: bytes) -> EpisodeStore:
    """A store that restored ``value`` (the state record of episode ``KEY``), or skipped it."""
    record = Record("t.episode-state", 0, 0, KEY.encode(), value)
    store = EpisodeStore(policy_card("stacked", K * D, frame_stack=K), "t.episode-state", lambda: [record],
                         clock=lambda: NOW, max_step_gap=GAP)
    store.restore([("t.requests.stacked", PARTITION)])
    assert store.restored + store.skipped == 1
    return store


def obs_of(step: int, salt: int = 0) -> np.ndarray:
    return np.full(D, step * 10 + salt, np.float32)


def state_record(next_step: int, steps_seen: int, frame_steps: list[int]) -> bytes:
    frames = [[s, encode_tensor(obs_of(s, salt=7)), 0] for s in frame_steps]  # another writer's observations
    return json.dumps({"v": 1, "model": "stacked", "episode_key": KEY, "partition": PARTITION, "next_step": next_step,
                       "steps_seen": steps_seen, "last_action": None, "frames": frames,
                       "updated_at_s": NOW - 1}).encode()


def test_the_reported_state_is_refused_or_cannot_freeze_the_episode() -> None:
    """The reviewer's record: next_step 10**15 and no frames (a frame-less state says nothing
    about its steps, so it is adopted) -- the driver's step 0 restarts the episode from it."""
    store = store_restored(state_record(10**15, 0, []))
    for step in range(3):
        stacked = store.observe(request(step), obs_of(step), PARTITION)
        context = store.decided(stacked, 1)
        assert store.states[KEY].next_step == step + 1 and context["steps_seen"] == step + 1
        expected = [obs_of(max(0, s)) for s in range(step - K + 1, step + 1)]
        np.testing.assert_array_equal(stacked.input, np.concatenate(expected))
    assert store.restarted == 1 and len(store.checkpoint_outputs({})) == 1  # the state moved: its snapshot is written


@pytest.mark.parametrize("next_step, steps_seen, frames, why", [
    (10**15, 2, [0, 1], "does not follow the newest frame's step 1"),
    (5, 5, [1, 3], "does not follow the newest frame's step 3"),
    (4, 1, [2, 3], "steps_seen=1 is less than the 2 frames kept"),
])
def test_a_state_whose_numbers_do_not_fit_its_frames_is_refused(next_step, steps_seen, frames, why) -> None:
    value = state_record(next_step, steps_seen, frames)
    with pytest.raises(ValueError, match=why):
        EpisodeState.from_bytes(value)
    store = store_restored(value)
    assert store.skipped == 1 and store.states == {}


def test_a_redelivered_step_older_than_the_kept_frames_goes_on_from_it() -> None:
    """A driver that does not wait for its actions may have more steps in flight than the state
    keeps frames (its replay window): after a crash the oldest come back below every kept frame.
    The episode goes on from them (the steps after come back too, each a new step again, with the
    true stack) and counts its steps as if consecutive."""
    store = EpisodeStore(policy_card("stacked", K * D, frame_stack=K), None, clock=lambda: NOW)
    assert store.keep == KEEP == 4
    for step in range(10):
        store.observe(request(step), obs_of(step), PARTITION)
    for step in range(4, 10):  # redelivered: 4 and 5 are older than the kept frames 6, 7, 8, 9
        stacked = store.observe(request(step), obs_of(step), PARTITION)
        assert store.decided(stacked, 0)["steps_seen"] == step + 1
        assert store.states[KEY].next_step == step + 1  # from 4 on, each a new step again
        if step >= 6:  # 4 and 5 came back first: the stack holds the driver's frames again
            np.testing.assert_array_equal(stacked.input,
                                          np.concatenate([obs_of(s) for s in range(step - K + 1, step + 1)]))
    assert store.restarted == 1


def request(step: int) -> InferenceRequest:
    return InferenceRequest(f"{KEY}-{step}", "stacked", obs_of(step), NOW, KEY, step)


# -- the property

steps_near = st.integers(0, 40)
any_step = steps_near | st.integers(0, INT64)


@st.composite
def consistent_states(draw) -> tuple[int, int, list[int]]:
    """What the consumer writes (next_step follows the newest frame), at any step numbers."""
    frames = sorted(set(draw(st.lists(any_step, max_size=KEEP + 1))))[-KEEP:]
    next_step = frames[-1] + 1 if frames else draw(any_step)
    if next_step > INT64:
        frames, next_step = frames[:-1], frames[-1]  # (as an int64 can hold it)
    return next_step, draw(st.integers(len(frames), max(len(frames), next_step))), frames


# A consistent state, or anything from_bytes may or may not accept.
states = consistent_states() | st.tuples(any_step, any_step, st.lists(any_step, max_size=KEEP + 1))


def assert_a_state_the_consumer_can_write(state: EpisodeState) -> None:
    steps = [s for s, _, _ in state.frames]
    assert steps == sorted(set(steps)) and 1 <= len(steps) <= KEEP
    assert steps[-1] == state.next_step - 1 and len(steps) <= state.steps_seen <= state.next_step
    EpisodeState.from_bytes(state.to_bytes())  # its snapshot is one a restore adopts


@FUZZ
@given(restored=states, driver=st.lists(st.tuples(steps_near | st.integers(GAP, 2 * GAP + 45), st.booleans()),
                                        min_size=1, max_size=20))
@example(restored=(2_147_483_646, 2, [0, 2_147_483_645]), driver=[(0, False)])  # CI: K more steps would pass MAX_STEP
@example(restored=(100, 100, [97, 98, 99]), driver=[(5, True), (100, False), (3, False)])  # a dlq-replayed stale step
def test_after_any_restored_state_every_step_it_does_not_hold_moves_the_episode(restored, driver) -> None:
    """Each step is the driver's own or (``replayed``) a dead letter sent back by ``dlq replay``:
    a replayed step below the next step that the state does not hold is refused and moves nothing."""
    next_step, steps_seen, frames = restored
    store = store_restored(state_record(next_step, steps_seen, frames))
    for i, (step, replayed) in enumerate(driver):
        state = store.states.get(KEY)
        held = state is not None and step < state.next_step and step in [s for s, _, _ in state.frames]
        stale = replayed and state is not None and step < state.next_step and not held
        before = None if state is None else state.to_bytes()
        obs = obs_of(step, salt=i % 5 + 1)
        try:
            stacked = store.observe(InferenceRequest(f"r{i}", "stacked", obs, NOW, KEY, step), obs, PARTITION,
                                    replay_of="t.dead-letter[0]@7" if replayed else None)
        except DecodeError as e:  # past max_step_gap, or a stale replay: that record's dead letter, the state as it was
            assert (None if store.states.get(KEY) is None else store.states[KEY].to_bytes()) == before
            assert stale == ("is replayed" in e.detail), e.detail
            continue
        assert not stale, "a replayed step the state does not hold below its next step is refused"
        state = store.states[KEY]
        if held:  # a replay: answered from the kept frames, the state as it was
            assert state.to_bytes() == before
        else:  # a step the state did not hold: the state and the stack moved to it
            assert state.next_step == step + 1 and state.frames[-1][0] == step
            np.testing.assert_array_equal(state.frames[-1][1], obs)
        np.testing.assert_array_equal(stacked.input[-D:], obs)
        assert store.decided(stacked, 1)["steps_seen"] >= 1
        assert_a_state_the_consumer_can_write(state)
    # a driver that then steps in order gets the true stack of its last K observations: no freeze
    start = store.states[KEY].next_step if KEY in store.states else 0
    if start + K - 1 > MAX_STEP:  # no K more steps exist below the wire's bound: nothing left to step
        return
    for step in range(start, start + K):
        stacked = store.observe(InferenceRequest(f"t{step}", "stacked", obs_of(step), NOW, KEY, step), obs_of(step),
                                PARTITION)
    np.testing.assert_array_equal(stacked.input, np.concatenate([obs_of(s) for s in range(start, start + K)]))
