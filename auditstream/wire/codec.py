"""Wire v1 basics: version, limits, enums (reason codes, routes, verdict kinds, task kinds) and the strict
JSON helpers every record decoder uses (refuse oversize, NaN, wrong types, unknown versions)."""

from __future__ import annotations

import json
import math
import re
from enum import Enum, StrEnum
from importlib import resources
from typing import Any


from auditstream.errors import DecodeError, UnknownTaskKind
from auditstream.text import is_utf8, json_strings

WIRE_VERSION = 1
CONTENT_TYPE_HEADER = "content-type"
REQUEST_CONTENT_TYPE = b"application/vnd.auditstream.request.v1+json"
LATENCY_HEADERS = ("queue-s", "inference-s", "end-to-end-s")
# Set by ``auditstream dlq replay`` on every record it sends back: the dead letter it replays, as
# ``<dead-letter topic>[partition]@offset`` (its ledger key). A policy consumer refuses a replayed
# step its episode has moved past and no longer holds (serving.episodes), where a driver's own
# lower step restarts the episode.
REPLAY_OF_HEADER = "auditstream-replay-of"

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
MAX_DETAIL_CHARS = 2000  # a dead letter's detail, cut by its writer


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
    PROCESSING_FAILED = "processing_failed"  # a step after inference (triage, encoding, episode state) failed on it
    DUPLICATE_REQUEST_ID = "duplicate_request_id"  # another request already used this id (the audit store keeps the first)


class Route(str, Enum):
    """Where a prediction goes after triage."""

    AUTO = "AUTO"  # published as a decision
    HUMAN = "HUMAN"  # deferred: to the audit topic, not decided
    AUTO_QC = "AUTO_QC"  # decided and also sampled for a QC audit


DECISION_SOURCES = ("model", "human", "fallback")


class TaskKind(StrEnum):
    """What a model does. It decides how the graph's outputs become an answer, which parts of the
    answer can be accepted on their own, when two answers are the same and how an auditor sees and
    edits it: one module per kind per layer (``auditstream.tasks``, ``dashboards.tasks``) knows
    that, and everything else looks the kind up."""

    CLASSIFICATION = "classification"  # one label per input (a digit)
    SEQUENCE = "sequence"  # a fixed-length string read from an input (a ZIP code)
    DETECTION = "detection"  # boxes with labels (digits on a parcel label)
    CAPTION = "caption"  # a sentence describing a scene
    POLICY = "policy"  # an action in an environment, step by step

    @classmethod
    def parse(cls, value: object) -> "TaskKind":
        """``value`` as a kind; anything else raises :class:`~auditstream.errors.UnknownTaskKind`."""
        if isinstance(value, cls):
            return value
        try:
            return cls(value)
        except ValueError:
            raise UnknownTaskKind(value, [k.value for k in cls]) from None


class VerdictKind(str, Enum):
    ACCEPT = "accept"
    CORRECT = "correct"
    REJECT = "reject"
    SKIP = "skip"


# --------------------------------------------------------------------------------------------
# JSON helpers


def _dumps(obj: dict[str, Any]) -> bytes:
    return _ENCODER.encode(obj).encode("utf-8")


def _refuse_constant(token: str) -> Any:
    raise ValueError(f"{token} is not JSON")


INT_LIMIT = 2**63  # no field of the wire needs more; beyond 1e308 an int does not even fit a float


def _int64(text: str) -> int:
    value = int(text)
    if not -INT_LIMIT <= value < INT_LIMIT:
        raise DecodeError(Reason.TOO_LARGE.value, f"integer {text[:20]}... ({len(text)} digits) is beyond 64 bits")
    return value


# One decoder and one encoder for every record: json.loads and json.dumps given options build a
# new one on each call, which cost as much as parsing the JSON of a 4 KiB request (half of
# strict_loads; docs/serving.md, "The serving path's share"). Both are safe to share between threads:
# an encoder keeps its per-call state in the call, and the decoder's only shared state is a
# memo that interns object keys (cleared after each document; a race can only cost an interning).
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_int=_int64)


def strict_loads(data: bytes, max_bytes: int = MAX_RECORD_BYTES, *, refuse_nul: bool = True) -> dict[str, Any]:
    """A wire record's JSON object, or DecodeError with the reason code: at most ``max_bytes``,
    UTF-8 strict JSON (no NaN, ints within 64 bits, no lone surrogates, no NUL character unless
    ``refuse_nul`` is False), ``"v": 1``. Every record decoder here and the compacted topics'
    readers (control, episode state) parse with it."""
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
        obj = _DECODER.decode(data.decode("utf-8"))
    except DecodeError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # ValueError: also ints over 4300 digits
        raise DecodeError(Reason.UNDECODABLE.value, f"not UTF-8 JSON: {str(e)[:200]}") from None
    if not isinstance(obj, dict):
        raise DecodeError(Reason.BAD_SCHEMA.value, "record must be a JSON object")
    escaped = b"\\" in data  # memchr: a request of base64 and numbers has no escape and skips both checks
    if escaped and _SURROGATE_ESCAPE.search(data) and _lone_surrogate(obj):
        # JSON may spell "\ud800", which Python decodes to a string no UTF-8 encoder takes: it would
        # fail later, in a hash, a Kafka key or a database write, and take the whole batch with it.
        raise DecodeError(Reason.UNDECODABLE.value, "a string holds a lone UTF-16 surrogate escape (\\ud800 to "
                          "\\udfff without its pair): not valid Unicode text")
    if refuse_nul and escaped and _NUL_ESCAPE in data and _holds_nul(obj):
        # Strict JSON carries NUL only as this escape (a raw control character is refused above).
        # PostgreSQL's text and jsonb refuse it: one such string in a batch failed the monitor's
        # store write, and in a QC-history row stopped its publisher, on every restart.
        raise DecodeError(Reason.BAD_SCHEMA.value, "a string holds a NUL character (\\u0000), which no field of "
                          "the wire takes (PostgreSQL cannot store it)")
    version = obj.get("v")
    if type(version) is not int or version != WIRE_VERSION:  # 1.0 and true are not version 1
        raise DecodeError(Reason.UNSUPPORTED_VERSION.value, f"wire version {short_repr(version)}, this build reads {WIRE_VERSION}")
    return obj


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF][0-9a-fA-F]{2}")


# Only a record whose bytes hold this pays for a walk of its strings (the hot path does not).
_NUL_ESCAPE = b"\\u0000"


def _lone_surrogate(value: Any) -> bool:
    """Whether any string in ``value`` (keys included) cannot be encoded as UTF-8."""
    return not all(is_utf8(text) for text in json_strings(value))


def _holds_nul(value: Any) -> bool:
    """Whether any string in ``value`` (keys included) holds a NUL character (``"\\\\u0000"``, an
    escaped backslash, is six characters of text, not a NUL: hence the walk after the byte test)."""
    return any("\x00" in text for text in json_strings(value))


def short_repr(value: Any) -> str:
    """``repr`` cut to 80 characters, for error messages that quote a bad value."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def typed_field(obj: dict[str, Any], name: str, kind: type | tuple[type, ...], optional: bool = False) -> Any:
    """``obj[name]`` if it is a ``kind`` (a bool is not an int), None if absent or null and
    ``optional``; else DecodeError ``bad_schema`` naming the field."""
    value = obj.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise DecodeError(Reason.BAD_SCHEMA.value, f"field {name!r} must be {getattr(kind, '__name__', kind)}")
    return value


def number_field(obj: dict[str, Any], name: str, low: float = -math.inf, high: float = math.inf, default: float | None = None) -> float:
    """A finite JSON number in [low, high] (JSON may spell 1e400, which parses to infinity);
    ``default`` when the field is absent (a null is refused: it says nothing about the number)."""
    if default is not None and name not in obj:
        return default
    try:
        value = float(typed_field(obj, name, (int, float)))
    except OverflowError:  # an int past 1e308 (callers that skip strict_loads' 64-bit limit)
        value = math.inf
    if not (math.isfinite(value) and low <= value <= high):
        raise DecodeError(Reason.BAD_SCHEMA.value, f"field {name!r} = {value} must be finite and in [{low}, {high}]")
    return value


def id_field(obj: dict[str, Any], name: str, optional: bool = False) -> Any:
    """An identifier: a string of 1 to ``MAX_ID_CHARS`` characters (None when ``optional`` and
    absent or null)."""
    value = typed_field(obj, name, str, optional=optional)
    if value is not None and not 1 <= len(value) <= MAX_ID_CHARS:
        raise DecodeError(Reason.BAD_SCHEMA.value, f"field {name!r} must be 1..{MAX_ID_CHARS} characters, got {len(value)}")
    return value


# An episode's step fits a 32-bit signed integer: the audit store's ``step`` column (PostgreSQL
# INTEGER) holds no more, and no episode runs two billion steps; refused here, a larger step is
# one record's ``bad_schema`` on every reader, not a store error found at ingest.
MAX_STEP = 2**31 - 1


def _step(obj: dict[str, Any]) -> int | None:
    step = typed_field(obj, "step", int, optional=True)
    if step is not None and not 0 <= step <= MAX_STEP:
        raise DecodeError(Reason.BAD_SCHEMA.value, f"field 'step' = {step} must be in [0, {MAX_STEP}]")
    return step


def _enum(kind: type[Enum], value: Any, name: str) -> Any:
    if not isinstance(value, str):
        raise DecodeError(Reason.BAD_SCHEMA.value, f"field {name!r} must be one of {[m.value for m in kind]}")
    try:
        return kind(value)
    except ValueError:
        raise DecodeError(Reason.BAD_SCHEMA.value, f"field {name!r} = {short_repr(value)} not one of {[m.value for m in kind]}") from None


def schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of every v1 record, ``$defs`` by record name."""
    return json.loads(resources.files("auditstream").joinpath("schemas/wire-v1.json").read_text("utf-8"))

