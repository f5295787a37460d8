"""What the audit store hands out: items, claims, verdict results, outbox rows, read-model rows.

Plain frozen dataclasses, so the dashboard, the monitor process and the metrics can use them
without knowing any SQL. Also the pure rules every backend shares: what a verdict *means* as a
label (:func:`human_label`), how a gold answer is scored (:func:`gold_is_correct`), and which
records a verdict puts on the outbox (:func:`outbox_records`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from auditstream import tasks, topics
from auditstream.errors import ConfigError
from auditstream.kafka.limits import MAX_PRODUCE_BYTES, record_bytes
from auditstream.tasks.base import canonical_json, check_answer_of_any_kind
from auditstream.text import unreadable_text
from auditstream.wire import MAX_RECORD_BYTES, AuditItem, Decision, Route, TaskKind, Verdict, VerdictKind
from auditstream.wire.codec import short_repr

# The largest corrected output a verdict takes, as canonical JSON (check_verdict_input).
MAX_CORRECTION_BYTES = 256 * 1024
# The longest values of a verdict's own fields, for the bound of what it publishes
# (outbox_bytes_bound): record_verdict takes any verdict id of 1..64 characters (JSON escapes
# this one to 12 bytes), account names are 1..64 ASCII characters (store/accounts.py), and no
# float is written longer than this one.
_WORST_VERDICT_ID = "\U0001F600" * 64
_WORST_AUDITOR = "a" * 64
_WORST_TIME_S = -1.7976931348623157e308


@dataclass(frozen=True)
class StoreConfig:
    """How the queue is composed (a named, frozen config: the rates are part of what the
    resulting statistics mean, so they are explicit and documented)."""

    gold_rate: float = 0.05  # share of claims that serve a gold item (if one is left for this auditor)
    double_review_rate: float = 0.0  # share of items (by hash of request id) that need a second auditor
    seed: int | None = None  # of the gold draw; None: fresh randomness per process

    def __post_init__(self) -> None:
        for name in ("gold_rate", "double_review_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value} must be a probability in [0, 1]")


@dataclass(frozen=True)
class StoredItem:
    """An audit item as stored: the prediction, its input (wire-encoded), and its queue state."""

    item_id: int
    request_id: str
    model: str
    model_version: str
    task: TaskKind
    route: Route
    confidence: float
    qc_inclusion_prob: float
    output: Any
    details: dict[str, Any]
    input: dict[str, Any]  # wire encoding: {"tensor": {...}} or {"image": {...}}; see auditstream.wire.decode_input
    reason: str
    created_at_s: float
    ingested_at_s: float
    is_gold: bool
    reviews_needed: int
    reviews_done: int
    state: str  # "open" or "done"
    lease_owner: str | None
    lease_expires_s: float | None
    episode_key: str | None = None
    step: int | None = None


@dataclass(frozen=True)
class Claim:
    """An item leased to one auditor until ``lease_expires_s`` (renew while the form is open).

    ``is_gold`` is for the store's bookkeeping; a workbench must not show it, or gold items stop
    measuring anything.
    """

    item: StoredItem
    auditor: str
    lease_expires_s: float
    review_round: int  # 1, or 2 for the second auditor of a double-reviewed item

    @property
    def item_id(self) -> int:
        return self.item.item_id

    @property
    def is_gold(self) -> bool:
        return self.item.is_gold


@dataclass(frozen=True)
class VerdictRecord:
    """One row of the verdict history."""

    verdict_id: str
    item_id: int
    auditor: str
    kind: VerdictKind
    corrected_output: Any
    decided_at_s: float
    review_round: int
    is_gold: bool
    gold_correct: bool | None


@dataclass(frozen=True)
class VerdictResult:
    """``recorded`` is False when this verdict id was already recorded (a double submit): the
    returned ``verdict`` is then the one recorded first."""

    recorded: bool
    verdict: VerdictRecord
    item_done: bool  # the item left the queue (all reviews in)


@dataclass(frozen=True)
class OutboxRow:
    id: int
    topic: str  # logical name (auditstream.topics.VERDICTS / DECISIONS); Settings.topic() makes it full
    key: bytes
    value: bytes


@dataclass(frozen=True)
class QCOutcome:
    """One audited QC sample: was the auto-accepted answer an error, and how it was sampled."""

    request_id: str
    is_error: bool
    inclusion_prob: float
    confidence: float
    decided_at_s: float
    model: str
    model_version: str
    parts: int | None = None  # a kind that accepts parts one by one: the answer's parts (boxes)
    false_parts: int | None = None  # and how many of them the audit found false


@dataclass(frozen=True)
class QCSample:
    """One QC sample (a non-gold AUTO_QC item) in stream order, with its first decisive verdict
    (``outcome``) or None while it waits for one."""

    item_id: int  # the store's item id: the order items were ingested, fixed before any verdict
    request_id: str
    model: str
    model_version: str
    confidence: float
    inclusion_prob: float
    outcome: QCOutcome | None


@dataclass(frozen=True, slots=True)
class ItemPosition:
    """Where one non-gold audit item stands in its model's stream, without its input: what
    ``certify --from-audits`` holds for every item (``StoreReads.audit_positions``)."""

    item_id: int  # the store's item id: the order items were ingested, fixed before any verdict
    request_id: str
    done: bool  # state 'done': every review recorded
    route: Route  # HUMAN (deferred) or AUTO_QC (QC sample)
    inclusion_prob: float


@dataclass(frozen=True)
class GoldScore:
    auditor: str
    n: int
    correct: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else float("nan")


@dataclass(frozen=True)
class Agreement:
    """Inter-auditor agreement over double-reviewed items (first two decisive verdicts each)."""

    n_items: int
    percent: float  # share of items where both auditors gave the same label
    kappa: float  # Cohen's kappa: agreement beyond what the label frequencies give by chance


@dataclass(frozen=True)
class QueueStat:
    model: str
    model_version: str
    route: Route
    depth: int
    oldest_age_s: float


@dataclass(frozen=True)
class StoreStats:
    """One snapshot of everything the metrics endpoint reads from the store."""

    queue: list[QueueStat]
    verdicts: dict[tuple[str, str, str, str], int]  # (model, version, route, kind) -> count
    auditor_throughput: dict[str, int] = field(default_factory=dict)  # verdicts per auditor (window)
    outbox_pending: int = 0


# --------------------------------------------------------------------------------------------
# pure rules


def dumps(value: Any) -> str:
    """Canonical JSON, as the task kinds write answer keys: equal values give equal strings."""
    return canonical_json(value)


def human_label(kind: VerdictKind, model_output: Any, corrected_output: Any) -> Any:
    """The auditor's answer: the model's (accept), their own (correct), None (reject: no valid
    answer exists, e.g. an unreadable envelope). Skips are not labels."""
    if kind is VerdictKind.SKIP:
        raise ValueError("a skip is not a label")
    return {VerdictKind.ACCEPT: model_output, VerdictKind.CORRECT: corrected_output}.get(kind)


def item_rule(task: TaskKind | str, details: Any) -> tasks.Task:
    """The rule that judges a stored item: its kind's, at the parameters its prediction's
    ``details`` recorded at serving (a detector's ``match_iou``: the IoU its card certified at;
    ``tasks.Task.for_details``). What every store read that compares answers uses."""
    return tasks.rule_for(task, details=details)


def verdict_for(rule: tasks.Task, model_output: Any, answer: Any) -> tuple[VerdictKind, Any]:
    """The verdict an auditor's full answer makes (the workbench, the demo's QC bot, the loop
    bench): accept when it is the model's answer by ``rule`` (:func:`item_rule`: at the recorded
    parameters) and, for a kind whose parts are counted (a detector's boxes), leaves none of the
    model's parts false -- equality matches boxes as a largest matching, the false-box count as
    the certificate does, and an accept counts no false box -- else correct with it."""
    if rule.same_answer(model_output, answer) and not (rule.accepts_parts and rule.false_parts(model_output, answer)):
        return VerdictKind.ACCEPT, None
    return VerdictKind.CORRECT, answer


def audit_error(kind: VerdictKind, rule: tasks.Task | None, model_output: Any, corrected_output: Any) -> bool:
    """Was an audited auto answer an error? Anything but accept -- except a correction that is the
    same answer by the task kind's own rule (a box nudged by a pixel, a caption re-spaced).
    ``rule`` is the kind's rule bound to the model's card (``tasks.rule_for(kind, card)``; from a
    stored item, :func:`item_rule`): a detector's boxes match at the card's ``match_iou``, the
    IoU its certificate counted false boxes at. ``rule`` None (the kind is not known yet) or no
    corrected answer recorded: every correction counts."""
    if kind is VerdictKind.ACCEPT:
        return False
    if kind is VerdictKind.CORRECT and rule is not None and corrected_output is not None:
        return not rule.same_answer(model_output, corrected_output)
    return True


def audit_false_parts(kind: VerdictKind, rule: tasks.Task, model_output: Any, corrected_output: Any) -> int:
    """How many parts of an audited auto answer were false (a kind with :meth:`Task.max_parts`):
    none on accept; on a correction, the model's parts the corrected answer does not confirm (the
    kind's matching); on a reject, or a correction with no answer recorded, every part (the
    auditor said the answer is wrong without saying which part)."""
    if kind is VerdictKind.ACCEPT:
        return 0
    if kind is VerdictKind.CORRECT and corrected_output is not None:
        return rule.false_parts(model_output, corrected_output)
    return rule.count_parts(model_output)


def gold_is_correct(task: TaskKind | str, kind: VerdictKind, model_output: Any, corrected_output: Any,
                    gold_output: Any, details: Any = None) -> bool:
    """Whether the auditor's answer is the gold answer, by the task kind's answer equality at the
    item's recorded parameters (``details``: the item's prediction details, :func:`item_rule`)."""
    return item_rule(task, details).same_answer(human_label(kind, model_output, corrected_output), gold_output)


def check_lease_s(name: str, value: Any) -> float:
    """``value`` as a lease length in seconds: a finite number > 0, else :class:`ConfigError`
    (``inf`` would lease an item for ever, ``nan`` never expire nor compare)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(name, value, "a finite number of seconds > 0")
    return float(value)


class OutputTooLarge(ValueError):
    """An audit item a verdict on which could not be published: its ``Verdict`` or ``Decision``
    could be larger than the output topics take (dead-letter reason ``too_large``)."""


def check_audit_item(item: AuditItem, max_output_bytes: int = MAX_PRODUCE_BYTES) -> None:
    """``ValueError`` unless ``item`` is something an auditor should see (a bad record, not a
    broken store: the monitor process dead-letters it); :class:`OutputTooLarge` when a record a
    verdict on it publishes (:func:`outbox_bytes_bound`) could exceed ``max_output_bytes``, the
    most the ``verdicts`` and ``decisions`` topics take, or :data:`MAX_RECORD_BYTES`, the most
    their readers decode: stored, it would be audited and then its verdict refused by the
    producer on every publishing round, or by every reader."""
    p = item.prediction
    if p.route not in (Route.HUMAN, Route.AUTO_QC):
        raise ValueError(f"audit item {p.request_id!r} has route {p.route.value}; only HUMAN and AUTO_QC are audited")
    if not 0.0 < p.qc_inclusion_prob <= 1.0:
        raise ValueError(f"audit item {p.request_id!r} has inclusion probability {p.qc_inclusion_prob}; need (0, 1]")
    if not math.isfinite(p.confidence):
        raise ValueError(f"audit item {p.request_id!r} has confidence {p.confidence}; need a finite number")
    bound, limit = outbox_bytes_bound(item), min(max_output_bytes, MAX_RECORD_BYTES)
    if bound > limit:
        raise OutputTooLarge(f"audit item {short_repr(p.request_id)}: a verdict on it could publish a record of {bound} "
                             f"bytes (its output is {len(dumps(p.output))} bytes of JSON, plus a correction of up to "
                             f"{MAX_CORRECTION_BYTES}), over the {limit} the verdicts and decisions topics take and "
                             "their readers decode: it could never be published")


def check_verdict_input(kind: VerdictKind, corrected_output: Any, task: TaskKind | str | None = None) -> None:
    """``ValueError`` (a clear message for the auditor, nothing recorded) unless the verdict can be
    recorded: a correction, and only a correction, carries an answer, one that every reader can
    take and, with ``task`` (the item's kind), an answer of that kind (:meth:`Task.check_answer`:
    a detector's boxes four finite numbers drawn forwards, labels and scores well formed). Without
    ``task``, a correction shaped like a detector's (a list holding a dict with a ``"box"``) is
    checked as one all the same (:func:`check_correction`)."""
    if kind is VerdictKind.CORRECT and corrected_output is None:
        raise ValueError("a 'correct' verdict needs the corrected output")
    if kind is not VerdictKind.CORRECT and corrected_output is not None:
        raise ValueError(f"a {kind.value!r} verdict takes no corrected output, got {short_repr(corrected_output)}")
    check_correction(task, kind, corrected_output)
    # The verdict is published from the outbox: one the producer or the broker refused would be
    # claimed again by every publishing round, first of all (oldest first), and publish nothing
    # after it. The dashboard's editors bound what a person types; this bounds every caller.
    problem = unreadable_text(corrected_output)
    if problem is not None:  # its verdict and decision would be refused by every reader, the monitor's too
        raise ValueError(f"the corrected output holds {problem}, which no reader of verdicts takes; refused, "
                         "nothing recorded")
    try:
        size = 0 if corrected_output is None else len(dumps(corrected_output).encode("utf-8"))
    except (TypeError, ValueError):
        raise ValueError(f"the corrected output {short_repr(corrected_output)} is not JSON (a NaN, an infinity or an "
                         "object JSON has no form for); refused, nothing recorded") from None
    if size > MAX_CORRECTION_BYTES:
        raise ValueError(f"the corrected output is {size} bytes of JSON, over {MAX_CORRECTION_BYTES}: no correction is "
                         "that large (a detector's 1,000 boxes are ~60 KB); refused, nothing recorded")


def check_correction(task: TaskKind | str | None, kind: VerdictKind, corrected_output: Any) -> None:
    """``ValueError`` unless a correction is an answer of the item's kind ``task``
    (:meth:`Task.check_answer`); ``task`` None: an answer is checked by the kind whose shape it
    has (``tasks.base.check_answer_of_any_kind``: a list holding a dict with a ``"box"`` is a
    detector's). A malformed answer recorded would be compared, counted and exported by every
    reader of verdicts (the monitor, the store's QC reads, the label export)."""
    if kind is not VerdictKind.CORRECT or corrected_output is None:
        return
    rule = tasks.lookup(task) if task else None  # task None: the kind whose shape it has
    if rule is None:
        problem = check_answer_of_any_kind(corrected_output)
    else:
        problem = rule.check_answer(corrected_output)
        problem = None if problem is None else f"not a {rule.kind.value} answer: {problem}"
    if problem is not None:
        raise ValueError(f"the corrected output is {problem}; refused, nothing recorded")


def normalise_answer(task: TaskKind | str | None, answer: Any, details: Any) -> Any:
    """An auditor's correction or an admin's gold answer in the one form every reader compares
    (:meth:`Task.normalise_answer`, by the item's prediction ``details``: a detector's class names
    become the card's class indices, which the model's answers use). ``ValueError`` -- "refused,
    nothing recorded" -- for one that cannot be (a class name that is none of the card's). An
    unknown kind or no answer: unchanged."""
    if answer is None or not task:
        return answer
    try:
        rule = tasks.lookup(task)
    except Exception:  # noqa: BLE001 - a kind this release does not know: stored as given
        return answer
    try:
        return rule.normalise_answer(answer, details)
    except ValueError as e:
        raise ValueError(f"the answer is not one of the model's: {e}; refused, nothing recorded") from None


def decision_key(item: StoredItem) -> bytes:
    """The key of a human ``Decision``: the episode key when the item belongs to an RL episode,
    else the request id — the rule of ``InferenceRequest.key`` and of the model's own decisions
    (serving/consumer.py), so a human override lands on its episode's partition, in order with
    the episode's other decisions."""
    return (item.episode_key or item.request_id).encode("utf-8")


def verdict_key(item: StoredItem) -> bytes:
    """The key of a ``Verdict``: always the request id, like the ``predictions`` and ``audit``
    records it judges, so every review of one answer stays in order on one partition. Verdict
    readers (labels, the RL dataset) read the whole topic and join by request id."""
    return item.request_id.encode("utf-8")


def outbox_bytes_bound(item: AuditItem) -> int:
    """The most bytes (key, value and framing, as :func:`~auditstream.kafka.limits.record_bytes`
    counts them) of any record a verdict on ``item`` can put on the outbox (:func:`outbox_records`):
    the ``Verdict`` carries the model's output and a correction of up to :data:`MAX_CORRECTION_BYTES`,
    the ``Decision`` one of the two; the verdict's own fields at their longest. The output is
    encoded once; the records are encoded around a ``null`` in its place."""
    p = item.prediction
    output, null = len(dumps(p.output)), len("null")  # canonical JSON is ASCII, as long as the records' encoding
    verdict = Verdict(_WORST_VERDICT_ID, p.request_id, p.model, p.model_version, _WORST_AUDITOR, VerdictKind.CORRECT,
                      _WORST_TIME_S, None, None, p.route, p.qc_inclusion_prob, is_gold=False)  # fmt: skip
    decision = Decision(p.request_id, p.model, p.model_version, None, "human", _WORST_TIME_S, p.episode_key, p.step,
                        {"verdict_id": _WORST_VERDICT_ID, "verdict": VerdictKind.CORRECT.value, "auditor": _WORST_AUDITOR})
    verdict_bytes = record_bytes(p.request_id.encode("utf-8"), verdict.to_bytes()) - 2 * null + output + MAX_CORRECTION_BYTES
    decision_bytes = (record_bytes((p.episode_key or p.request_id).encode("utf-8"), decision.to_bytes()) - null
                      + max(output, MAX_CORRECTION_BYTES))
    return max(verdict_bytes, decision_bytes)


def outbox_records(item: StoredItem, verdict: VerdictRecord, first_decision: bool) -> list[tuple[str, bytes, bytes]]:
    """(topic, key, value) records a verdict publishes: always the :class:`Verdict` (= a label,
    skips included so the topic is the full history); for the first decisive verdict on a
    deferred (HUMAN) item also the human's answer as a ``Decision(source="human")``. Gold items
    are not requests anyone waits for, so they never make a decision. Keys: :func:`verdict_key`
    and :func:`decision_key`."""
    key = verdict_key(item)
    wire_verdict = Verdict(
        verdict_id=verdict.verdict_id,
        request_id=item.request_id,
        model=item.model,
        model_version=item.model_version,
        auditor=verdict.auditor,
        kind=verdict.kind,
        decided_at_s=verdict.decided_at_s,
        model_output=item.output,
        corrected_output=verdict.corrected_output,
        item_route=item.route,
        inclusion_prob=item.qc_inclusion_prob,
        is_gold=item.is_gold,
    )
    out = [(topics.VERDICTS, key, wire_verdict.to_bytes())]
    if first_decision and item.route is Route.HUMAN and not item.is_gold and verdict.kind is not VerdictKind.SKIP:
        decision = Decision(
            request_id=item.request_id,
            model=item.model,
            model_version=item.model_version,
            output=human_label(verdict.kind, item.output, verdict.corrected_output),
            source="human",
            created_at_s=verdict.decided_at_s,
            episode_key=item.episode_key,
            step=item.step,
            details={"verdict_id": verdict.verdict_id, "verdict": verdict.kind.value, "auditor": verdict.auditor},
        )
        out.append((topics.DECISIONS, decision_key(item), decision.to_bytes()))
    return out
