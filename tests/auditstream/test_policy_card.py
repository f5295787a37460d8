"""The policy kind's card check refuses at start-up what its consumer's episode state could not
hold (auditstream/tasks/policy.py): an input dtype the wire cannot carry -- a float16 observation
was served, then every checkpoint raised writing the episode state (encode_tensor), so the
consumer stopped and the same records came back after each restart -- and a
``preprocessing.frame_stack`` that is not an integer from 1 to MAX_FRAME_STACK or does not fit
the input, which passed the card check and raised a raw ValueError later, in EpisodeStore, after
the model was loaded and warmed up. tests/serving/test_policy_card_episodes.py checks that the
card check and EpisodeStore agree."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from tests.serving.tiny_policy import policy_card

from auditstream.errors import ModelRefused
from auditstream.registry import RegisteredModel, TensorSpec
from auditstream.tasks import lookup
from auditstream.tasks.policy import MAX_FRAME_STACK, frame_spec
from auditstream.wire import ALLOWED_DTYPES

TASK = lookup("policy")


def with_input(dtype: str = "float32", shape: list | None = None, frame_stack: Any = 1):
    card = policy_card("pol", 8)
    return dataclasses.replace(card, inputs=[TensorSpec("obs", dtype, shape or [None, 8])],
                               preprocessing={"frame_stack": frame_stack})


@pytest.mark.parametrize("dtype", ["float16", "int8", "int16", "bool", "uint16", "uint64", "complex64"])
def test_an_input_dtype_the_episode_state_cannot_carry_is_refused(dtype: str) -> None:
    with pytest.raises(ValueError, match=f"input obs is {dtype}, which the episode state .* cannot carry"):
        TASK.check_card(with_input(dtype))


@pytest.mark.parametrize("dtype", ALLOWED_DTYPES)
def test_every_wire_dtype_is_accepted(dtype: str) -> None:
    TASK.check_card(with_input(dtype))


@pytest.mark.parametrize("frame_stack", [0, -1, "4", True, 2.0, None, [2], MAX_FRAME_STACK + 1, 2000])
def test_a_frame_stack_that_is_not_an_integer_in_range_is_refused(frame_stack: Any) -> None:
    with pytest.raises(ValueError, match=r"preprocessing\.frame_stack=.* must be an integer from 1 to 1024"):
        TASK.check_card(with_input(frame_stack=frame_stack))


@pytest.mark.parametrize(("shape", "frame_stack"), [([None, 8], 3), ([None, None], 2), ([None, 3, 5], 4),
                                                    ([None, None, 5], 2)])
def test_a_frame_stack_that_does_not_fit_the_input_is_refused(shape: list, frame_stack: int) -> None:
    with pytest.raises(ValueError, match=f"neither a stack axis of {frame_stack}.*preprocessing.frame_stack"):
        TASK.check_card(with_input(shape=shape, frame_stack=frame_stack))


@pytest.mark.parametrize(("shape", "frame_stack", "frame"), [
    ([None, 8], 1, [None, 8]), ([None, 8], 2, [None, 4]), ([None, 8], 8, [None, 1]),
    ([None, 4, 3], 4, [None, 3]), ([None, 2, 6, 6], 2, [None, 6, 6]),
])
def test_a_frame_stack_that_fits_is_accepted(shape: list, frame_stack: int, frame: list) -> None:
    card = with_input(shape=shape, frame_stack=frame_stack)
    TASK.check_card(card)
    assert frame_spec(card).shape == frame


def test_a_policy_card_without_an_input_is_refused() -> None:
    with pytest.raises(ValueError, match="no input"):
        TASK.check_card(dataclasses.replace(policy_card("pol", 8), inputs=[]))


def test_serve_refuses_such_a_card_with_model_refused() -> None:
    """What `auditstream serve` runs first: one line, exit code 2, before any model is loaded."""
    from serving.app import check_servable

    model = RegisteredModel(with_input("float16"), Path("/models/pol/1/model.onnx"))
    with pytest.raises(ModelRefused, match="float16.*fix the card or re-export the model"):
        check_servable(model)
    model = RegisteredModel(with_input(frame_stack="4"), Path("/models/pol/1/model.onnx"))
    with pytest.raises(ModelRefused, match="frame_stack='4'"):
        check_servable(model)
