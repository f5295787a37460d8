"""Wire contracts, version 1: what travels on each topic (docs/wire-format.md,
machine-readable schema in ``auditstream/schemas/wire-v1.json``).

Every record is one UTF-8 JSON object with ``"v": 1``, keyed by its request id. JSON keeps any
Kafka client able to produce a valid request; tensors travel as base64 of their little-endian
bytes (or as a plain ``values`` list for clients that prefer it), so encoding stays cheap.

Outputs are a pure function of (request, model version): a redelivered request produces
byte-identical records. Timings therefore travel in Kafka headers, not in the value
(see :data:`LATENCY_HEADERS`).

Decoding never raises anything but :class:`~auditstream.errors.DecodeError`, whose ``code`` is the
dead-letter reason code, and never allocates much more than a small multiple of the record: a
record is refused before parsing when it exceeds ``max_bytes`` (default :data:`MAX_RECORD_BYTES`)
or opens more than :data:`MAX_JSON_CONTAINERS` arrays/objects, and a tensor's claimed shape is
checked against :data:`MAX_TENSOR_ELEMENTS` before any buffer is made. ``NaN``/``Infinity``
tokens and non-finite numbers are refused (strict JSON; a NaN confidence would slip past triage).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from importlib import resources
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from auditstream.errors import DecodeError

WIRE_VERSION = 1
CONTENT_TYPE_HEADER = "content-type"
REQUEST_CONTENT_TYPE = b"application/vnd.auditstream.request.v1+json"
LATENCY_HEADERS = ("queue-s", "inference-s", "end-to-end-s")

ALLOWED_DTYPES = ("float32", "float64", "uint8", "int32", "int64")
MAX_TENSOR_ELEMENTS = 16_777_216  # 64 MiB of float32: a guard against hostile shapes
MAX_RANK = 8
# Hard cap on one record, whatever a consumer's own limit: stdlib json needs up to ~12x a record
# of float lists in memory, so 8 MiB keeps a hostile record near 100 MB (a 64 MiB tensor would
# not fit anyway: the broker's default message.max.bytes is 1 MiB).
MAX_RECORD_BYTES = 8 * 1024 * 1024
# Each JSON array/object costs ~60 bytes parsed; 8 MiB of "[]," would need ~200 MB and a second.
# A nested 224x224x3 ``values`` tensor opens ~50k, so 100k still admits every real record. Below
# 1 MiB the worst case is ~22 MB, so small records (all of the hot path) skip the count.
MAX_JSON_CONTAINERS = 100_000
_CONTAINER_SCAN_BYTES = 1 << 20
# A dead letter carries the original record as base64 (4/3 of it) plus where it came from.
MAX_DEAD_LETTER_BYTES = MAX_RECORD_BYTES * 4 // 3 + 65_536
MAX_ID_CHARS = 256


class Reason(str, Enum):
    """Dead-letter reason codes."""

    UNDECODABLE = "undecodable"  # not UTF-8 JSON
    BAD_SCHEMA = "bad_schema"  # JSON, but fields missing or of the wrong type
    UNSUPPORTED_VERSION = "unsupported_version"
    WRONG_SHAPE = "wrong_shape"  # tensor does not fit the model's input
    TOO_LARGE = "too_large"
    WRONG_MODEL = "wrong_model"  # names a model this consumer does not serve
    BAD_INPUT = "bad_input"  # e.g. an image that does not decode
    INFERENCE_FAILED = "inference_failed"


class Route(str, Enum):
    """Where a prediction goes after triage."""

    AUTO = "AUTO"  # published as a decision
    HUMAN = "HUMAN"  # deferred: to the audit topic, not decided
    AUTO_QC = "AUTO_QC"  # decided and also sampled for a QC audit


DECISION_SOURCES = ("model", "human", "fallback")


class VerdictKind(str, Enum):
    ACCEPT = "accept"
    CORRECT = "correct"
    REJECT = "reject"
    SKIP = "skip"


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


def decode_tensor(obj: Any) -> np.ndarray:
    """Inverse of :func:`encode_tensor`; also accepts ``{"dtype", "shape", "values"}``."""
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
        array = _values_array(obj.get("values"), np.dtype(dtype), shape, count)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise DecodeError(Reason.BAD_INPUT.value, "tensor holds NaN or infinity")
    return array


def _values_array(values: Any, dtype: np.dtype, shape: list[int], count: int) -> np.ndarray:
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
    if array.size != count:
        raise DecodeError(Reason.WRONG_SHAPE.value, f"{array.size} values do not fill shape {shape}")
    if dtype.kind in "iu" and array.size:
        if array.dtype.kind == "f" and not (np.isfinite(array).all() and (array == np.round(array)).all()):
            raise DecodeError(Reason.BAD_SCHEMA.value, f"{dtype} tensor values must be integers")
        info = np.iinfo(dtype)
        if array.min() < info.min or array.max() > info.max:
            raise DecodeError(Reason.BAD_SCHEMA.value, f"values outside [{info.min}, {info.max}] for {dtype}")
    return array.astype(dtype, copy=False).reshape(shape)


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


def decode_input(obj: Any) -> ModelInput:
    if not isinstance(obj, dict) or len(obj) != 1:
        raise DecodeError(Reason.BAD_SCHEMA.value, "input must be {'tensor': ...} or {'image': ...}")
    if "tensor" in obj:
        return decode_tensor(obj["tensor"])
    image = obj.get("image")
    if not isinstance(image, dict) or not isinstance(image.get("b64"), str):
        raise DecodeError(Reason.BAD_SCHEMA.value, "input.image needs a 'b64' string")
    fmt = image.get("format", "png")
    if not isinstance(fmt, str) or fmt not in ("png", "jpeg"):
        raise DecodeError(Reason.BAD_SCHEMA.value, f"image format {fmt!r} not in ('png', 'jpeg')")
    return ImageInput(_b64decode(image["b64"], "image b64"), fmt)


# --------------------------------------------------------------------------------------------
# JSON helpers


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _refuse_constant(token: str) -> Any:
    raise ValueError(f"{token} is not JSON")


def _loads(data: bytes, max_bytes: int = MAX_RECORD_BYTES) -> dict[str, Any]:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError(Reason.UNDECODABLE.value, f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > max_bytes:
        raise DecodeError(Reason.TOO_LARGE.value, f"record of {len(data)} bytes exceeds {max_bytes}")
    if len(data) > _CONTAINER_SCAN_BYTES:
        # bytes.count runs at memory speed; brackets inside strings only make this more cautious.
        containers = data.count(b"[") + data.count(b"{")
        if containers > MAX_JSON_CONTAINERS:
            raise DecodeError(Reason.TOO_LARGE.value, f"record opens {containers} JSON arrays/objects, over {MAX_JSON_CONTAINERS}")
    try:
        obj = json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # ValueError: also ints over 4300 digits
        raise DecodeError(Reason.UNDECODABLE.value, f"not UTF-8 JSON: {str(e)[:200]}") from None
    if not isinstance(obj, dict):
        raise DecodeError(Reason.BAD_SCHEMA.value, "record must be a JSON object")
    version = obj.get("v")
    if type(version) is not int or version != WIRE_VERSION:  # 1.0 and true are not version 1
        raise DecodeError(Reason.UNSUPPORTED_VERSION.value, f"wire version {_short(version)}, this build reads {WIRE_VERSION}")
    return obj


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _field(obj: dict[str, Any], name: str, kind: type | tuple[type, ...], optional: bool = False) -> Any:
    value = obj.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise DecodeError(Reason.BAD_SCHEMA.value, f"field {name!r} must be {getattr(kind, '__name__', kind)}")
    return value


def _number(obj: dict[str, Any], name: str, low: float = -math.inf, high: float = math.inf, default: float | None = None) -> float:
    """A finite JSON number in [low, high] (JSON may spell 1e400, which parses to infinity)."""
    if default is not None and obj.get(name) is None:
        return default
    value = float(_field(obj, name, (int, float)))
    if not (math.isfinite(value) and low <= value <= high):
        raise DecodeError(Reason.BAD_SCHEMA.value, f"field {name!r} = {value} must be finite and in [{low}, {high}]")
    return value


def _id(obj: dict[str, Any], name: str) -> str:
    value = _field(obj, name, str)
    if not 1 <= len(value) <= MAX_ID_CHARS:
        raise DecodeError(Reason.BAD_SCHEMA.value, f"field {name!r} must be 1..{MAX_ID_CHARS} characters, got {len(value)}")
    return value


def _step(obj: dict[str, Any]) -> int | None:
    step = _field(obj, "step", int, optional=True)
    if step is not None and step < 0:
        raise DecodeError(Reason.BAD_SCHEMA.value, f"field 'step' = {step} must be >= 0")
    return step


def _enum(kind: type[Enum], value: Any, name: str) -> Any:
    if not isinstance(value, str):
        raise DecodeError(Reason.BAD_SCHEMA.value, f"field {name!r} must be one of {[m.value for m in kind]}")
    try:
        return kind(value)
    except ValueError:
        raise DecodeError(Reason.BAD_SCHEMA.value, f"field {name!r} = {_short(value)} not one of {[m.value for m in kind]}") from None


def schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of every v1 record, ``$defs`` by record name."""
    return json.loads(resources.files("auditstream").joinpath("schemas/wire-v1.json").read_text("utf-8"))


# --------------------------------------------------------------------------------------------
# records


@dataclass(frozen=True, slots=True)
class InferenceRequest:
    """One request to a model: ``requests.<model>`` topic, key = request id (or episode key)."""

    request_id: str
    model: str
    input: ModelInput
    created_at_s: float
    episode_key: str | None = None
    step: int | None = None
    # RL: the episode ended; ``input`` is its final observation and no decision is wanted. The
    # consumer drops the episode's state (a tombstone on the episode-state topic).
    episode_end: bool = False

    def to_bytes(self) -> bytes:
        obj: dict[str, Any] = {
            "v": WIRE_VERSION,
            "request_id": self.request_id,
            "model": self.model,
            "created_at_s": self.created_at_s,
            "input": encode_input(self.input),
        }
        if self.episode_key is not None:
            obj["episode_key"] = self.episode_key
            obj["step"] = self.step
        if self.episode_end:  # written only when set: older records stay byte-identical
            obj["episode_end"] = True
        return _dumps(obj)

    @property
    def key(self) -> bytes:
        """Partitioning key: the episode keeps one consumer, otherwise spread by request id."""
        return (self.episode_key or self.request_id).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes, max_bytes: int = MAX_RECORD_BYTES) -> "InferenceRequest":
        obj = _loads(data, max_bytes)
        episode_key = _field(obj, "episode_key", str, optional=True)
        if episode_key is not None and not 1 <= len(episode_key) <= MAX_ID_CHARS:
            raise DecodeError(Reason.BAD_SCHEMA.value, f"field 'episode_key' must be 1..{MAX_ID_CHARS} characters")
        return cls(
            request_id=_id(obj, "request_id"),
            model=_id(obj, "model"),
            input=decode_input(obj.get("input")),
            created_at_s=_number(obj, "created_at_s"),
            episode_key=episode_key,
            step=_step(obj),
            episode_end=bool(_field(obj, "episode_end", bool, optional=True)),
        )


@dataclass(frozen=True, slots=True)
class Prediction:
    """A model's answer after triage: ``predictions`` topic, key = request id.

    ``output`` is JSON (a class index, a ZIP string, an action...); ``details`` holds partial
    outputs (per-character confidences, probabilities, runner-ups). ``latency`` (seconds, by
    :data:`LATENCY_HEADERS`) travels in headers so the value is identical on redelivery.
    ``shadow`` marks a candidate's answer in shadow mode: logged for comparison, never acted on.
    """

    request_id: str
    model: str
    model_version: str
    task: str
    output: Any
    confidence: float
    route: Route
    reason: str
    qc_inclusion_prob: float
    created_at_s: float
    details: dict[str, Any] = field(default_factory=dict)
    episode_key: str | None = None
    step: int | None = None
    latency: dict[str, float] = field(default_factory=dict)
    shadow: bool = False

    def to_dict(self) -> dict[str, Any]:
        obj = {
            "v": WIRE_VERSION,
            "request_id": self.request_id,
            "model": self.model,
            "model_version": self.model_version,
            "task": self.task,
            "output": self.output,
            "confidence": self.confidence,
            "route": self.route.value,
            "reason": self.reason,
            "qc_inclusion_prob": self.qc_inclusion_prob,
            "created_at_s": self.created_at_s,
            "details": self.details,
            "episode_key": self.episode_key,
            "step": self.step,
        }
        if self.shadow:  # written only when set: live predictions stay byte-identical
            obj["shadow"] = True
        return obj

    def to_bytes(self) -> bytes:
        return _dumps(self.to_dict())

    def latency_headers(self) -> list[tuple[str, bytes]]:
        return [(name, repr(self.latency[name]).encode()) for name in LATENCY_HEADERS if name in self.latency]

    @classmethod
    def from_dict(cls, obj: dict[str, Any], headers: list[tuple[str, bytes]] | None = None) -> "Prediction":
        return cls(
            request_id=_id(obj, "request_id"),
            model=_id(obj, "model"),
            model_version=_field(obj, "model_version", str),
            task=_field(obj, "task", str),
            output=obj.get("output"),
            confidence=_number(obj, "confidence"),
            route=_enum(Route, obj.get("route"), "route"),
            reason=_field(obj, "reason", str),
            qc_inclusion_prob=_number(obj, "qc_inclusion_prob", 0.0, 1.0),
            created_at_s=_number(obj, "created_at_s"),
            details=_field(obj, "details", dict, optional=True) or {},
            episode_key=_field(obj, "episode_key", str, optional=True),
            step=_step(obj),
            latency=parse_latency_headers(headers),
            shadow=bool(_field(obj, "shadow", bool, optional=True)),
        )

    @classmethod
    def from_bytes(
        cls, data: bytes, headers: list[tuple[str, bytes]] | None = None, max_bytes: int = MAX_RECORD_BYTES
    ) -> "Prediction":
        return cls.from_dict(_loads(data, max_bytes), headers)


def parse_latency_headers(headers: Any) -> dict[str, float]:
    """Seconds by :data:`LATENCY_HEADERS` name from Kafka headers; unknown, unreadable or
    non-finite values are skipped (timings are advisory and must never fail a record)."""
    latency: dict[str, float] = {}
    for item in headers or ():
        try:
            name, value = item
            seconds = float(bytes(value).decode("ascii")) if name in LATENCY_HEADERS else math.nan
        except (TypeError, ValueError):
            continue
        if math.isfinite(seconds):
            latency[name] = seconds
    return latency


@dataclass(frozen=True, slots=True)
class AuditItem:
    """A prediction that a human must see: ``audit`` topic, key = request id.

    ``route`` is HUMAN (deferred, not decided) or AUTO_QC (decided, sampled for QC with
    probability ``prediction.qc_inclusion_prob``). The input travels along so the auditor sees it.
    """

    prediction: Prediction
    input: ModelInput

    def to_bytes(self) -> bytes:
        obj = self.prediction.to_dict()
        obj["input"] = encode_input(self.input)
        return _dumps(obj)

    @classmethod
    def from_bytes(cls, data: bytes, max_bytes: int = MAX_RECORD_BYTES) -> "AuditItem":
        obj = _loads(data, max_bytes)
        return cls(prediction=Prediction.from_dict(obj), input=decode_input(obj.get("input")))


@dataclass(frozen=True, slots=True)
class Verdict:
    """A human's verdict on an audit item: ``verdicts`` topic, key = request id.

    ``verdict_id`` is made when the form is shown, so a double submit is one verdict.
    ``inclusion_prob`` is the item's QC inclusion probability (1.0 for deferred items), kept so
    error estimates from audits stay unbiased under risk-weighted sampling.
    """

    verdict_id: str
    request_id: str
    model: str
    model_version: str
    auditor: str
    kind: VerdictKind
    decided_at_s: float
    model_output: Any = None
    corrected_output: Any = None
    item_route: Route = Route.HUMAN
    inclusion_prob: float = 1.0
    is_gold: bool = False

    def to_bytes(self) -> bytes:
        return _dumps(
            {
                "v": WIRE_VERSION,
                "verdict_id": self.verdict_id,
                "request_id": self.request_id,
                "model": self.model,
                "model_version": self.model_version,
                "auditor": self.auditor,
                "kind": self.kind.value,
                "decided_at_s": self.decided_at_s,
                "model_output": self.model_output,
                "corrected_output": self.corrected_output,
                "item_route": self.item_route.value,
                "inclusion_prob": self.inclusion_prob,
                "is_gold": self.is_gold,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes, max_bytes: int = MAX_RECORD_BYTES) -> "Verdict":
        obj = _loads(data, max_bytes)
        inclusion_prob = _number(obj, "inclusion_prob", 0.0, 1.0, default=1.0)
        if inclusion_prob == 0.0:  # estimates weight each audit by 1 / inclusion_prob
            raise DecodeError(Reason.BAD_SCHEMA.value, "field 'inclusion_prob' must be > 0")
        return cls(
            verdict_id=_id(obj, "verdict_id"),
            request_id=_id(obj, "request_id"),
            model=_id(obj, "model"),
            model_version=_field(obj, "model_version", str),
            auditor=_field(obj, "auditor", str),
            kind=_enum(VerdictKind, obj.get("kind"), "kind"),
            decided_at_s=_number(obj, "decided_at_s"),
            model_output=obj.get("model_output"),
            corrected_output=obj.get("corrected_output"),
            item_route=_enum(Route, obj.get("item_route", Route.HUMAN.value), "item_route"),
            inclusion_prob=inclusion_prob,
            is_gold=bool(_field(obj, "is_gold", bool, optional=True)),
        )


@dataclass(frozen=True, slots=True)
class Decision:
    """An answer that acts: ``decisions`` topic, key = request id (or episode key).

    ``source`` is ``model`` (AUTO/AUTO_QC at once), ``human`` (a deferred item, once decided) or
    ``fallback`` (a deferred real-time decision that timed out to the safe action).
    """

    request_id: str
    model: str
    model_version: str
    output: Any
    source: str
    created_at_s: float
    episode_key: str | None = None
    step: int | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        return _dumps(
            {
                "v": WIRE_VERSION,
                "request_id": self.request_id,
                "model": self.model,
                "model_version": self.model_version,
                "output": self.output,
                "source": self.source,
                "created_at_s": self.created_at_s,
                "episode_key": self.episode_key,
                "step": self.step,
                "details": self.details,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes, max_bytes: int = MAX_RECORD_BYTES) -> "Decision":
        obj = _loads(data, max_bytes)
        source = _field(obj, "source", str)
        if source not in DECISION_SOURCES:
            raise DecodeError(Reason.BAD_SCHEMA.value, f"decision source {_short(source)} not one of {DECISION_SOURCES}")
        return cls(
            request_id=_id(obj, "request_id"),
            model=_id(obj, "model"),
            model_version=_field(obj, "model_version", str),
            output=obj.get("output"),
            source=source,
            created_at_s=_number(obj, "created_at_s"),
            episode_key=_field(obj, "episode_key", str, optional=True),
            step=_step(obj),
            details=_field(obj, "details", dict, optional=True) or {},
        )


def _action_index(obj: dict[str, Any], name: str, optional: bool = False) -> int | None:
    value = _field(obj, name, int, optional=optional)
    if value is not None and value < 0:
        raise DecodeError(Reason.BAD_SCHEMA.value, f"field {name!r} = {value} must be an action index >= 0")
    return value


def _episode(obj: dict[str, Any]) -> tuple[str, int]:
    step = _step(obj)
    if step is None:
        raise DecodeError(Reason.BAD_SCHEMA.value, "field 'step' must be int")
    return _id(obj, "episode_key"), step


@dataclass(frozen=True, slots=True)
class Action:
    """RL: what the environment driver applies for one request: ``actions`` topic, key = episode key.

    ``action`` is the policy's action (AUTO, AUTO_QC), or ``None`` when the decision was deferred
    to a human (route HUMAN): the driver then waits for a human decision or, at its timeout,
    applies the card's ``safe_action`` (written ``"deferred": true`` on the wire).
    """

    request_id: str
    model: str
    model_version: str
    episode_key: str
    step: int
    action: int | None
    route: Route
    created_at_s: float
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def deferred(self) -> bool:
        return self.action is None

    @property
    def key(self) -> bytes:
        return self.episode_key.encode("utf-8")

    def to_bytes(self) -> bytes:
        return _dumps(
            {
                "v": WIRE_VERSION,
                "request_id": self.request_id,
                "model": self.model,
                "model_version": self.model_version,
                "episode_key": self.episode_key,
                "step": self.step,
                "action": self.action,
                "deferred": self.action is None,
                "route": self.route.value,
                "created_at_s": self.created_at_s,
                "details": self.details,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes, max_bytes: int = MAX_RECORD_BYTES) -> "Action":
        obj = _loads(data, max_bytes)
        episode_key, step = _episode(obj)
        action = _action_index(obj, "action", optional=True)
        if _field(obj, "deferred", bool) != (action is None):
            raise DecodeError(Reason.BAD_SCHEMA.value, f"'deferred' must be true exactly when 'action' is null (action {action})")
        return cls(
            request_id=_id(obj, "request_id"),
            model=_id(obj, "model"),
            model_version=_field(obj, "model_version", str),
            episode_key=episode_key,
            step=step,
            action=action,
            route=_enum(Route, obj.get("route"), "route"),
            created_at_s=_number(obj, "created_at_s"),
            details=_field(obj, "details", dict, optional=True) or {},
        )


@dataclass(frozen=True, slots=True)
class Transition:
    """RL: what the environment did after one action: ``transitions`` topic, key = episode key.

    ``observation`` is the one the decision was made on, ``action`` the action applied and
    ``source`` who chose it (``model``, ``human``, ``fallback``: see :class:`Decision`);
    ``reward``, ``terminated`` and ``truncated`` are Gymnasium's answer to it. Offline datasets
    join transitions with decisions (propensities) and verdicts (human labels) by request id.
    """

    request_id: str
    model: str
    model_version: str
    episode_key: str
    step: int
    observation: np.ndarray
    action: int
    source: str
    reward: float
    terminated: bool
    truncated: bool
    created_at_s: float

    @property
    def key(self) -> bytes:
        return self.episode_key.encode("utf-8")

    def to_bytes(self) -> bytes:
        return _dumps(
            {
                "v": WIRE_VERSION,
                "request_id": self.request_id,
                "model": self.model,
                "model_version": self.model_version,
                "episode_key": self.episode_key,
                "step": self.step,
                "observation": encode_tensor(self.observation),
                "action": self.action,
                "source": self.source,
                "reward": self.reward,
                "terminated": self.terminated,
                "truncated": self.truncated,
                "created_at_s": self.created_at_s,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes, max_bytes: int = MAX_RECORD_BYTES) -> "Transition":
        obj = _loads(data, max_bytes)
        episode_key, step = _episode(obj)
        source = _field(obj, "source", str)
        if source not in DECISION_SOURCES:
            raise DecodeError(Reason.BAD_SCHEMA.value, f"transition source {_short(source)} not one of {DECISION_SOURCES}")
        return cls(
            request_id=_id(obj, "request_id"),
            model=_id(obj, "model"),
            model_version=_field(obj, "model_version", str),
            episode_key=episode_key,
            step=step,
            observation=decode_tensor(obj.get("observation")),
            action=_action_index(obj, "action"),  # type: ignore[arg-type]
            source=source,
            reward=_number(obj, "reward"),
            terminated=_field(obj, "terminated", bool),
            truncated=_field(obj, "truncated", bool),
            created_at_s=_number(obj, "created_at_s"),
        )


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that could not be processed: ``dead-letter`` topic, key = the original key.

    The original value and headers are kept byte for byte, with where they came from, so the
    record can be replayed to its source topic once the cause is fixed.
    """

    reason: str
    detail: str
    source_topic: str
    source_partition: int
    source_offset: int
    value: bytes | None
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()
    failed_at_s: float = 0.0

    def to_bytes(self) -> bytes:
        def b64(b: bytes | None) -> str | None:
            return None if b is None else base64.b64encode(b).decode("ascii")

        return _dumps(
            {
                "v": WIRE_VERSION,
                "reason": self.reason,
                "detail": self.detail[:2000],
                "source": {"topic": self.source_topic, "partition": self.source_partition, "offset": self.source_offset},
                "key_b64": b64(self.key),
                "value_b64": b64(self.value),
                "headers": [[k, b64(v)] for k, v in self.headers],
                "failed_at_s": self.failed_at_s,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes, max_bytes: int = MAX_DEAD_LETTER_BYTES) -> "DeadLetter":
        obj = _loads(data, max_bytes)
        source = _field(obj, "source", dict)
        partition, offset = _field(source, "partition", int), _field(source, "offset", int)
        if partition < 0 or offset < 0:
            raise DecodeError(Reason.BAD_SCHEMA.value, f"source partition {partition} and offset {offset} must be >= 0")

        def unb64(name: str, value: Any) -> bytes | None:
            if value is None:
                return None
            if not isinstance(value, str):
                raise DecodeError(Reason.BAD_SCHEMA.value, f"{name} must be a base64 string or null")
            return _b64decode(value, name)

        headers = _field(obj, "headers", list, optional=True) or []
        if not all(isinstance(h, list) and len(h) == 2 and isinstance(h[0], str) for h in headers):
            raise DecodeError(Reason.BAD_SCHEMA.value, "headers must be a list of [name, base64 value or null] pairs")
        return cls(
            reason=_field(obj, "reason", str),
            detail=_field(obj, "detail", str),
            source_topic=_field(source, "topic", str),
            source_partition=partition,
            source_offset=offset,
            key=unb64("key_b64", obj.get("key_b64")),
            value=unb64("value_b64", obj.get("value_b64")),
            headers=tuple((k, unb64("header value", v) or b"") for k, v in headers),
            failed_at_s=_number(obj, "failed_at_s", default=0.0),
        )
