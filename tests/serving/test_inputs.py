"""serving.inputs: shape, dtype and image checks against the card's input spec."""

from __future__ import annotations

import io

import numpy as np
import pytest

from auditstream.errors import DecodeError
from auditstream.registry import TensorSpec
from auditstream.wire import ImageInput
from serving.inputs import prepare_input

GRAY = TensorSpec("image", "float32", [None, 1, 4, 6])


def png(h: int, w: int, mode: str = "L") -> ImageInput:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, (w, h), 7).save(buf, format="PNG")
    return ImageInput(buf.getvalue(), "png")


@pytest.mark.parametrize("array,ok", [
    (np.zeros((1, 4, 6), np.uint8), True),
    (np.zeros((1, 4, 6), np.int64), True),
    (np.zeros((1, 4, 6), np.float64), True),
    (np.zeros((4, 6), np.float32), False),
    (np.zeros((1, 6, 4), np.float32), False),
])
def test_tensor_shape_and_dtype(array: np.ndarray, ok: bool) -> None:
    if ok:
        out = prepare_input(array, GRAY)
        assert out.dtype == np.float32 and out.shape == (1, 4, 6)
    else:
        with pytest.raises(DecodeError) as e:
            prepare_input(array, GRAY)
        assert e.value.code == "wrong_shape"


def test_float_to_integer_input_is_refused() -> None:
    with pytest.raises(DecodeError, match="does not cast"):
        prepare_input(np.zeros((3,), np.float32), TensorSpec("x", "int64", [None, 3]))


def test_image_decoded_to_spec_shape() -> None:
    out = prepare_input(png(4, 6), GRAY)
    assert out.shape == (1, 4, 6) and out.dtype == np.float32 and (out == 7).all()
    rgb = prepare_input(png(4, 6, "RGB"), TensorSpec("image", "uint8", [None, 4, 6]))
    assert rgb.shape == (4, 6) and rgb.dtype == np.uint8


@pytest.mark.parametrize("image,code", [
    (png(5, 6), "wrong_shape"),
    (ImageInput(b"\x89PNG\r\n\x1a\n garbage"), "bad_input"),
])
def test_bad_images(image: ImageInput, code: str) -> None:
    with pytest.raises(DecodeError) as e:
        prepare_input(image, GRAY)
    assert e.value.code == code


def test_pixel_limit_checked_before_decompression() -> None:
    with pytest.raises(DecodeError) as e:
        prepare_input(png(4, 6), GRAY, max_pixels=10)
    assert e.value.code == "too_large"


def test_image_for_a_non_image_model() -> None:
    with pytest.raises(DecodeError) as e:
        prepare_input(png(4, 6), TensorSpec("x", "float32", [None, 3]))
    assert e.value.code == "bad_input"
