"""serving.loadgen: generated inputs fit the model card's input spec, for every source."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from tests.conftest import tiny_card

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


def test_digits_upscaled_to_a_larger_image_spec() -> None:
    pytest.importorskip("sklearn", reason="the digits source needs scikit-learn (train extra)")
    card = dataclasses.replace(tiny_card(), inputs=[TensorSpec("image", "uint8", [None, 1, 16, 24])],
                               extra={"loadgen_source": "digits"})
    x = next(inputs_for(card))  # "auto" follows the card
    assert x.shape == (1, 16, 24) and x.dtype == np.uint8 and x.max() > 0


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="source 'mnist'"):
        next(inputs_for(tiny_card(), "mnist"))
    with pytest.raises(ValueError, match="count=-1"):
        produce_requests(None, "t", "tiny", inputs_for(tiny_card()), -1)  # type: ignore[arg-type]
