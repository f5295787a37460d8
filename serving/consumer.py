"""The serving consumer (``auditstream serve --model NAME``): ``requests.<model>`` in;
``predictions``, ``decisions``, ``audit`` and ``dead-letter`` out.

:func:`process_batch` is pure (no Kafka, tested without a broker): for each record, in order,
size check → decode (:mod:`auditstream.wire`) → right model? → input check
(:mod:`serving.inputs`); then one inference per group of equally shaped inputs; then
:mod:`serving.postprocess` and triage (``monitor.triage``). Each record yields either its
outputs -- a prediction (always), a decision (AUTO, AUTO_QC), an audit item (HUMAN, AUTO_QC) --
or one dead letter with its original bytes. A record whose inference fails alone goes to the
dead-letter topic; a batch whose every record fails inference means a broken model, and the
exception stops the process.

:class:`ServeApp` wires it into :class:`auditstream.stream.StreamLoop` (at-least-once; the
checkpoint order is documented there and in docs/serving.md) with metrics.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from auditstream import topics as T
from auditstream.errors import DecodeError
from auditstream.kafka import Record
from auditstream.registry import ModelCard
from auditstream.settings import Settings
from auditstream.stream import Output
from auditstream.wire import AuditItem, DeadLetter, Decision, InferenceRequest, Prediction, Reason, Route
from monitor.triage import TriagePolicy, triage
from serving.inputs import prepare_input
from serving.postprocess import Answer, postprocess

log = logging.getLogger(__name__)


class Runner(Protocol):
    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class ServeConfig:
    """What process_batch needs besides the records: the model card, policy, limits, topics."""

    card: ModelCard
    policy: TriagePolicy
    max_request_bytes: int
    predictions_topic: str
    decisions_topic: str
    audit_topic: str
    dead_letter_topic: str

    @classmethod
    def from_settings(cls, settings: Settings, card: ModelCard) -> "ServeConfig":
        return cls(card, TriagePolicy(qc_rate=settings.qc_rate), settings.max_request_bytes,
                   settings.topic(T.PREDICTIONS), settings.topic(T.DECISIONS), settings.topic(T.AUDIT),
                   settings.topic(T.DEAD_LETTER))


@dataclass
class RecordResult:
    """The outcome of one record: its outputs plus what the metrics need."""

    outputs: list[Output] = field(default_factory=list)
    route: Route | None = None
    dead_letter_reason: str | None = None
    end_to_end_s: float | None = None


def dead_letter(record: Record, reason: str, detail: str, topic: str, now: float) -> RecordResult:
    dl = DeadLetter(reason=reason, detail=detail, source_topic=record.topic, source_partition=record.partition,
                    source_offset=record.offset, value=record.value, key=record.key, headers=record.headers,
                    failed_at_s=now)
    return RecordResult([Output(topic, record.key, dl.to_bytes(), record.headers)], dead_letter_reason=reason)


def _decode(record: Record, config: ServeConfig) -> tuple[InferenceRequest, np.ndarray]:
    if record.value is None:
        raise DecodeError(Reason.UNDECODABLE.value, "record has no value (a tombstone)")
    if len(record.value) > config.max_request_bytes:
        raise DecodeError(Reason.TOO_LARGE.value, f"{len(record.value)} bytes > max_request_bytes={config.max_request_bytes}")
    request = InferenceRequest.from_bytes(record.value)
    if request.model != config.card.name:
        raise DecodeError(Reason.WRONG_MODEL.value, f"request for model {request.model!r} on {config.card.name!r}'s topic")
    return request, prepare_input(request.input, config.card.inputs[0])


def _infer(session: Runner, card: ModelCard, arrays: list[np.ndarray]) -> list[Answer | None | Exception]:
    """Answers of one stacked run; if the run fails, each row alone (to isolate the culprit)."""
    try:
        return list(postprocess(card, session.run(np.stack(arrays))))
    except Exception as batch_error:
        if len(arrays) == 1:
            return [batch_error]
    rows: list[Answer | None | Exception] = []
    for a in arrays:
        try:
            rows.append(postprocess(card, session.run(a[None]))[0])
        except Exception as e:
            rows.append(e)
    if all(isinstance(r, Exception) for r in rows):
        raise rows[0]  # every record fails: the model is broken, not the records
    return rows


def process_batch(records: list[Record], session: Runner, config: ServeConfig, now: float) -> list[RecordResult]:
    """One :class:`RecordResult` per record, in order. ``now``: wall-clock seconds at batch start."""
    card = config.card
    results: list[RecordResult | None] = [None] * len(records)
    valid: dict[tuple[int, ...], list[tuple[int, InferenceRequest, np.ndarray]]] = {}
    for i, record in enumerate(records):
        try:
            request, array = _decode(record, config)
        except DecodeError as e:
            results[i] = dead_letter(record, e.code, e.detail, config.dead_letter_topic, now)
            continue
        valid.setdefault(array.shape, []).append((i, request, array))
    started = time.perf_counter()
    for group in valid.values():
        answers = _infer(session, card, [a for _, _, a in group])
        inference_s = time.perf_counter() - started
        for (i, request, _array), answer in zip(group, answers):
            if isinstance(answer, Exception) or answer is None:
                detail = repr(answer)[:500] if answer is not None else "model output is not finite"
                results[i] = dead_letter(records[i], Reason.INFERENCE_FAILED.value, detail, config.dead_letter_topic, now)
                continue
            decision = triage(request.request_id, answer.confidence, card.triage, config.policy)
            latency = {"queue-s": max(0.0, now - request.created_at_s), "inference-s": inference_s,
                       "end-to-end-s": max(0.0, now + (time.perf_counter() - started) - request.created_at_s)}
            prediction = Prediction(
                request_id=request.request_id, model=card.name, model_version=card.version, task=card.task,
                output=answer.output, confidence=answer.confidence, route=decision.route, reason=decision.reason,
                qc_inclusion_prob=decision.qc_inclusion_prob, created_at_s=request.created_at_s,
                details=answer.details, episode_key=request.episode_key, step=request.step, latency=latency)
            results[i] = RecordResult(_outputs(prediction, request, config), decision.route,
                                      end_to_end_s=latency["end-to-end-s"])
    assert all(r is not None for r in results), "every record has a result"
    return results  # type: ignore[return-value]


def _outputs(prediction: Prediction, request: InferenceRequest, config: ServeConfig) -> list[Output]:
    key = request.request_id.encode()
    outputs = [Output(config.predictions_topic, key, prediction.to_bytes(), tuple(prediction.latency_headers()))]
    if prediction.route in (Route.AUTO, Route.AUTO_QC):
        decision = Decision(request_id=request.request_id, model=prediction.model, model_version=prediction.model_version,
                            output=prediction.output, source="model", created_at_s=request.created_at_s,
                            episode_key=request.episode_key, step=request.step,
                            details={"confidence": prediction.confidence, "route": prediction.route.value})
        outputs.append(Output(config.decisions_topic, request.key, decision.to_bytes()))
    if prediction.route in (Route.HUMAN, Route.AUTO_QC):
        outputs.append(Output(config.audit_topic, key, AuditItem(prediction, request.input).to_bytes()))
    return outputs
