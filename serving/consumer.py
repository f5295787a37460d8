"""The serving consumer (``auditstream serve --model NAME``): ``requests.<model>`` in;
``predictions``, ``decisions``, ``audit`` and ``dead-letter`` out.

:func:`process_batch` is pure (no Kafka, tested without a broker): for each record, in order,
size check → decode (:mod:`auditstream.wire`) → right model? → input check
(:mod:`serving.inputs`); then one inference per group of equally shaped inputs; then, in record
order again, the task kind's postprocessing (:mod:`auditstream.tasks`) and triage (``qc.triage``, with the
kind's gating part confidences). Each record yields either its
outputs -- a prediction (always), a decision (AUTO, AUTO_QC), an audit item (HUMAN, AUTO_QC) --
or one dead letter with its original bytes. Inference (:mod:`serving.inference`) tells a bad
record (an ``inference_failed`` dead letter) from a broken model (the exception stops the process).
No record yields an output its topic would refuse: outputs over a topic's limit
(``ServeConfig.topic_limits``) make a ``too_large`` dead letter instead, and a letter over the
dead-letter topic's says where the original is (:mod:`auditstream.dead_letters`).
Every answer records the threshold that routed it (``details["threshold"]``, after the control
channel's override), so a redelivery routed differently after a tightening can be recognised.

Kinds whose answers act (``Task.acts``: policies) draw the action with the kind's
:meth:`~auditstream.tasks.Task.act` at a hash of the request id, and every outcome goes to
``actions`` for the environment driver (the action, or a ``deferred`` marker for HUMAN routes,
which also go to ``audit``); a decision records what the kind's ``decision_details`` says (for a
policy: the full probability vector, the propensities the action was drawn with, the value
estimate, the route and whether the decision was QC-sampled). With an
:class:`serving.episodes.EpisodeStore` the observation of an episode's step joins its frame
stack and the decision carries the episode's context (taken when the step's frames are stacked,
so two steps of an episode in one batch, or a step batched with its episode's end, log what
they would alone); an ``episode_end`` request only ends the episode's state. A record ``auditstream dlq replay``
sent back (its ``auditstream-replay-of`` header) is a replay to the store: a replayed step its
episode has moved past and no longer holds is that record's ``bad_schema`` dead letter, not a
restart of the episode. A failed restore
of the episode state stops the consumer at its next batch (``EpisodeStateNotRestored``). A *shadow* consumer (a candidate on the live model's requests), of any kind,
writes predictions flagged ``shadow`` and nothing that acts: no decisions, actions, audit items
or episode state. Given a :class:`LiveReference` (the version it is compared with, loaded beside
it), a shadow also answers each request with that version and records in the prediction's
``details["live_reference"]`` whether the two answers are the same by the kind's own rule (and
the live version's answer where they differ): where they agree no audit is needed to know that
they are both right or both wrong, which is what lets the paired promotion gate count all the
traffic, not only the audited items (store/shadow.py, qc/paired.py).

:class:`ServeApp` wires it into :class:`auditstream.stream.StreamLoop` (at-least-once; the
checkpoint order is documented there and in docs/serving.md) with metrics.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from auditstream import tasks
from auditstream import topics as T
from auditstream.control import ControlState
from auditstream.dead_letters import dead_letter_output
from auditstream.errors import DecodeError, EpisodeStateNotRestored
from auditstream.kafka import Record
from auditstream.kafka.limits import MAX_PRODUCE_BYTES, record_bytes
from auditstream.registry import ModelCard, TriageSpec
from auditstream.settings import Settings
from auditstream.stream import Output
from auditstream.wire import Action, AuditItem, Decision, InferenceRequest, Prediction, Reason, Route, replay_of
from qc.triage import TriagePolicy, hash_uniform, policy_for, triage
from serving.episodes import EpisodeStep, EpisodeStore
from serving.inference import Runner, infer
from serving.inputs import prepare_input

log = logging.getLogger(__name__)

OUTPUT_TOPICS = (T.PREDICTIONS, T.DECISIONS, T.AUDIT, T.DEAD_LETTER, T.ACTIONS)  # what a consumer may write
# An output's key is an id (at most 256 characters: 1 KiB of UTF-8) and its headers the latency
# ones: with the record overhead, well within this.
OUTPUT_FRAMING_BYTES = 4 * 1024
MAX_PLAUSIBLE_AGE_S = 7 * 24 * 3600.0  # older requests' latencies are not observed
MAX_CLOCK_SKEW_S = 300.0  # nor those of requests from further in the future


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
    actions_topic: str = ""
    shadow: bool = False  # a candidate in shadow mode: predictions only, flagged
    request_model: str = ""  # the model requests name (a shadow reads the live model's); "" = card.name
    control: ControlState | None = None  # the monitor's latest word: queue depth, tightened threshold
    # The largest record each output topic takes (auditstream.kafka.limits.topic_limits); a topic
    # not named takes what the producers send at most.
    topic_limits: dict[str, int] = field(default_factory=dict, hash=False, compare=False)

    @property
    def task(self) -> tasks.Task:
        """The card's kind, bound to its parameters (a detector's ``match_iou``: the shadow's
        comparison with live matches boxes at the IoU the card certified)."""
        return tasks.rule_for(self.card.task, self.card)

    @property
    def triage_spec(self) -> TriageSpec:
        """The card's triage rule with the monitor's threshold override (which only tightens)."""
        spec = self.card.triage
        if self.control is None:
            return spec
        threshold = self.control.threshold_for(self.card.version, spec.threshold)
        return spec if threshold == spec.threshold else dataclasses.replace(spec, threshold=threshold)

    def limit(self, topic: str) -> int:
        return self.topic_limits.get(topic, MAX_PRODUCE_BYTES)

    @classmethod
    def from_settings(cls, settings: Settings, card: ModelCard, shadow: bool = False,
                      request_model: str = "", topic_limits: dict[str, int] | None = None) -> "ServeConfig":
        policy = policy_for(settings, tasks.lookup(card.task).min_qc_rate)
        if policy.qc_rate > settings.qc_rate:
            log.warning("qc_rate %.4g raised to %.2g for %s %s (random audits keep OPE possible)",
                        settings.qc_rate, policy.qc_rate, card.task, card.name)
        return cls(card, policy, settings.max_request_bytes,
                   settings.topic(T.PREDICTIONS), settings.topic(T.DECISIONS), settings.topic(T.AUDIT),
                   settings.topic(T.DEAD_LETTER), settings.topic(T.ACTIONS), shadow, request_model,
                   topic_limits=dict(topic_limits or {}))


@dataclass
class RecordResult:
    """The outcome of one record: its outputs plus what the metrics need."""

    outputs: list[Output] = field(default_factory=list)
    route: Route | None = None
    dead_letter_reason: str | None = None
    end_to_end_s: float | None = None  # None: no plausible latency (an absurd created_at_s)
    over_capacity: bool = False  # a deferral that joined a human queue at or over its configured depth
    model_failure: bool = False  # dead-lettered at or after inference: evidence about the model (FailureStreak)
    model_input: np.ndarray | None = None  # answered: the array the model answered (FailureStreak's recheck)


@dataclass(frozen=True)
class LiveReference:
    """A shadow's copy of the version it is compared with (``ServeApp`` loads it)."""

    card: ModelCard
    runner: Runner


def dead_letter(record: Record, reason: str, detail: str, config: "ServeConfig", now: float,
                model_failure: bool = False) -> RecordResult:
    topic = config.dead_letter_topic
    return RecordResult([dead_letter_output(record, reason, detail, topic, now, config.limit(topic))],
                        dead_letter_reason=reason, model_failure=model_failure)


def _oversized(outputs: list[Output], config: "ServeConfig") -> str | None:
    """What says an output would be over its topic's limit (the broker or the client would refuse
    it, and the loop could not go past this record), or None when all fit."""
    for out in outputs:
        limit = config.limit(out.topic)
        if len(out.value or b"") + OUTPUT_FRAMING_BYTES <= limit:  # the usual case, without counting headers
            continue
        size = record_bytes(out.key, out.value, out.headers)
        if size > limit:
            return (f"its output to {out.topic} would be {size} bytes, over that topic's limit of "
                    f"{limit} (max.message.bytes); raise it, then replay this letter")
    return None


def _decode(record: Record, config: ServeConfig, episodes: EpisodeStore | None
            ) -> tuple[InferenceRequest, np.ndarray, EpisodeStep | None]:
    record.check_readable()
    if record.value is None:
        raise DecodeError(Reason.UNDECODABLE.value, "record has no value (a tombstone)")
    if len(record.value) > config.max_request_bytes:
        raise DecodeError(Reason.TOO_LARGE.value, f"{len(record.value)} bytes > max_request_bytes={config.max_request_bytes}")
    request = InferenceRequest.from_bytes(record.value, max_bytes=config.max_request_bytes)
    served = config.request_model or config.card.name
    if request.model != served:
        raise DecodeError(Reason.WRONG_MODEL.value, f"request for model {request.model!r} on {served!r}'s topic")
    if episodes is None:
        return request, prepare_input(request.input, config.card.inputs[0]), None
    frame = prepare_input(request.input, episodes.spec)
    if request.episode_end:
        return request, frame, None
    step = episodes.observe(request, frame, record.partition, replay_of=replay_of(record.headers))
    return request, step.input, step


def process_batch(records: list[Record], session: Runner, config: ServeConfig, now: float,
                  episodes: EpisodeStore | None = None, reference: LiveReference | None = None) -> list[RecordResult]:
    """One :class:`RecordResult` per record, in order. ``now``: wall-clock seconds at batch start.
    ``episodes``: per-episode state of a policy consumer (frame stacks, step counts); a failed
    restore of its state raises :class:`~auditstream.errors.EpisodeStateNotRestored` here, before
    any record (the loop stops, nothing of the batch is committed).
    ``reference``: a shadow's live version, whose answers are compared with the candidate's."""
    card = config.card
    triage_spec = config.triage_spec
    human_queue_depth = config.control.human_queue_depth if config.control is not None else None
    if episodes is not None:
        episodes.check_restored()
    results: list[RecordResult | None] = [None] * len(records)
    valid: dict[tuple[int, ...], list[tuple[int, InferenceRequest, np.ndarray]]] = {}
    steps: dict[int, EpisodeStep] = {}
    for i, record in enumerate(records):
        try:
            request, array, step = _decode(record, config, episodes)
            if request.episode_end and episodes is not None:
                episodes.end(request)
                results[i] = RecordResult()  # no decision wanted; the state's tombstone comes at the checkpoint
                continue
        except DecodeError as e:
            results[i] = dead_letter(record, e.code, e.detail, config, now)
            continue
        except EpisodeStateNotRestored:  # the consumer's failure, not this record's
            raise
        except Exception as e:  # noqa: BLE001 - a decoder bug is this record's failure, not the batch's
            log.warning("record %s: processing failed before inference: %r", record.where, e)
            results[i] = dead_letter(record, Reason.PROCESSING_FAILED.value, repr(e)[:500], config, now)
            continue
        valid.setdefault(array.shape, []).append((i, request, array))
        if step is not None:
            steps[i] = step
    started = time.perf_counter()
    task = config.task
    answered: dict[int, tuple[InferenceRequest, np.ndarray, Any, float, Any]] = {}
    for group in valid.values():
        answers, inference_s = infer(session, card, [a for _, _, a in group])  # this group's ORT time only
        references = _reference_answers(reference, group) if reference is not None and config.shadow else {}
        for (i, request, array), answer in zip(group, answers, strict=True):
            answered[i] = (request, array, answer, inference_s, references.get(i))
    # In record order, whatever the groups: an episode's steps are decided in order (the context of
    # each reads the action of the step before it, decided just before when in the same batch).
    for i in sorted(answered):
        request, array, answer, inference_s, ref = answered[i]
        if isinstance(answer, Exception) or answer is None:
            detail = (repr(answer)[:500] if answer is not None else
                      "model output is not finite, or not valid for its task kind (a policy's action_probs "
                      "not a probability distribution)")
            results[i] = dead_letter(records[i], Reason.INFERENCE_FAILED.value, detail, config, now,
                                     model_failure=True)
            continue
        try:
            result = _answer(task, answer, request, config, triage_spec, human_queue_depth, episodes,
                             now, inference_s, started, ref, steps.get(i))
            result.model_input = array
            oversized = _oversized(result.outputs, config)
            # Answered, so no evidence against the model: it stays out of the failure streak.
            results[i] = result if oversized is None else dead_letter(records[i], Reason.TOO_LARGE.value,
                                                                      oversized, config, now)
        except Exception as e:  # noqa: BLE001 - this record's own failure: it goes to the dead letters alone
            log.warning("record %s: processing failed after inference: %r", records[i].where, e)
            results[i] = dead_letter(records[i], Reason.PROCESSING_FAILED.value, repr(e)[:500], config, now,
                                     model_failure=True)
    assert all(r is not None for r in results), "every record has a result"
    return results  # type: ignore[return-value]


def _reference_answers(reference: LiveReference, group: list[tuple[int, InferenceRequest, np.ndarray]]
                       ) -> dict[int, tuple[LiveReference, tasks.Answer]]:
    """The live version's answer to each record of ``group`` that it could answer. The comparison
    is evidence, never a reason to lose the candidate's answer: a failure here only leaves the
    records without a reference."""
    try:
        answers, _ = infer(reference.runner, reference.card, [a for _, _, a in group])
    except Exception as e:  # noqa: BLE001 - even a broken reference model must not stop the shadow
        log.warning("the live reference v%s failed on a batch: %r", reference.card.version, e)
        return {}
    return {i: (reference, a) for (i, _, _), a in zip(group, answers) if isinstance(a, tasks.Answer)}


def _compare_with_live(task: tasks.Task, answer: tasks.Answer, request: InferenceRequest,
                       reference: tuple[LiveReference, tasks.Answer]) -> dict | None:
    """``details["live_reference"]``: the live version, whether its answer is the same as the
    candidate's (the kind's rule, after acting for kinds that act), and its answer where not."""
    ref, live = reference
    try:
        if task.acts:
            live = task.act(live, ref.card, hash_uniform(request.request_id, tasks.ACTION_SALT))
        same = bool(task.same_answer(answer.output, live.output))
    except Exception as e:  # noqa: BLE001 - an answer the rule cannot compare: no evidence, not a failure
        log.warning("request %r: comparing with live v%s failed: %r", request.request_id, ref.card.version, e)
        return None
    return {"version": ref.card.version, "same_answer": same, **({} if same else {"output": live.output})}


def _answer(task: tasks.Task, answer: tasks.Answer, request: InferenceRequest, config: ServeConfig,
            triage_spec: TriageSpec, human_queue_depth: int | None, episodes: EpisodeStore | None, now: float,
            inference_s: float, started: float,
            reference: tuple[LiveReference, tasks.Answer] | None = None, step: EpisodeStep | None = None
            ) -> RecordResult:
    """Act (kinds that act), triage, and encode one answered record's outputs."""
    card = config.card
    if task.acts:
        answer = _act(task, answer, request, card, episodes, step)
    if reference is not None:
        compared = _compare_with_live(task, answer, request, reference)
        if compared is not None:
            answer = dataclasses.replace(answer, details={**answer.details, "live_reference": compared})
    # The rule that routed this answer (the card's threshold or the monitor's tightening), and
    # each gating part's own route: a detector's auditor sees which boxes were accepted on their
    # own evidence (context) and which need a look.
    parts = task.gating_confidences(answer)
    details = {**answer.details, "threshold": triage_spec.threshold}
    if parts:
        part_threshold = triage_spec.threshold if config.policy.part_threshold is None else config.policy.part_threshold
        details["part_routes"] = [Route.AUTO.value if c >= part_threshold else Route.HUMAN.value for c in parts]
    answer = dataclasses.replace(answer, details=details)
    decision = triage(request.request_id, answer.confidence, triage_spec, config.policy,
                      part_confidences=parts, human_queue_depth=human_queue_depth)
    latency = {"queue-s": max(0.0, now - request.created_at_s), "inference-s": inference_s,
               "end-to-end-s": max(0.0, now + (time.perf_counter() - started) - request.created_at_s)}
    # A producer's clock (or a hand-made record) may say 1970 or next year: such a latency is no
    # measurement and stays out of the histograms (the headers still carry it).
    plausible = -MAX_CLOCK_SKEW_S <= now - request.created_at_s <= MAX_PLAUSIBLE_AGE_S
    prediction = Prediction(
        request_id=request.request_id, model=card.name, model_version=card.version, task=card.task,
        output=answer.output, confidence=answer.confidence, route=decision.route, reason=decision.reason,
        qc_inclusion_prob=decision.qc_inclusion_prob, created_at_s=request.created_at_s,
        details=answer.details, episode_key=request.episode_key, step=request.step, latency=latency,
        shadow=config.shadow)
    return RecordResult(_outputs(task, prediction, request, config), decision.route,
                        end_to_end_s=latency["end-to-end-s"] if plausible else None,
                        over_capacity=decision.over_capacity)


def _act(task: tasks.Task, answer: tasks.Answer, request: InferenceRequest, card: ModelCard,
         episodes: EpisodeStore | None, step: EpisodeStep | None = None) -> tasks.Answer:
    """The answer that acts (drawn at a hash of the request id: a redelivery acts the same),
    with the episode's context (fixed when its step was observed)."""
    answer = task.act(answer, card, hash_uniform(request.request_id, tasks.ACTION_SALT))
    if episodes is not None and step is not None and request.episode_key is not None:
        answer = dataclasses.replace(answer, details={**answer.details,
                                                      "episode": episodes.decided(step, answer.output)})
    return answer


def _outputs(task: tasks.Task, prediction: Prediction, request: InferenceRequest, config: ServeConfig) -> list[Output]:
    """The prediction always; unless shadow: the decision (model routes), for kinds that act the
    action or a deferred marker, and the audit item (HUMAN, AUTO_QC)."""
    key = request.request_id.encode()
    outputs = [Output(config.predictions_topic, key, prediction.to_bytes(), tuple(prediction.latency_headers()))]
    if config.shadow:
        return outputs
    route = prediction.route
    details = task.decision_details(prediction)
    if route in (Route.AUTO, Route.AUTO_QC):
        decision = Decision(request_id=request.request_id, model=prediction.model, model_version=prediction.model_version,
                            output=prediction.output, source="model", created_at_s=request.created_at_s,
                            episode_key=request.episode_key, step=request.step, details=details)
        outputs.append(Output(config.decisions_topic, request.key, decision.to_bytes()))
    if task.acts and request.episode_key is not None and request.step is not None and config.actions_topic:
        action = Action(request_id=request.request_id, model=prediction.model, model_version=prediction.model_version,
                        episode_key=request.episode_key, step=request.step,
                        action=None if route == Route.HUMAN else prediction.output, route=route,
                        created_at_s=request.created_at_s,
                        details={**details, "safe_action": config.card.triage.safe_action})
        outputs.append(Output(config.actions_topic, request.key, action.to_bytes()))
    if route in (Route.HUMAN, Route.AUTO_QC):
        outputs.append(Output(config.audit_topic, key, AuditItem(prediction, request.input).to_bytes()))
    return outputs
