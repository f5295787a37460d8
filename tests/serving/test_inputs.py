"""serving.inputs: shape, dtype and image checks against the card's input spec."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


def encoded(h: int, w: int, pillow_format: str, mode: str = "L") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, (w, h), 7).save(buf, format=pillow_format)
    return buf.getvalue()


# An 8x8 RGBA PNG whose IDAT is cut short (found by mutating a valid one): its header reads, and
# decoding raises SyntaxError("broken PNG file"), which no list of "decoder errors" named.
BROKEN_PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAYAAADED76LAAAACklEQVR4nGNkYGD4z8LCwoATKygo4JYcNgoA"
                              "v3kGXTbYfOQAAAAASUVORK5CYII=")
SQUARE = TensorSpec("image", "float32", [None, 8, 8])


@pytest.mark.parametrize("pillow_format", ["BMP", "GIF", "TIFF", "PPM", "DDS", "JPEG"])
def test_an_image_is_decoded_only_as_the_format_it_declares(pillow_format: str) -> None:
    """Pillow opens any of its few dozen formats; a request saying "png" gets PNG or nothing."""
    with pytest.raises(DecodeError) as e:
        prepare_input(ImageInput(encoded(8, 8, pillow_format, "RGB" if pillow_format == "JPEG" else "L"), "png"), SQUARE)
    assert e.value.code == "bad_input" and "png image does not decode" in e.value.detail
    assert prepare_input(ImageInput(encoded(8, 8, "JPEG"), "jpeg"), SQUARE).shape == (8, 8)
    with pytest.raises(DecodeError) as wrong:
        prepare_input(ImageInput(encoded(8, 8, "JPEG"), "gif"), SQUARE)  # a format the wire does not carry
    assert wrong.value.code == "bad_schema"


def test_a_decoder_raising_an_unlisted_error_is_a_bad_input() -> None:
    with pytest.raises(DecodeError) as e:
        prepare_input(ImageInput(BROKEN_PNG, "png"), SQUARE)
    assert e.value.code == "bad_input" and "SyntaxError" in e.value.detail


@pytest.mark.parametrize(("array", "spec"), [
    (np.full((1, 4, 6), 1e300), GRAY),  # finite as float64, infinite as the card's float32
    (np.full((3,), 70_000, np.int32), TensorSpec("x", "float16", [None, 3])),  # past float16's 65,504
])
def test_values_that_overflow_in_the_cast_are_refused(array: np.ndarray, spec: TensorSpec) -> None:
    with pytest.raises(DecodeError) as e:
        prepare_input(array, spec)
    assert e.value.code == "bad_input" and "infinite" in e.value.detail


@st.composite
def mutated_images(draw: st.DrawFn) -> ImageInput:
    fmt = draw(st.sampled_from(["png", "jpeg"]))
    data = bytearray(encoded(8, 8, fmt.upper(), draw(st.sampled_from(["L", "RGB"]))))
    for _ in range(draw(st.integers(0, 6))):  # flip bytes, header included
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    return ImageInput(bytes(data[:cut] if draw(st.booleans()) else data), fmt)


@settings(max_examples=300, deadline=None)
@given(image=mutated_images() | st.builds(ImageInput, st.binary(max_size=200), st.sampled_from(["png", "jpeg"])))
def test_any_image_bytes_decode_or_are_refused_as_bad_input(image: ImageInput) -> None:
    """Whatever the bytes, prepare_input returns the spec's shape or raises a DecodeError (the
    record's dead letter): never another exception, which would count against the model."""
    try:
        out = prepare_input(image, SQUARE)
    except DecodeError as e:
        assert e.code in ("bad_input", "wrong_shape", "too_large")
    else:
        assert out.shape == (8, 8) and out.dtype == np.float32 and np.isfinite(out).all()


@settings(max_examples=300, deadline=None)
@given(values=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64), min_size=3, max_size=3),
       dtype=st.sampled_from(["float16", "float32", "float64"]))
def test_a_float_input_is_finite_in_the_cards_dtype_or_refused(values: list[float], dtype: str) -> None:
    try:
        out = prepare_input(np.array(values, np.float64), TensorSpec("x", dtype, [None, 3]))
    except DecodeError as e:
        assert e.code == "bad_input"
    else:
        assert out.dtype == np.dtype(dtype) and np.isfinite(out).all()


@pytest.mark.parametrize(("values", "source", "target"), [
    ([2**40, -2**33, 5], "int64", "int32"),  # astype gave [0, 0, 5]
    ([200, -200, 1], "int64", "int8"),  # astype gave [-56, 56, 1]
    ([2**31 - 1, 0, 40_000], "int32", "int16"),
    ([255, 128, 0], "uint8", "int8"),
])
def test_integers_that_would_wrap_in_the_cast_are_refused(values: list[int], source: str, target: str) -> None:
    """The model answered another input than the one sent (and the audit item showed the original)."""
    with pytest.raises(DecodeError) as e:
        prepare_input(np.array(values, source), TensorSpec("x", target, [None, 3]))
    assert e.value.code == "bad_input" and f"do not fit the model's {target}" in e.value.detail


def test_complex_values_that_overflow_in_the_cast_are_refused() -> None:
    with pytest.raises(DecodeError, match="infinite"):
        prepare_input(np.full(3, 1e300), TensorSpec("x", "complex64", [None, 3]))


WIRE_DTYPES = ("float32", "float64", "uint8", "int32", "int64")  # what a request tensor may be
CARD_TARGETS = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16", "float32",
                "float64", "complex64", "complex128")


@st.composite
def tensors(draw: st.DrawFn) -> np.ndarray:
    dtype = np.dtype(draw(st.sampled_from(WIRE_DTYPES)))
    if dtype.kind == "f":
        values = st.floats(width=dtype.itemsize * 8, allow_nan=True, allow_infinity=False)
    else:
        info = np.iinfo(dtype)
        values = st.one_of(st.integers(int(info.min), int(info.max)), st.sampled_from([int(info.min), int(info.max)]),
                           st.integers(-300, 300).filter(lambda v: info.min <= v <= info.max))
    return np.array(draw(st.lists(values, min_size=3, max_size=3)), dtype)


@settings(max_examples=500, deadline=None)
@given(array=tensors(), target=st.sampled_from(CARD_TARGETS))
def test_property_a_cast_input_holds_the_values_sent_or_is_refused(array: np.ndarray, target: str) -> None:
    """Whatever the pair of dtypes: a DecodeError, or the model gets the numbers sent -- exactly
    into an integer type, to the target's precision into a float or complex one (never wrapped,
    never infinite)."""
    try:
        out = prepare_input(array, TensorSpec("x", target, [None, 3]))
    except DecodeError as e:
        assert e.code in ("bad_input", "wrong_shape")
        return
    assert out.dtype == np.dtype(target) and out.shape == (3,)
    if out.dtype.kind in "iu":
        assert [int(v) for v in out] == [int(v) for v in array]
    else:
        assert np.isfinite(out).all()
        if array.dtype.kind in "iu":  # an integer rounds to the target's precision, never wraps
            sent = array.astype(np.float64)
            assert np.allclose(out.real.astype(np.float64), sent, rtol=float(np.finfo(out.real.dtype).eps), atol=0)
