"""The policy kind's card check (auditstream/tasks/policy.py) and the episode store
(serving/episodes.py) agree: a card the check accepts builds an EpisodeStore whose checkpoint
writes a state record that reads back, and whatever EpisodeStore would refuse the check refuses
first, with a message naming the field (a float16 observation used to stop the consumer at its
first checkpoint; a bad frame_stack raised a raw ValueError after the model was warmed up)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.serving.tiny_policy import policy_card

from auditstream.registry import CARD_DTYPES, TensorSpec
from auditstream.tasks import lookup
from auditstream.tasks.policy import MAX_FRAME_STACK
from auditstream.wire import InferenceRequest
from serving.episodes import EpisodeState, EpisodeStore

TASK = lookup("policy")


SHAPES = [[None, 8], [None, 6], [None, 4, 3], [None, 2, 2, 2], [None, None], [None, 3, None], [None, 1]]
FRAME_STACKS = st.one_of(st.integers(-2, 9), st.sampled_from([MAX_FRAME_STACK, MAX_FRAME_STACK + 1, 2000, "4", True,
                                                              2.0, None, [2]]))


@settings(max_examples=300, deadline=None)
@given(dtype=st.sampled_from(sorted(CARD_DTYPES)), shape=st.sampled_from(SHAPES), frame_stack=FRAME_STACKS)
def test_property_a_card_the_check_accepts_keeps_episode_state_that_round_trips(dtype: str, shape: list,
                                                                                frame_stack: Any) -> None:
    card = dataclasses.replace(policy_card("pol", 8), inputs=[TensorSpec("obs", dtype, shape)],
                               preprocessing={"frame_stack": frame_stack})
    try:
        TASK.check_card(card)
    except ValueError:
        return  # refused at start-up, before anything is built (serve: ModelRefused, exit code 2)
    store = EpisodeStore(card, "state", clock=lambda: 1000.0)
    frame = np.zeros([2 if d is None else d for d in store.spec.shape[1:]], dtype=np.dtype(store.spec.dtype))
    for step in range(2):
        request = InferenceRequest(f"r{step}", "pol", frame, 999.0, episode_key="ep", step=step)
        stacked = store.observe(request, frame, 0)
        assert stacked.input.dtype == frame.dtype
        store.decided(stacked, 1)
    (output,) = store.checkpoint_outputs({})
    state = EpisodeState.from_bytes(output.value)
    assert state.next_step == 2 and len(state.frames) == 2
