"""Request inputs → model tensors, checked against the model card's input spec.

A tensor must have the spec's shape (without the batch axis) and a dtype that casts to the
spec's dtype without changing kind (uint8 → float32 is fine, float → int is refused); its values
must survive the cast: integers within the target integer type's range (int64 2**40 would wrap
to int32 0, and the model would answer another input than the one sent), floats and complex
numbers finite *after* the cast (1e300 is a finite float64 and an infinite float32). An
:class:`~auditstream.wire.ImageInput` is decoded with Pillow as the format it declares (PNG or
JPEG, and only that: Pillow would otherwise open any of its few dozen formats) to 8-bit grayscale
under a pixel limit checked *before* the pixels are decompressed (a decompression bomb stops at
its header) and must have the spec's height × width. Preprocessing beyond that lives inside the
ONNX graph (STYLE.md, habit 4).

Every refusal is a :class:`~auditstream.errors.DecodeError` whose code is the dead-letter reason.
"""

from __future__ import annotations

import io

import numpy as np

from auditstream.errors import DecodeError
from auditstream.registry import TensorSpec
from auditstream.wire import ImageInput, ModelInput, Reason

MAX_IMAGE_PIXELS = 4096 * 4096
PILLOW_FORMATS = {"png": "PNG", "jpeg": "JPEG"}  # the wire's image formats (ImageInput.format), as Pillow names them


def _shape_matches(shape: tuple[int, ...], spec: list[int | None]) -> bool:
    return len(shape) == len(spec) and all(want is None or want == got for got, want in zip(shape, spec))


def image_hw(spec: TensorSpec) -> tuple[int, int]:
    """Height and width of an image input spec: [B, H, W] or [B, 1, H, W]."""
    dims = spec.shape[1:]
    if len(dims) == 3 and dims[0] == 1:
        dims = dims[1:]
    if len(dims) != 2 or None in dims:
        raise DecodeError(Reason.BAD_INPUT.value, f"model input {spec.name} {spec.shape} does not take a grayscale image")
    return int(dims[0]), int(dims[1])  # type: ignore[arg-type]


def decode_image(image: ImageInput, spec: TensorSpec, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    from PIL import Image

    height, width = image_hw(spec)
    pillow_format = PILLOW_FORMATS.get(image.format)
    if pillow_format is None:
        raise DecodeError(Reason.BAD_SCHEMA.value, f"image format {image.format!r} not in {tuple(PILLOW_FORMATS)}")
    try:
        with Image.open(io.BytesIO(image.data), formats=[pillow_format]) as img:  # reads the header only
            w, h = img.size
            if w * h > max_pixels:
                raise DecodeError(Reason.TOO_LARGE.value, f"image {w}x{h} exceeds {max_pixels} pixels")
            if (h, w) != (height, width):
                raise DecodeError(Reason.WRONG_SHAPE.value, f"image is {h}x{w} (HxW), the model takes {height}x{width}")
            pixels = np.asarray(img.convert("L"), dtype=np.uint8)
    except DecodeError:
        raise
    except Exception as e:  # noqa: BLE001 - a decoder fed hostile bytes raises anything (SyntaxError, struct.error, ...)
        raise DecodeError(Reason.BAD_INPUT.value, f"{image.format} image does not decode: {type(e).__name__}: "
                          f"{str(e)[:200]}") from None
    return pixels.reshape(spec.shape[1:] if len(spec.shape) == 4 else (height, width))


def prepare_input(value: ModelInput, spec: TensorSpec, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """One request's input as an array of the spec's dtype and shape (without the batch axis)."""
    target = np.dtype(spec.dtype)
    array = decode_image(value, spec, max_pixels) if isinstance(value, ImageInput) else np.asarray(value)
    if not _shape_matches(array.shape, spec.shape[1:]):
        raise DecodeError(Reason.WRONG_SHAPE.value, f"input shape {list(array.shape)}, model {spec.name} takes "
                          f"{['B' if d is None else d for d in spec.shape]} (without the batch axis)")
    if array.dtype != target and not np.can_cast(array.dtype, target, casting="same_kind"):
        raise DecodeError(Reason.WRONG_SHAPE.value, f"input dtype {array.dtype} does not cast safely to {target}")
    if array.dtype != target:  # the usual request already has the card's dtype: nothing to cast
        if target.kind in "iu" and array.dtype.kind in "iub" and array.size:
            info, low, high = np.iinfo(target), int(array.min()), int(array.max())  # Python ints: exact compare
            if low < info.min or high > info.max:  # astype would wrap them silently
                raise DecodeError(Reason.BAD_INPUT.value, f"input values from {low} to {high} do not fit the model's "
                                  f"{target} (from {info.min} to {info.max})")
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused just below, not warned about
            array = array.astype(target)
    if array.dtype.kind in "fc" and not np.isfinite(array).all():  # after the cast: it may overflow to infinity
        raise DecodeError(Reason.BAD_INPUT.value, f"input holds NaN or infinite values (as {target})")
    return array
