"""serving.loadgen: generated inputs fit the model card's input spec, for every source."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from tests.conftest import tiny_card

from auditstream.errors import ConfigError
from auditstream.registry import TensorSpec
from auditstream.wire import ImageInput
from serving.inputs import prepare_input
from serving.loadgen import inputs_for, produce_requests


@pytest.mark.parametrize("source", ["random", "png", "digits", "auto"])
def test_inputs_fit_the_spec(source: str) -> None:
    if source == "digits":
        pytest.importorskip("sklearn", reason="the digits source needs scikit-learn (train extra)")
    card = tiny_card()
    inputs = inputs_for(card, source, seed=3)
    for _ in range(5):
        x = next(inputs)
        assert isinstance(x, ImageInput) == (source == "png")
        assert prepare_input(x, card.inputs[0]).shape == (8, 8)


@pytest.mark.parametrize("dtype, shape, source, says", [
    ("float32", [None, 8], "png", "does not take a grayscale image"),
    ("float32", [None, 12, 12], "digits", "digits are 8x8"),
    ("float16", [None, 8, 8], "random", "dtype float16 not allowed on the wire"),
    ("int8", [None, 8, 8], "auto", "dtype int8 not allowed on the wire"),
])
def test_a_source_that_does_not_fit_the_card_is_refused_at_once(dtype, shape, source, says) -> None:
    """Before: the generator raised at the first request, after the producer reached the broker."""
    card = dataclasses.replace(tiny_card(), inputs=[TensorSpec("image", dtype, shape)])
    with pytest.raises(ConfigError, match="invalid --source=") as refused:
        inputs_for(card, source)
    assert says in str(refused.value) and "tiny" in str(refused.value)


def test_the_first_input_is_the_same_after_the_check() -> None:
    """The check makes the first input; the stream still starts with it, as seeded."""
    first = [next(inputs_for(tiny_card(), "random", seed=5)) for _ in range(2)]
    stream = inputs_for(tiny_card(), "random", seed=5)
    np.testing.assert_array_equal(next(stream), first[0])
    rng = np.random.default_rng(5)
    np.testing.assert_array_equal(next(stream), (rng.standard_normal([8, 8]), rng.standard_normal([8, 8]))[1]
                                  .astype(np.float32))


def test_digits_upscaled_to_a_larger_image_spec() -> None:
    pytest.importorskip("sklearn", reason="the digits source needs scikit-learn (train extra)")
    card = dataclasses.replace(tiny_card(), inputs=[TensorSpec("image", "uint8", [None, 1, 16, 24])],
                               extra={"loadgen_source": "digits"})
    x = next(inputs_for(card))  # "auto" follows the card
    assert x.shape == (1, 16, 24) and x.dtype == np.uint8 and x.max() > 0


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ConfigError, match="invalid --source='mnist': expected one of auto, random, png, digits"):
        inputs_for(tiny_card(), "mnist")  # at the call, before anything is sent
    with pytest.raises(ValueError, match="count=-1"):
        produce_requests(None, "t", "tiny", inputs_for(tiny_card()), -1)  # type: ignore[arg-type]
