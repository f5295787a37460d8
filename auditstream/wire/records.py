"""The records of the item flow: request, prediction, audit item, verdict, decision, dead letter."""

from __future__ import annotations

import base64
import math
import re
from dataclasses import dataclass, field
from typing import Any

from auditstream.errors import DecodeError
from auditstream.wire.codec import (
    DECISION_SOURCES, LATENCY_HEADERS, MAX_DEAD_LETTER_BYTES, MAX_DETAIL_CHARS, MAX_ID_CHARS, MAX_RECORD_BYTES,
    REPLAY_OF_HEADER, Reason, Route, TaskKind, VerdictKind, WIRE_VERSION, _dumps, _enum, _step, id_field, number_field, short_repr,
    strict_loads, typed_field,
)
from auditstream.wire.tensors import ModelInput, _b64decode, decode_input, encode_input, may_hold_bools

_SHA256 = re.compile(r"[0-9a-f]{64}")


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
        obj = strict_loads(data, max_bytes)
        episode_key = id_field(obj, "episode_key", optional=True)
        return cls(
            request_id=id_field(obj, "request_id"),
            model=id_field(obj, "model"),
            input=decode_input(obj.get("input"), may_hold_bools(data)),
            created_at_s=number_field(obj, "created_at_s"),
            episode_key=episode_key,
            step=_step(obj),
            episode_end=bool(typed_field(obj, "episode_end", bool, optional=True)),
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
    task: TaskKind
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

    def __post_init__(self) -> None:
        object.__setattr__(self, "task", TaskKind.parse(self.task))  # a plain string names a kind too

    def to_dict(self) -> dict[str, Any]:
        obj = {
            "v": WIRE_VERSION,
            "request_id": self.request_id,
            "model": self.model,
            "model_version": self.model_version,
            "task": self.task.value,
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
            request_id=id_field(obj, "request_id"),
            model=id_field(obj, "model"),
            model_version=id_field(obj, "model_version"),
            task=_enum(TaskKind, obj.get("task"), "task"),
            output=obj.get("output"),
            confidence=number_field(obj, "confidence"),
            route=_enum(Route, obj.get("route"), "route"),
            reason=typed_field(obj, "reason", str),
            qc_inclusion_prob=number_field(obj, "qc_inclusion_prob", 0.0, 1.0),
            created_at_s=number_field(obj, "created_at_s"),
            details=typed_field(obj, "details", dict, optional=True) or {},
            episode_key=id_field(obj, "episode_key", optional=True),
            step=_step(obj),
            latency=parse_latency_headers(headers),
            shadow=bool(typed_field(obj, "shadow", bool, optional=True)),
        )

    @classmethod
    def from_bytes(
        cls, data: bytes, headers: list[tuple[str, bytes]] | None = None, max_bytes: int = MAX_RECORD_BYTES
    ) -> "Prediction":
        return cls.from_dict(strict_loads(data, max_bytes), headers)


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


def replay_of(headers: Any) -> str | None:
    """The dead letter a record replays (its :data:`REPLAY_OF_HEADER`, as
    ``<dead-letter topic>[partition]@offset``), or None for a record that is no replay. A header
    with a null or unreadable value still marks a replay (what it names is then ``"?"``)."""
    for item in headers or ():
        try:
            name, value = item
        except (TypeError, ValueError):
            continue
        if name == REPLAY_OF_HEADER:
            try:
                return bytes(value).decode("utf-8", "replace")[:MAX_ID_CHARS * 2] or "?"
            except TypeError:  # a null value
                return "?"
    return None


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
        obj = strict_loads(data, max_bytes)
        return cls(prediction=Prediction.from_dict(obj), input=decode_input(obj.get("input"), may_hold_bools(data)))


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
        obj = strict_loads(data, max_bytes)
        inclusion_prob = number_field(obj, "inclusion_prob", 0.0, 1.0, default=1.0)
        if inclusion_prob == 0.0:  # estimates weight each audit by 1 / inclusion_prob
            raise DecodeError(Reason.BAD_SCHEMA.value, "field 'inclusion_prob' must be > 0")
        return cls(
            verdict_id=id_field(obj, "verdict_id"),
            request_id=id_field(obj, "request_id"),
            model=id_field(obj, "model"),
            model_version=id_field(obj, "model_version"),
            auditor=id_field(obj, "auditor"),
            kind=_enum(VerdictKind, obj.get("kind"), "kind"),
            decided_at_s=number_field(obj, "decided_at_s"),
            model_output=obj.get("model_output"),
            corrected_output=obj.get("corrected_output"),
            item_route=_enum(Route, obj.get("item_route", Route.HUMAN.value), "item_route"),
            inclusion_prob=inclusion_prob,
            is_gold=bool(typed_field(obj, "is_gold", bool, optional=True)),
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
        obj = strict_loads(data, max_bytes)
        source = typed_field(obj, "source", str)
        if source not in DECISION_SOURCES:
            raise DecodeError(Reason.BAD_SCHEMA.value, f"decision source {short_repr(source)} not one of {DECISION_SOURCES}")
        return cls(
            request_id=id_field(obj, "request_id"),
            model=id_field(obj, "model"),
            model_version=id_field(obj, "model_version"),
            output=obj.get("output"),
            source=source,
            created_at_s=number_field(obj, "created_at_s"),
            episode_key=id_field(obj, "episode_key", optional=True),
            step=_step(obj),
            details=typed_field(obj, "details", dict, optional=True) or {},
        )

@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that could not be processed: ``dead-letter`` topic, key = the original key.

    The original value and headers are kept byte for byte, with where they came from, so the
    record can be replayed to its source topic once the cause is fixed. An original too large to
    carry within the dead-letter topic's limit is not carried (``omitted_bytes`` > 0: key, value
    and headers null and empty) and stays at its source offset, named by ``value_sha256``
    (:mod:`auditstream.dead_letters`).
    """

    reason: str
    detail: str
    source_topic: str
    source_partition: int
    source_offset: int
    value: bytes | None
    key: bytes | None = None
    headers: tuple[tuple[str, bytes | None], ...] = ()  # a null value stays null (Kafka allows it)
    failed_at_s: float = 0.0
    omitted_bytes: int = 0  # > 0: the original's key + value + headers, this many bytes, not carried
    value_sha256: str = ""  # of the original value, when it is not carried

    def to_bytes(self) -> bytes:
        def b64(b: bytes | None) -> str | None:
            return None if b is None else base64.b64encode(b).decode("ascii")

        obj = {
            "v": WIRE_VERSION,
            "reason": self.reason,
            "detail": self.detail[:MAX_DETAIL_CHARS],
            "source": {"topic": self.source_topic, "partition": self.source_partition, "offset": self.source_offset},
            "key_b64": b64(self.key),
            "value_b64": b64(self.value),
            "headers": [[k, b64(v)] for k, v in self.headers],
            "failed_at_s": self.failed_at_s,
        }
        if self.omitted_bytes:
            obj["omitted"] = {"bytes": self.omitted_bytes, "value_sha256": self.value_sha256}
        return _dumps(obj)

    @classmethod
    def from_bytes(cls, data: bytes, max_bytes: int = MAX_DEAD_LETTER_BYTES) -> "DeadLetter":
        # A NUL is taken here: a letter carries its original's header names verbatim (Kafka allows
        # any), no store keeps letters, and a refused letter could never be replayed.
        obj = strict_loads(data, max_bytes, refuse_nul=False)
        source = typed_field(obj, "source", dict)
        partition, offset = typed_field(source, "partition", int), typed_field(source, "offset", int)
        if partition < 0 or offset < 0:
            raise DecodeError(Reason.BAD_SCHEMA.value, f"source partition {partition} and offset {offset} must be >= 0")

        def unb64(name: str, value: Any) -> bytes | None:
            if value is None:
                return None
            if not isinstance(value, str):
                raise DecodeError(Reason.BAD_SCHEMA.value, f"{name} must be a base64 string or null")
            return _b64decode(value, name)

        headers = typed_field(obj, "headers", list, optional=True) or []
        if not all(isinstance(h, list) and len(h) == 2 and isinstance(h[0], str) for h in headers):
            raise DecodeError(Reason.BAD_SCHEMA.value, "headers must be a list of [name, base64 value or null] pairs")
        omitted = typed_field(obj, "omitted", dict, optional=True)
        omitted_bytes, value_sha256 = 0, ""
        if omitted is not None:
            omitted_bytes, value_sha256 = typed_field(omitted, "bytes", int), typed_field(omitted, "value_sha256", str)
            if omitted_bytes < 1 or not _SHA256.fullmatch(value_sha256):
                raise DecodeError(Reason.BAD_SCHEMA.value, "omitted must be {'bytes': int >= 1, 'value_sha256': 64 hex digits}")
            if obj.get("key_b64") is not None or obj.get("value_b64") is not None or headers:
                raise DecodeError(Reason.BAD_SCHEMA.value, "a letter with 'omitted' carries no key, value or headers")
        return cls(
            reason=typed_field(obj, "reason", str),
            detail=typed_field(obj, "detail", str),
            source_topic=typed_field(source, "topic", str),
            source_partition=partition,
            source_offset=offset,
            key=unb64("key_b64", obj.get("key_b64")),
            value=unb64("value_b64", obj.get("value_b64")),
            headers=tuple((k, unb64("header value", v)) for k, v in headers),  # a null value stays null
            failed_at_s=number_field(obj, "failed_at_s", default=0.0),
            omitted_bytes=omitted_bytes,
            value_sha256=value_sha256,
        )

