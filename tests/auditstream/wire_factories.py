"""Valid records of every kind, for the wire tests (one place, so a contract change is one edit)."""

from __future__ import annotations

import base64

import numpy as np

from auditstream import wire
from auditstream.wire import DeadLetter, Decision, InferenceRequest, Prediction, Route, Verdict, VerdictKind

PNG_1x1 = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg=="
)


def make_request(**overrides) -> InferenceRequest:
    fields = dict(
        request_id="r-1",
        model="digits",
        input=np.arange(784, dtype=np.float32).reshape(1, 28, 28) / 784,
        created_at_s=1_700_000_000.25,
    )
    fields.update(overrides)
    return InferenceRequest(**fields)


def make_prediction(**overrides) -> Prediction:
    fields = dict(
        request_id="r-1",
        model="digits",
        model_version="3",
        task="classification",
        output=7,
        confidence=0.93,
        route=Route.AUTO_QC,
        reason="confidence 0.930 >= threshold 0.900",
        qc_inclusion_prob=0.02,
        created_at_s=1_700_000_000.5,
        details={"probs": [0.01, 0.93]},
        latency={"queue-s": 0.004, "inference-s": 0.0012, "end-to-end-s": 0.0071},
    )
    fields.update(overrides)
    return Prediction(**fields)


def make_verdict(**overrides) -> Verdict:
    fields = dict(
        verdict_id="v-1",
        request_id="r-1",
        model="digits",
        model_version="3",
        auditor="ana",
        kind=VerdictKind.CORRECT,
        decided_at_s=1_700_000_100.0,
        model_output=7,
        corrected_output=1,
        item_route=Route.AUTO_QC,
        inclusion_prob=0.02,
        is_gold=False,
    )
    fields.update(overrides)
    return Verdict(**fields)


def make_decision(**overrides) -> Decision:
    fields = dict(
        request_id="r-1",
        model="lander",
        model_version="2",
        output=3,
        source="model",
        created_at_s=1_700_000_000.5,
        episode_key="ep-9",
        step=41,
        details={"propensity": 0.8},
    )
    fields.update(overrides)
    return Decision(**fields)


def make_dead_letter(**overrides) -> DeadLetter:
    fields = dict(
        reason=wire.Reason.UNDECODABLE.value,
        detail="not UTF-8 JSON",
        source_topic="auditstream.requests.digits",
        source_partition=4,
        source_offset=1234,
        value=b"\xff\x00garbage",
        key=b"r-9",
        headers=(("content-type", b"application/octet-stream"), ("trace", b"\x00\x01")),
        failed_at_s=1_700_000_000.0,
    )
    fields.update(overrides)
    return DeadLetter(**fields)
