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

from auditstream.wire.codec import (
    ALLOWED_DTYPES, CONTENT_TYPE_HEADER, DECISION_SOURCES, LATENCY_HEADERS, MAX_DEAD_LETTER_BYTES,
    MAX_ID_CHARS, MAX_JSON_CONTAINERS, MAX_RANK, MAX_RECORD_BYTES, MAX_TENSOR_ELEMENTS,
    REPLAY_OF_HEADER, REQUEST_CONTENT_TYPE, Reason, Route, TaskKind, VerdictKind, WIRE_VERSION, schema,
)
from auditstream.wire.tensors import (
    ImageInput, ModelInput, decode_input, decode_tensor, encode_input, encode_tensor,
)
from auditstream.wire.records import (
    AuditItem, DeadLetter, Decision, InferenceRequest, Prediction, Verdict, parse_latency_headers, replay_of,
)
from auditstream.wire.episodes import Action, Transition

__all__ = [
    "ALLOWED_DTYPES",
    "CONTENT_TYPE_HEADER",
    "DECISION_SOURCES",
    "LATENCY_HEADERS",
    "MAX_DEAD_LETTER_BYTES",
    "MAX_ID_CHARS",
    "MAX_JSON_CONTAINERS",
    "MAX_RANK",
    "MAX_RECORD_BYTES",
    "MAX_TENSOR_ELEMENTS",
    "REPLAY_OF_HEADER",
    "REQUEST_CONTENT_TYPE",
    "Reason",
    "Route",
    "TaskKind",
    "VerdictKind",
    "WIRE_VERSION",
    "schema",
    "ImageInput",
    "ModelInput",
    "decode_input",
    "decode_tensor",
    "encode_input",
    "encode_tensor",
    "AuditItem",
    "DeadLetter",
    "Decision",
    "InferenceRequest",
    "Prediction",
    "Verdict",
    "parse_latency_headers",
    "replay_of",
    "Action",
    "Transition",
]
