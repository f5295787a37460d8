"""Wire contracts, version 1: what travels on each topic (docs/wire-format.md,
machine-readable schema in ``auditstream/schemas/wire-v1.json``).

Every record is one UTF-8 JSON object with ``"v": 1``, keyed by its request id. JSON keeps any
Kafka client able to produce a valid request; tensors travel as base64 of their little-endian
bytes (or as a plain ``values`` list for clients that prefer it), so encoding stays cheap.

Outputs are a pure function of (request, model version): a redelivered request produces
byte-identical records. Timings therefore travel in Kafka headers, not in the value
(see :data:`LATENCY_HEADERS`).

Decoding never raises anything but :class:`~auditstream.errors.DecodeError`, whose ``code`` is the
dead-letter reason code.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
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
    count = math.prod(shape)
    if count > MAX_TENSOR_ELEMENTS:
        raise DecodeError(Reason.TOO_LARGE.value, f"tensor of {count} elements exceeds {MAX_TENSOR_ELEMENTS}")
    np_dtype = np.dtype(dtype).newbyteorder("<")
    if "b64" in obj:
        b64 = obj["b64"]
        if not isinstance(b64, str):
            raise DecodeError(Reason.BAD_SCHEMA.value, "tensor b64 must be a string")
        try:
            raw = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError) as e:
            raise DecodeError(Reason.BAD_SCHEMA.value, f"tensor b64 is not base64: {e}") from None
        if len(raw) != count * np_dtype.itemsize:
            raise DecodeError(Reason.WRONG_SHAPE.value, f"{len(raw)} bytes do not fill shape {shape} of {dtype}")
        return np.frombuffer(raw, dtype=np_dtype).reshape(shape).astype(np_dtype.newbyteorder("="), copy=False)
    values = obj.get("values")
    if not isinstance(values, list):
        raise DecodeError(Reason.BAD_SCHEMA.value, "tensor needs 'b64' or 'values'")
    try:
        array = np.asarray(values, dtype=np.dtype(dtype))
    except (ValueError, TypeError, OverflowError) as e:
        raise DecodeError(Reason.BAD_SCHEMA.value, f"tensor values are not numeric: {e}") from None
    if array.size != count:
        raise DecodeError(Reason.WRONG_SHAPE.value, f"{array.size} values do not fill shape {shape}")
    return array.reshape(shape)


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
    if fmt not in ("png", "jpeg"):
        raise DecodeError(Reason.BAD_SCHEMA.value, f"image format {fmt!r} not in ('png', 'jpeg')")
    try:
        return ImageInput(base64.b64decode(image["b64"], validate=True), fmt)
    except (binascii.Error, ValueError) as e:
        raise DecodeError(Reason.BAD_SCHEMA.value, f"image b64 is not base64: {e}") from None


# --------------------------------------------------------------------------------------------
# JSON helpers


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _loads(data: bytes) -> dict[str, Any]:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError(Reason.UNDECODABLE.value, f"expected bytes, got {type(data).__name__}")
    try:
        obj = json.loads(bytes(data).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise DecodeError(Reason.UNDECODABLE.value, f"not UTF-8 JSON: {str(e)[:200]}") from None
    if not isinstance(obj, dict):
        raise DecodeError(Reason.BAD_SCHEMA.value, "record must be a JSON object")
    version = obj.get("v")
    if version != WIRE_VERSION:
        raise DecodeError(Reason.UNSUPPORTED_VERSION.value, f"wire version {version!r}, this build reads {WIRE_VERSION}")
    return obj


def _field(obj: dict[str, Any], name: str, kind: type | tuple[type, ...], optional: bool = False) -> Any:
    value = obj.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise DecodeError(Reason.BAD_SCHEMA.value, f"field {name!r} must be {getattr(kind, '__name__', kind)}")
    return value


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
        return _dumps(obj)

    @property
    def key(self) -> bytes:
        """Partitioning key: the episode keeps one consumer, otherwise spread by request id."""
        return (self.episode_key or self.request_id).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> "InferenceRequest":
        obj = _loads(data)
        request_id = _field(obj, "request_id", str)
        if not request_id or len(request_id) > 256:
            raise DecodeError(Reason.BAD_SCHEMA.value, "request_id must be 1..256 characters")
        created = _field(obj, "created_at_s", (int, float))
        if not math.isfinite(created):
            raise DecodeError(Reason.BAD_SCHEMA.value, "created_at_s must be finite")
        return cls(
            request_id=request_id,
            model=_field(obj, "model", str),
            input=decode_input(obj.get("input")),
            created_at_s=float(created),
            episode_key=_field(obj, "episode_key", str, optional=True),
            step=_field(obj, "step", int, optional=True),
        )


@dataclass(frozen=True, slots=True)
class Prediction:
    """A model's answer after triage: ``predictions`` topic, key = request id.

    ``output`` is JSON (a class index, a ZIP string, an action...); ``details`` holds partial
    outputs (per-character confidences, probabilities, runner-ups). ``latency`` (seconds, by
    :data:`LATENCY_HEADERS`) travels in headers so the value is identical on redelivery.
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

    def to_dict(self) -> dict[str, Any]:
        return {
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

    def to_bytes(self) -> bytes:
        return _dumps(self.to_dict())

    def latency_headers(self) -> list[tuple[str, bytes]]:
        return [(name, repr(self.latency[name]).encode()) for name in LATENCY_HEADERS if name in self.latency]

    @classmethod
    def from_dict(cls, obj: dict[str, Any], headers: list[tuple[str, bytes]] | None = None) -> "Prediction":
        try:
            route = Route(obj.get("route"))
        except ValueError:
            raise DecodeError(Reason.BAD_SCHEMA.value, f"unknown route {obj.get('route')!r}") from None
        latency = {k: float(v) for k, v in (headers or []) if k in LATENCY_HEADERS}
        return cls(
            request_id=_field(obj, "request_id", str),
            model=_field(obj, "model", str),
            model_version=_field(obj, "model_version", str),
            task=_field(obj, "task", str),
            output=obj.get("output"),
            confidence=float(_field(obj, "confidence", (int, float))),
            route=route,
            reason=_field(obj, "reason", str),
            qc_inclusion_prob=float(_field(obj, "qc_inclusion_prob", (int, float))),
            created_at_s=float(_field(obj, "created_at_s", (int, float))),
            details=_field(obj, "details", dict, optional=True) or {},
            episode_key=_field(obj, "episode_key", str, optional=True),
            step=_field(obj, "step", int, optional=True),
            latency=latency,
        )

    @classmethod
    def from_bytes(cls, data: bytes, headers: list[tuple[str, bytes]] | None = None) -> "Prediction":
        return cls.from_dict(_loads(data), headers)


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
    def from_bytes(cls, data: bytes) -> "AuditItem":
        obj = _loads(data)
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
    def from_bytes(cls, data: bytes) -> "Verdict":
        obj = _loads(data)
        try:
            kind, route = VerdictKind(obj.get("kind")), Route(obj.get("item_route", "HUMAN"))
        except ValueError as e:
            raise DecodeError(Reason.BAD_SCHEMA.value, str(e)) from None
        return cls(
            verdict_id=_field(obj, "verdict_id", str),
            request_id=_field(obj, "request_id", str),
            model=_field(obj, "model", str),
            model_version=_field(obj, "model_version", str),
            auditor=_field(obj, "auditor", str),
            kind=kind,
            decided_at_s=float(_field(obj, "decided_at_s", (int, float))),
            model_output=obj.get("model_output"),
            corrected_output=obj.get("corrected_output"),
            item_route=route,
            inclusion_prob=float(obj.get("inclusion_prob", 1.0)),
            is_gold=bool(obj.get("is_gold", False)),
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
    def from_bytes(cls, data: bytes) -> "Decision":
        obj = _loads(data)
        source = _field(obj, "source", str)
        if source not in ("model", "human", "fallback"):
            raise DecodeError(Reason.BAD_SCHEMA.value, f"unknown decision source {source!r}")
        return cls(
            request_id=_field(obj, "request_id", str),
            model=_field(obj, "model", str),
            model_version=_field(obj, "model_version", str),
            output=obj.get("output"),
            source=source,
            created_at_s=float(_field(obj, "created_at_s", (int, float))),
            episode_key=_field(obj, "episode_key", str, optional=True),
            step=_field(obj, "step", int, optional=True),
            details=_field(obj, "details", dict, optional=True) or {},
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
    def from_bytes(cls, data: bytes) -> "DeadLetter":
        obj = _loads(data)
        source = _field(obj, "source", dict)

        def unb64(s: str | None) -> bytes | None:
            return None if s is None else base64.b64decode(s)

        return cls(
            reason=_field(obj, "reason", str),
            detail=_field(obj, "detail", str),
            source_topic=_field(source, "topic", str),
            source_partition=_field(source, "partition", int),
            source_offset=_field(source, "offset", int),
            key=unb64(obj.get("key_b64")),
            value=unb64(obj.get("value_b64")),
            headers=tuple((k, unb64(v) or b"") for k, v in obj.get("headers", [])),
            failed_at_s=float(obj.get("failed_at_s", 0.0)),
        )
