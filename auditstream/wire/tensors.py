"""Tensors and images on the wire: base64 of little-endian bytes (or a plain ``values`` list),
with the shape checked against :data:`MAX_TENSOR_ELEMENTS` before any buffer is made."""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from auditstream.errors import DecodeError
from auditstream.wire.codec import ALLOWED_DTYPES, MAX_RANK, MAX_TENSOR_ELEMENTS, Reason

# --------------------------------------------------------------------------------------------
# tensors and inputs


def encode_tensor(array: np.ndarray) -> dict[str, Any]:
    """A tensor as ``{"dtype", "shape", "b64"}`` (little-endian bytes, C order)."""
    array = np.asarray(array)
    if array.dtype.name not in ALLOWED_DTYPES:
        raise ValueError(f"dtype {array.dtype} not allowed on the wire; use one of {ALLOWED_DTYPES}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ValueError(f"tensor of shape {array.shape} holds NaN or infinity; the wire carries finite numbers only")
    data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    return {"dtype": array.dtype.name, "shape": list(array.shape), "b64": base64.b64encode(data).decode("ascii")}


def decode_tensor(obj: Any, bools_possible: bool = True) -> np.ndarray:
    """Inverse of :func:`encode_tensor`; also accepts ``{"dtype", "shape", "values"}``.
    ``bools_possible`` False: the record's JSON text holds no ``true``/``false`` literal, so the
    values need no scan for booleans (a caller with the raw bytes knows at memory speed)."""
    if not isinstance(obj, dict):
        raise DecodeError(Reason.BAD_SCHEMA.value, "input.tensor must be an object")
    dtype, shape = obj.get("dtype", "float32"), obj.get("shape")
    if dtype not in ALLOWED_DTYPES:
        raise DecodeError(Reason.BAD_SCHEMA.value, f"tensor dtype {dtype!r} not in {ALLOWED_DTYPES}")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_RANK
        or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d for d in shape)
    ):
        raise DecodeError(Reason.BAD_SCHEMA.value, f"tensor shape must be a list of <= {MAX_RANK} non-negative ints")
    # Bound each dimension first (a 5000-digit int cannot even be formatted), then the product
    # of the non-zero ones: numpy refuses [0, 2**40, 2**40] although it holds no element.
    if any(d > MAX_TENSOR_ELEMENTS for d in shape):
        raise DecodeError(Reason.TOO_LARGE.value, f"tensor dimension over {MAX_TENSOR_ELEMENTS}")
    extent = math.prod(d for d in shape if d)
    if extent > MAX_TENSOR_ELEMENTS:
        raise DecodeError(Reason.TOO_LARGE.value, f"tensor shape {shape} spans {extent} elements, over {MAX_TENSOR_ELEMENTS}")
    count = extent if all(shape) else 0
    np_dtype = np.dtype(dtype).newbyteorder("<")
    if "b64" in obj:
        b64 = obj["b64"]
        if not isinstance(b64, str):
            raise DecodeError(Reason.BAD_SCHEMA.value, "tensor b64 must be a string")
        # Compare lengths before decoding: a short payload cannot claim a huge shape.
        if len(b64) != 4 * -(-count * np_dtype.itemsize // 3):
            raise DecodeError(Reason.WRONG_SHAPE.value, f"{len(b64)} base64 characters do not fill shape {shape} of {dtype}")
        raw = _b64decode(b64, "tensor b64")
        if len(raw) != count * np_dtype.itemsize:  # padding leaves 1-2 bytes of slack
            raise DecodeError(Reason.WRONG_SHAPE.value, f"{len(raw)} bytes do not fill shape {shape} of {dtype}")
        array = np.frombuffer(raw, dtype=np_dtype).reshape(shape).astype(np_dtype.newbyteorder("="), copy=False)
    else:
        array = _values_array(obj.get("values"), np.dtype(dtype), shape, count, bools_possible)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise DecodeError(Reason.BAD_INPUT.value, "tensor holds NaN or infinity")
    return array


def _values_array(values: Any, dtype: np.dtype, shape: list[int], count: int, bools_possible: bool = True) -> np.ndarray:
    """A ``values`` list (flat or nested) as an array, refusing what a cast would silently bend:
    strings, bools and nulls (numpy would turn them into numbers or NaN), fractions or
    out-of-range numbers for integer dtypes (numpy would truncate or wrap them)."""
    if not isinstance(values, list):
        raise DecodeError(Reason.BAD_SCHEMA.value, "tensor needs 'b64' (a string) or 'values' (a list)")
    try:
        array = np.asarray(values)
    except (ValueError, TypeError, OverflowError, RecursionError) as e:  # ragged, or absurdly deep
        raise DecodeError(Reason.BAD_SCHEMA.value, f"tensor values are not a regular array: {str(e)[:200]}") from None
    if array.size and array.dtype.kind not in "iuf":  # an empty list infers float64: fine
        raise DecodeError(Reason.BAD_SCHEMA.value, f"tensor values must be numbers, got {array.dtype.kind!r} elements")
    # [1, true] infers numbers: true would read as 1 (the walk costs a third of this function)
    if bools_possible and array.size and _holds_bool(values, array.ndim):
        raise DecodeError(Reason.BAD_SCHEMA.value, "tensor values must be numbers, got a boolean among them")
    if array.size != count:
        raise DecodeError(Reason.WRONG_SHAPE.value, f"{array.size} values do not fill shape {shape}")
    if dtype.kind in "iu" and array.size:
        if array.dtype.kind == "f" and not (np.isfinite(array).all() and (array == np.round(array)).all()):
            raise DecodeError(Reason.BAD_SCHEMA.value, f"{dtype} tensor values must be integers")
        info = np.iinfo(dtype)
        # info.max + 1 is a power of two, exact as a float; info.max itself is not for 64 bits:
        # float(2**63 - 1) == 2.0**63, so a float 9.223372036854775807e18 passed "<= max" and wrapped.
        too_large = array.max() >= float(info.max + 1) if array.dtype.kind == "f" else array.max() > info.max
        if array.min() < info.min or too_large:
            raise DecodeError(Reason.BAD_SCHEMA.value, f"values outside [{info.min}, {info.max}] for {dtype}")
    return array.astype(dtype, copy=False).reshape(shape)


def may_hold_bools(data: bytes) -> bool:
    """Whether a record's UTF-8 JSON text may hold a true/false literal (JSON spells them only so;
    anything but bytes or a bytearray: assume it may)."""
    if not isinstance(data, (bytes, bytearray)):
        return True
    return b"true" in data or b"false" in data


def _holds_bool(values: list, depth: int) -> bool:
    """Whether a regular nested list ``depth`` levels deep holds a bool (JSON's true/false, which
    Python counts as the integers 1 and 0)."""
    if depth <= 1:
        return any(v.__class__ is bool for v in values)
    return any(_holds_bool(v, depth - 1) for v in values)


def _b64decode(text: str, what: str) -> bytes:
    # strict_mode (Python 3.11) refuses what b64decode(validate=True) refuses, without its regex pass.
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError) as e:
        raise DecodeError(Reason.BAD_SCHEMA.value, f"{what} is not base64: {e}") from None


@dataclass(frozen=True, slots=True)
class ImageInput:
    """Encoded image bytes (PNG or JPEG); the serving side decodes them with size limits."""

    data: bytes
    format: str = "png"


ModelInput = np.ndarray | ImageInput


def encode_input(value: ModelInput) -> dict[str, Any]:
    if isinstance(value, ImageInput):
        return {"image": {"format": value.format, "b64": base64.b64encode(value.data).decode("ascii")}}
    return {"tensor": encode_tensor(value)}


def decode_input(obj: Any, bools_possible: bool = True) -> ModelInput:
    """``bools_possible``: see :func:`decode_tensor` (:func:`may_hold_bools` of the record)."""
    if not isinstance(obj, dict) or len(obj) != 1:
        raise DecodeError(Reason.BAD_SCHEMA.value, "input must be {'tensor': ...} or {'image': ...}")
    if "tensor" in obj:
        return decode_tensor(obj["tensor"], bools_possible)
    image = obj.get("image")
    if not isinstance(image, dict) or not isinstance(image.get("b64"), str):
        raise DecodeError(Reason.BAD_SCHEMA.value, "input.image needs a 'b64' string")
    fmt = image.get("format", "png")
    if not isinstance(fmt, str) or fmt not in ("png", "jpeg"):
        raise DecodeError(Reason.BAD_SCHEMA.value, f"image format {fmt!r} not in ('png', 'jpeg')")
    return ImageInput(_b64decode(image["b64"], "image b64"), fmt)


