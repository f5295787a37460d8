"""Hostile step numbers cannot freeze an episode (serving/episodes.py): a request's step must be
an integer >= 0 and at most ``max_step_gap`` past the episode's next step. Before, one record
with step 2**62 set ``next_step`` past every real step, so each later step was taken for a
replay and the episode's state never moved again. A refused step is its record's dead letter
(bad_schema, original bytes) and leaves the state exactly as it was."""

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
from serving.consumer import process_batch
from serving.episodes import MAX_STEP_GAP, EpisodeStore
from serving.runtime import load_session

GAP = 50  # max_step_gap of the stores below


def hostile_steps(next_step: int):
    """Step values no well-formed record of an episode at ``next_step`` carries."""
    return st.one_of(st.integers(max_value=-1), st.integers(next_step + GAP + 1, 2**63 - 1), st.booleans(),
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
            bad = data.draw(hostile_steps(step))
            with pytest.raises(DecodeError) as refused:
                hostile = InferenceRequest("x", "stacked", np.zeros(D, np.float32), 1e9, "ep-1", bad)
                attacked.observe(hostile, np.zeros(D, np.float32), 3)
            assert refused.value.code == Reason.BAD_SCHEMA.value and "step" in refused.value.detail
            assert state_of(attacked, "ep-1") == state_of(clean, "ep-1")  # nothing moved, nothing created
            continue
        obs = np.full(D, step, np.float32)
        outs = [store.observe(request(step, obs), obs, 3) for store in (attacked, clean)]
        np.testing.assert_array_equal(outs[0], outs[1])
        assert attacked.decided(request(step, obs), step % 2) == clean.decided(request(step, obs), step % 2)
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
    if step is None:  # a request without a step is the episode's next one: accepted
        assert results[2].dead_letter_reason is None
        return
    assert [r.dead_letter_reason for r in results] == [None, None, Reason.BAD_SCHEMA.value, None, None, None]
    letter = DeadLetter.from_bytes(results[2].outputs[0].value)
    assert letter.value == hostile.value and letter.source_offset == 2
    seen = [Prediction.from_bytes(o.value).details["episode"]["steps_seen"]
            for result in results[3:] for o in result.outputs if o.topic == "t.predictions"]
    assert seen == [3, 4, 5]
    assert store.states["ep-1"].next_step == 5 and store.states["ep-1"].steps_seen == 5
