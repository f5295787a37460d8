"""Hostile step numbers cannot freeze an episode (serving/episodes.py): a request's step must be
an integer from 0 to the wire's MAX_STEP and, for an episode whose state the consumer holds, at
most ``max_step_gap`` past its next step. Before, one record with step 2**62 set ``next_step``
past every real step, so each later step was taken for a replay and the episode's state never
moved again. A refused step is its record's dead letter (bad_schema, original bytes) and leaves
the state exactly as it was. An episode whose state is not held (new, or its state lost) starts
afresh at any valid step -- before, one past max_step_gap could never resume. A policy request
of an episode without a step is refused too: its redelivery would have been counted again."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.serving.test_episodes import D, config_for, frame_policy, record, request
from tests.serving.tiny_policy import cartpole_weights, publish_policy

from auditstream.errors import DecodeError
from auditstream.kafka import Record
from auditstream.registry import ModelRegistry
from auditstream.wire import DeadLetter, InferenceRequest, Prediction, Reason
from auditstream.wire.codec import MAX_STEP
from serving.consumer import process_batch
from serving.episodes import MAX_STEP_GAP, EpisodeStore
from serving.runtime import load_session

GAP = 50  # max_step_gap of the stores below


def hostile_steps(next_step: int | None):
    """Step values no well-formed record of an episode at ``next_step`` (None: not held) carries."""
    too_far = MAX_STEP + 1 if next_step is None else next_step + GAP + 1
    return st.one_of(st.integers(max_value=-1), st.integers(too_far, 2**63 - 1), st.booleans(),
                     st.floats(allow_nan=True), st.text(max_size=5), st.lists(st.integers(), max_size=2))


def state_of(store: EpisodeStore, key: str) -> tuple | None:
    s = store.states.get(key)
    if s is None:
        return None
    return (s.next_step, s.steps_seen, s.last_action, [(f[0], f[1].tolist(), f[2]) for f in s.frames])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), plan=st.lists(st.booleans(), min_size=1, max_size=12))
def test_a_hostile_step_is_refused_and_the_episode_goes_on_as_without_it(tmp_path: Path, data, plan) -> None:
    """Well-formed steps 0, 1, 2, ... (``plan``: True) interleaved with hostile ones (False):
    each hostile one raises bad_schema, and the stacks, contexts and final state are those of
    the well-formed steps alone -- also when a hostile record comes first, before any state."""
    card = frame_policy(tmp_path).card
    attacked = EpisodeStore(card, "t.episode-state", max_step_gap=GAP)
    clean = EpisodeStore(card, "t.episode-state", max_step_gap=GAP)
    step = 0
    for good in plan:
        if not good:
            bad = data.draw(hostile_steps(step if step else None))
            with pytest.raises(DecodeError) as refused:
                hostile = InferenceRequest("x", "stacked", np.zeros(D, np.float32), 1e9, "ep-1", bad)
                attacked.observe(hostile, np.zeros(D, np.float32), 3)
            assert refused.value.code == Reason.BAD_SCHEMA.value and "step" in refused.value.detail
            assert state_of(attacked, "ep-1") == state_of(clean, "ep-1")  # nothing moved, nothing created
            continue
        obs = np.full(D, step, np.float32)
        outs = [store.observe(request(step, obs), obs, 3) for store in (attacked, clean)]
        np.testing.assert_array_equal(outs[0].input, outs[1].input)
        assert attacked.decided(outs[0], step % 2) == clean.decided(outs[1], step % 2)
        step += 1
    assert state_of(attacked, "ep-1") == state_of(clean, "ep-1")
    if step:
        assert attacked.states["ep-1"].next_step == step  # not frozen: every real step moved it


def test_a_jump_within_the_bound_is_accepted_and_beyond_it_refused(tmp_path: Path) -> None:
    store = EpisodeStore(frame_policy(tmp_path).card, None, max_step_gap=GAP)
    zeros = np.zeros(D, np.float32)
    store.observe(request(GAP, zeros), zeros, 3)  # a resumed episode whose state was lost
    assert store.states["ep-1"].next_step == GAP + 1
    with pytest.raises(DecodeError, match=f"more than max_step_gap={GAP} past the next step {GAP + 1} of episode 'ep-1'"):
        store.observe(request(2 * GAP + 2, zeros), zeros, 3)
    assert EpisodeStore(frame_policy(tmp_path).card, None).max_step_gap == MAX_STEP_GAP
    with pytest.raises(ValueError, match="max_step_gap"):
        EpisodeStore(frame_policy(tmp_path).card, None, max_step_gap=-1)


@pytest.mark.parametrize("lost", ["evicted", "idle", "skipped at restore"])
def test_an_episode_past_max_step_gap_whose_state_was_lost_starts_afresh_at_its_next_step(tmp_path, lost) -> None:
    """The bound guards only a state the consumer holds. Before, an episode past step 10,000
    whose state was lost had ``expected = 0``: every later step was bad_schema, forever."""
    from serving.episodes import EpisodeState

    now = [1000.0]
    card = frame_policy(tmp_path).card
    far = MAX_STEP_GAP + 2_000
    old = EpisodeState("ep-1", 3, far, far, 1, [[far - 1, np.ones(D, np.float32), 1]], now[0], model=card.name)
    records = [Record("t.episode-state", 0, 0, b"ep-1", old.to_bytes() + (b"!" if lost == "skipped at restore" else b""))]
    store = EpisodeStore(card, "t.episode-state", lambda: records, max_live_episodes=1, ttl_s=60.0,
                         clock=lambda: now[0])
    store.restore([("t.requests.stacked", 3)])
    zeros = np.zeros(D, np.float32)
    if lost == "evicted":
        store.observe(request(0, zeros, key="other"), zeros, 3)
    elif lost == "idle":
        now[0] += 61.0
        store.checkpoint_outputs()
    assert "ep-1" not in store.states  # (an episode ended as too_large is dropped the same way)
    step = far + 5  # the driver went on meanwhile
    stacked = store.observe(request(step, zeros), zeros, 3)
    assert store.decided(stacked, 0) == {"steps_seen": 1, "previous_action": None}
    state = store.states["ep-1"]
    assert (state.next_step, state.steps_seen, [f[0] for f in state.frames]) == (step + 1, 1, [step])
    with pytest.raises(DecodeError, match="max_step_gap"):  # its state is held again: the bound guards it
        store.observe(request(step + GAP + MAX_STEP_GAP, zeros), zeros, 3)
    with pytest.raises(DecodeError, match=f"from 0 to {MAX_STEP}"):  # and never past the wire's bound
        store.observe(request(MAX_STEP + 1, zeros, key="new"), zeros, 3)


def test_a_policy_request_of_an_episode_without_a_step_is_refused_and_never_counted_twice(tmp_path) -> None:
    """The wire allows ``step`` null; a policy consumer took it for the episode's next step, so a
    redelivery (a crash between the state's flush and the commit) was counted and stacked again."""
    model = publish_policy(ModelRegistry(tmp_path / "models"), "stacked", cartpole_weights(scale=4.0), threshold=0.0)
    session, config = load_session(model), config_for(model)
    store = EpisodeStore(model.card, "t.episode-state")
    stepless = InferenceRequest("only-once", "stacked", np.ones(4, np.float32), 1e9, "ep-1", None)
    for attempt in range(2):  # delivered, then redelivered
        result = process_batch([record(stepless, 0)], session, config, 1.0e9, store)[0]
        assert result.dead_letter_reason == Reason.BAD_SCHEMA.value
        letter = DeadLetter.from_bytes(result.outputs[0].value)
        assert letter.value == stepless.to_bytes() and "has no 'step'" in letter.detail
    assert store.states == {}
    with pytest.raises(DecodeError, match="has no 'step'"):
        store.observe(stepless, np.ones(4, np.float32), 3)
    # an episode's end needs no step; a request of no episode needs none either
    ended = InferenceRequest("end", "stacked", np.ones(4, np.float32), 1e9, "ep-1", None, episode_end=True)
    plain = InferenceRequest("plain", "stacked", np.ones(4, np.float32), 1e9)
    results = process_batch([record(ended, 1), record(plain, 2)], session, config, 1.0e9, store)
    assert [r.dead_letter_reason for r in results] == [None, None] and results[1].route is not None


def _with_step(req: InferenceRequest, step) -> bytes:
    obj = json.loads(req.to_bytes())
    obj["step"] = step
    return json.dumps(obj).encode()


@pytest.mark.parametrize("step", [2**62, 2**63 - 1, MAX_STEP_GAP + 3, -1, True, 2.0, "3", None])
def test_process_batch_dead_letters_a_hostile_step_with_its_bytes_and_answers_the_next_steps(tmp_path, step) -> None:
    """Steps 0-1, then a record of the same episode with a hostile step, then steps 2-4: the
    hostile record is a bad_schema dead letter carrying its original bytes; steps 2-4 are
    answered as steps (steps_seen 3, 4, 5), not as replays of a step that never was."""
    model = publish_policy(ModelRegistry(tmp_path / "models"), "stacked", cartpole_weights(scale=4.0), threshold=0.6)
    session, config = load_session(model), config_for(model)
    store = EpisodeStore(model.card, "t.episode-state")
    obs = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    reqs = [request(s, obs[s]) for s in range(5)]
    hostile = Record("t.requests.stacked", 3, 2, b"ep-1", _with_step(request(9, obs[0]), step))
    records = [record(r, i) for i, r in enumerate(reqs[:2])] + [hostile] + [record(r, 3 + i) for i, r in enumerate(reqs[2:])]
    results = process_batch(records, session, config, 1.0e9, store)
    assert [r.dead_letter_reason for r in results] == [None, None, Reason.BAD_SCHEMA.value, None, None, None]
    letter = DeadLetter.from_bytes(results[2].outputs[0].value)
    assert letter.value == hostile.value and letter.source_offset == 2
    seen = [Prediction.from_bytes(o.value).details["episode"]["steps_seen"]
            for result in results[3:] for o in result.outputs if o.topic == "t.predictions"]
    assert seen == [3, 4, 5]
    assert store.states["ep-1"].next_step == 5 and store.states["ep-1"].steps_seen == 5
