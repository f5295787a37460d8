"""``auditstream monitor``: the process between the stream and the auditors.

It does four things (docs/audit-store.md, "Monitor process"):

1. **Consumes** the ``audit`` and ``predictions`` topics in the consumer group
   ``<prefix>-monitor`` (``auditstream-monitor`` by default) with the shared at-least-once loop (:mod:`auditstream.stream`):
   :func:`ingest_batch` stores audit items (idempotent, so a redelivered batch changes nothing)
   and hands every prediction to the statistics hook; undecodable records, and items a verdict on
   which could not be published (too large for the output topics), go to the dead-letter topic
   with their original bytes. Offsets are committed only after the store transaction and every
   dead letter were acknowledged.
2. **Publishes the outbox** (:func:`publish_outbox`, on its own thread and producer): every
   verdict to ``verdicts`` and, for deferred items, the human's answer to ``decisions``, exactly
   once: each round of rows is recorded in the store with the topics' end offsets before it is
   sent, and marked published after the broker acknowledged it; a round a crash left open is
   resolved from the topics before its rows go out again (store/outbox.py). A row over its
   topic's limit is dead-lettered in its place, so it cannot stop every later round.
3. **Keeps statistics** (:class:`StatsHooks`): predictions and published verdicts feed
   ``monitor.tracker.QCTracker``; every ``stats_interval_s`` its snapshots are saved to the store's
   QC history (for the dashboard) and, with the store's read models, go to
   ``monitor.metrics.MonitorMetrics`` (served on ``settings.metrics_port``) -- the metrics only
   for the versions that answer (live or canary, or a prediction or QC sample in the last
   ``version_idle_s``), so a retired version's alerts resolve and a quiet live one's do not.
4. **Keeps shadow answers** (store/shadow.py): predictions flagged ``shadow`` (a candidate
   version on the live requests) are stored for the paired promotion gate (monitor/promotion.py);
   those whose request was never audited are pruned after ``shadow_retention_s``, while each
   one's comparison with the live version's answer (one small row per request) is kept.

Steps 2 and 3 run only in the **leader** (``store.leadership``, store/leader.py) when
several monitors share a store; the others keep ingesting. On taking the lead a process seeds
its tracker from the store's QC samples in stream order (``store.qc_stream``: decided ones with
their verdict, open ones as places still waiting), so the audited error estimate, its bound and
the CUSUM continue across restarts and hand-overs; before every publishing round it reads on from
there (``StatsHooks.catch_up``), so every monitor's samples have their place before their
verdicts are published (docs/qc-statistics.md, "The order of the audits"); coverage and the
confidence drift window are rebuilt from the predictions that arrive afterwards. A process that
loses the lead withdraws its QC metrics and queue figures (``StatsHooks.step_down``): a follower
exports none (its unlabelled pending-outbox and throughput gauges read 0), so no stale value keeps
an alert firing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence, TypeVar

from auditstream import topics
from auditstream.cli_args import COUNT, POSITIVE, check_fields
from auditstream.control import ControlState, ControlView
from auditstream.dead_letters import dead_letter_output
from auditstream.kafka.limits import MAX_PRODUCE_BYTES, record_bytes
from auditstream.errors import AuditstreamError, BadArguments, DecodeError, ModelNotFound, ModelRefused, SendBlocked
from auditstream.kafka import Producer, Record, TopicLog
from auditstream.settings import Settings
from auditstream.stream import Output
from auditstream.wire import MAX_RECORD_BYTES, AuditItem, DeadLetter, Prediction, Reason, Verdict
from monitor.control import plan_control
from store import AuditStore
from store.backend import record_error
from store.leader import Leadership, default_owner
from store.shadow import ShadowAnswers
from store.records import OutboxRow, OutputTooLarge, check_audit_item

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger(__name__)


def group_id(settings: Settings) -> str:
    """``<prefix>-monitor``: one group per topic prefix, so two deployments sharing a cluster do
    not split each other's partitions (the default prefix keeps the old ``auditstream-monitor``)."""
    return f"{settings.topic_prefix}-monitor"


@dataclass(frozen=True)
class MonitorArgs:
    """Options of ``auditstream monitor`` (settings such as the broker and store come from the env)."""

    group_id: str = field(default="", metadata={
        "help": "consumer group of the monitor processes (default: <AUDITSTREAM_TOPIC_PREFIX>-monitor)"})
    outbox_interval_s: float = field(default=0.5, metadata={"check": POSITIVE,
                                                            "help": "seconds between outbox publishing rounds"})
    outbox_batch: int = field(default=500, metadata={"check": COUNT, "help": "most outbox rows published per round"})
    stats_interval_s: float = field(default=5.0, metadata={"check": POSITIVE,
                                                           "help": "seconds between statistics/metrics updates"})
    flush_timeout_s: float = field(default=30.0, metadata={
        "check": POSITIVE, "help": "longest wait for the broker to acknowledge; also the outbox producer's delivery timeout, so a "
                "round a crash left open is resolved at most this + 5 s after it started"})  # fmt: skip
    shadow_retention_s: float = field(default=3600.0, metadata={
        "check": POSITIVE, "help": "how long a candidate's shadow answer waits for its request's audit item before it is pruned"})
    version_idle_s: float = field(default=600.0, metadata={
        "check": POSITIVE, "help": "a model version that is not live or canary has QC metrics until this long after the last "
                "of its predictions or QC samples the monitor saw, so a retired or rolled-back version's alerts resolve "
                "(a live or canary version keeps them)"})  # fmt: skip
    leader_lease_s: float = field(default=45.0, metadata={
        "check": POSITIVE, "help": "SQLite: how long the leader's lease lasts without renewal (a crashed leader is replaced after "
                "this); must exceed flush_timeout_s. PostgreSQL uses a session lock and ignores it"})  # fmt: skip

    def __post_init__(self) -> None:
        check_fields(self)  # finite and > 0 (an infinite interval would never publish), one line naming the option
        if self.leader_lease_s <= self.flush_timeout_s + self.outbox_interval_s:
            raise ValueError(f"leader_lease_s={self.leader_lease_s} must exceed flush_timeout_s + outbox_interval_s "
                             f"= {self.flush_timeout_s + self.outbox_interval_s}: a publishing round must fit in a lease")

    def check_settings(self, settings: Settings) -> None:
        """What these options must respect in ``settings`` (read from the environment after the
        options, so not in ``__post_init__``): checked before any connection, one line naming the option.
        The outbox producer's delivery timeout is ``flush_timeout_s``, and a delivery timeout must
        stay under the consumers' ``max_poll_interval_ms`` (``Settings``)."""
        if self.flush_timeout_s * 1000 >= settings.max_poll_interval_ms:
            raise BadArguments(f"--flush-timeout-s {self.flush_timeout_s:g} must be under AUDITSTREAM_MAX_POLL_INTERVAL_MS "
                               f"= {settings.max_poll_interval_ms} ms ({settings.max_poll_interval_ms / 1000:g} s): it is "
                               "also the outbox producer's delivery timeout; lower it, or raise that setting")


# --------------------------------------------------------------------------------------------
# the pure parts


def _dead_letter(settings: Settings, record: Record, reason: str, detail: str, limit: int) -> Output:
    return dead_letter_output(record, reason, detail, settings.topic(topics.DEAD_LETTER), record.timestamp_ms / 1000.0,
                              limit)


def ingest_batch(store: AuditStore, settings: Settings, records: Sequence[Record], now_s: float,
                 on_prediction: Callable[[Prediction], None] | None = None,
                 shadow: ShadowAnswers | None = None, dead_letter_limit: int = MAX_PRODUCE_BYTES,
                 output_limit: int = MAX_PRODUCE_BYTES,
                 on_dead_letter: Callable[[str], None] | None = None) -> list[list[Output]]:  # fmt: skip
    """One result per record: ``[]`` when stored/observed, ``[dead letter]`` for a bad record
    (its reason also given to ``on_dead_letter``: the monitor's dead-letter counter).
    Shadow predictions go to ``shadow``. ``dead_letter_limit``: the largest record the
    dead-letter topic takes (a letter over it says where the original is:
    :mod:`auditstream.dead_letters`); ``output_limit``: the largest the ``verdicts`` and
    ``decisions`` topics take -- an item a verdict on which could be larger is dead-lettered
    (``too_large``) now, as its verdict could never be published.

    Shadow answers, then audit items, are each stored in one transaction. If one fails because
    of a record (:func:`store.backend.record_error`), each record is tried alone: the ones the
    store refuses for their content are dead-lettered with their bytes, the rest stored. A
    failure that is about the store (a dead connection, a lock, the server down) is retried with
    back-off and then raised: nothing of the batch is dead-lettered or committed, and the
    monitor stops loudly; Kafka delivers the batch again (:func:`_write_each_alone`)."""
    audit_topic, predictions_topic = settings.topic(topics.AUDIT), settings.topic(topics.PREDICTIONS)
    results: list[list[Output]] = [[] for _ in records]
    items: list[tuple[int, AuditItem]] = []
    shadows: list[tuple[int, Prediction]] = []

    def dead_letter(i: int, reason: str, detail: str) -> None:
        results[i] = [_dead_letter(settings, records[i], reason, detail, dead_letter_limit)]
        if on_dead_letter is not None:
            on_dead_letter(reason)

    for i, record in enumerate(records):
        try:
            record.check_readable()
            if record.topic == audit_topic:
                item = AuditItem.from_bytes(record.value)  # type: ignore[arg-type]
                check_audit_item(item, output_limit)
                items.append((i, item))
            elif record.topic == predictions_topic:
                prediction = Prediction.from_bytes(record.value, list(record.headers))  # type: ignore[arg-type]
                if on_prediction is not None:
                    on_prediction(prediction)
                if prediction.shadow and shadow is not None:
                    shadows.append((i, prediction))
            else:
                raise DecodeError(Reason.BAD_SCHEMA.value, f"the monitor does not read topic {record.topic!r}")
        except DecodeError as e:
            dead_letter(i, e.code, e.detail)
        except OutputTooLarge as e:
            dead_letter(i, Reason.TOO_LARGE.value, str(e))
        except ValueError as e:  # decodes, but is not an auditable item
            dead_letter(i, Reason.BAD_INPUT.value, str(e))
        except Exception as e:  # noqa: BLE001 - this record's own failure (e.g. in the QC tracker): it alone
            log.warning("record %s: %r", record.where, e)
            dead_letter(i, Reason.PROCESSING_FAILED.value, repr(e)[:500])

    def refused(i: int, e: Exception) -> None:
        log.warning("%s refused by the store: %r", records[i].where, e)
        dead_letter(i, Reason.PROCESSING_FAILED.value, repr(e)[:500])

    def write_shadows(answers: list[Prediction]) -> list[None]:
        shadow.ingest(answers, now_s)  # type: ignore[union-attr] - only collected when given
        return [None] * len(answers)

    if shadows:
        _write_each_alone(store, shadows, write_shadows, refused)
    stored = _write_each_alone(store, items, lambda batch: store.ingest_many(batch, now_s), refused) if items else []
    for (i, item), is_new in stored:
        # An id already stored: the same request redelivered (nothing to do), or another request
        # that reused the id -- another input or time, or another model at the same version --
        # whose audit would otherwise vanish without a trace.
        if not is_new and store.stored_differently(item):
            p = item.prediction
            dead_letter(i, Reason.DUPLICATE_REQUEST_ID.value,
                        f"request id {p.request_id!r} was already audited at model version {p.model_version!r} for "
                        f"another model than {p.model!r} or with another input or request time; the store keeps the "
                        "first (its key is request id and model version): give every request its own id, across "
                        "the models that share a store")
    return results


V = TypeVar("V")


# Waits before each new try of a store write that failed because of the store, not the record
# (store.backend.record_error): a server restart, a failover, a writer holding SQLite's lock past
# its busy timeout. About 30 s of waiting in all, well inside the consumer's max_poll_interval
# (300 s by default) even with SQLite's 30 s busy timeout on every try; after the last, the
# error is raised and stops the monitor, nothing committed (the batch comes again after a restart).
STORE_RETRY_DELAYS_S = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0)


def _retrying(write: Callable[[], Any]) -> Any:
    """``write()``, tried again after each of :data:`STORE_RETRY_DELAYS_S` while it fails because
    of the store (a record's own error is raised at once). The pool has already discarded a broken
    connection and its idle fellows (store/backend.py), so the next try gets a fresh one."""
    for attempt, delay in enumerate((*STORE_RETRY_DELAYS_S, None), 1):
        try:
            return write()
        except Exception as e:  # noqa: BLE001 - sorted just below
            if record_error(e) or delay is None:
                raise
            log.warning("audit store write failed (%r), not because of a record: try %d of %d again in %.1f s",
                        e, attempt + 1, len(STORE_RETRY_DELAYS_S) + 1, delay)
            _sleep(delay)


_sleep = time.sleep  # tests replace it


def _write_each_alone(store: AuditStore, entries: list[tuple[int, V]], write: Callable[[list[V]], Sequence[Any]],
                      refused: Callable[[int, Exception], None]) -> list[tuple[tuple[int, V], Any]]:  # fmt: skip
    """``write`` (one transaction, one result per value) of every entry's value; if that fails
    because of a record (:func:`store.backend.record_error`: its content), of each alone, passing
    the ones the store refuses for their content to ``refused``. Returns each written entry with
    its result.

    A failure that is about the store -- a dead connection, a lock held past the busy timeout, the
    server down -- is never blamed on a record: the write is tried again (:func:`_retrying`), and
    if the store stays unusable the error is raised, before anything is passed to ``refused``, so
    nothing of the batch is dead-lettered or committed and Kafka delivers it again. (It used to
    dead-letter every item that failed alone unless a trivial write failed as well: after a
    PostgreSQL restart each retry met another dead pooled connection, the trivial write a fresh
    one, and every good item of the batch became a ``processing_failed`` dead letter.)"""
    values = [value for _, value in entries]
    try:
        return list(zip(entries, _retrying(lambda: write(values))))
    except Exception as batch_error:  # noqa: BLE001 - a record's? each one alone below
        if not record_error(batch_error):
            raise
    written, failed = [], []
    for i, value in entries:
        try:
            written.append(((i, value), _retrying(lambda: write([value]))[0]))  # noqa: B023 - called at once
        except Exception as e:  # noqa: BLE001
            if not record_error(e):
                raise  # the store went away meanwhile: nothing is dead-lettered
            failed.append((i, e))
    for i, e in failed:
        refused(i, e)
    return written


# How long after its claim a round may still begin sending (part of its fence, store/outbox.py):
# a process that stalled longer between claiming and sending sends no more of that round.
SEND_WINDOW_S = 5.0
# The longest one send of the outbox producer may block (buffer full, topic metadata unknown)
# before it raises SendBlocked, the record not taken (run_monitor builds the producer so; the
# kafka-python default was 60 s). A send begins only while it can end inside the send window.
OUTBOX_MAX_BLOCK_S = 1.0


def publish_outbox(store: AuditStore, producer: Producer, settings: Settings, now_s: float, limit: int = 500,
                   flush_timeout_s: float = 30.0, on_verdict: Callable[[Verdict], None] | None = None, *,
                   topic_log: TopicLog, owner: str = "", topic_limits: Mapping[str, int] | None = None,
                   on_dead_letter: Callable[[str], None] | None = None) -> int:  # fmt: skip
    """One publishing round, exactly-once (the protocol: store/outbox.py): first resolve every
    round a crash left open whose fence has passed (read the topics from its positions, mark
    what is there, put the rest back), then take the output partitions' end offsets, claim up to
    ``limit`` pending rows into a round that records them, send, wait for every
    acknowledgement, mark. Returns how many rows were published (sent, or found already sent).

    ``topic_log`` reads the output topics; ``owner`` names this publisher in the round; the producer's
    delivery timeout must not exceed ``flush_timeout_s`` (run_monitor builds it so), since a
    round's fence is its start + :data:`SEND_WINDOW_S` + ``flush_timeout_s``.
    :class:`DeliveryFailed` leaves the round open, to be resolved after its fence.

    ``topic_limits``: the largest record each topic takes (full name; absent: MAX_PRODUCE_BYTES).
    A row over its topic's limit would be refused on every round, first of all, for good: it is
    dead-lettered instead (:func:`_outbox_dead_letter`, ``too_large``) and marked published with
    the round; its verdict stays in the store."""
    entered = time.monotonic()
    names = [settings.topic(topics.VERDICTS), settings.topic(topics.DECISIONS)]
    published = _resolve_open_rounds(store, topic_log, settings, names, now_s, flush_timeout_s, on_verdict)
    if not store.pending_outbox(1):
        return published
    positions = topic_log.end_offsets(names)  # before the claim, so before any send of the round
    # The fence counts from the claim's start, and so does the send window: the fence is written in
    # the claim's own transaction, which may first wait for SQLite's writer lock (busy timeout) or a
    # free pooled connection. A window counted from the claim's return was pushed past the fence by
    # that wait, and a record sent late in it could still be delivered after the fence, when a
    # successor already resolved the round from the topics and put it back to pending (sent twice).
    # Now a slow claim eats the window instead: its rows go back to pending, unsent.
    started = time.monotonic()
    claim_s = now_s + (started - entered)  # the fence counts from the claim, not from the call
    claimed = store.start_outbox_round(limit, claim_s, owner or "publisher", claim_s + SEND_WINDOW_S + flush_timeout_s,
                                       positions)  # fmt: skip
    if claimed is None:
        return published  # all pending rows wait behind a key in an open round
    sent: list[OutboxRow] = []
    limits = topic_limits or {}
    dead_letters = settings.topic(topics.DEAD_LETTER)
    for row in claimed.rows:
        # a send may block up to OUTBOX_MAX_BLOCK_S: one begins only while it would end in the window
        if time.monotonic() - started > SEND_WINDOW_S - OUTBOX_MAX_BLOCK_S:
            log.warning("outbox round %d: %d of %d rows sent within %.0f s of its claim; the rest go back to pending",
                         claimed.id, len(sent), len(claimed.rows), SEND_WINDOW_S)
            break
        topic = settings.topic(row.topic)
        size, cap = record_bytes(row.key, row.value), limits.get(topic, MAX_PRODUCE_BYTES)
        try:
            if size <= cap:
                producer.send(topic, row.key, row.value)
            else:
                letter = _outbox_dead_letter(row, topic, size, cap, dead_letters,
                                             limits.get(dead_letters, MAX_PRODUCE_BYTES), now_s)  # fmt: skip
                log.error("outbox row %d (%s, key %r) is %d bytes, over the %d %s takes: dead-lettered (too_large) "
                          "instead; its verdict stays in the audit store", row.id, row.topic, row.key[:80], size, cap, topic)
                producer.send(letter.topic, letter.key, letter.value)
                if on_dead_letter is not None:
                    on_dead_letter(Reason.TOO_LARGE.value)
        except SendBlocked as e:  # not taken: it and the rest go back to pending
            log.warning("outbox round %d: %s; %d of %d rows sent, the rest go back to pending", claimed.id, e,
                        len(sent), len(claimed.rows))
            break
        sent.append(row)
    if sent:
        producer.flush(flush_timeout_s)  # raises DeliveryFailed unless every send was acknowledged
    store.finish_outbox_round(claimed.id, [row.id for row in sent], now_s)
    _observe(sent, on_verdict)
    return published + len(sent)


def _resolve_open_rounds(store: AuditStore, topic_log: TopicLog, settings: Settings, names: list[str], now_s: float,
                         timeout_s: float, on_verdict: Callable[[Verdict], None] | None) -> int:  # fmt: skip
    """Close every open round past its fence: mark published the rows whose record (topic, key,
    bytes) is on the topics after the round's positions, put the others back to pending."""
    found_total = 0
    for open_round in store.open_outbox_rounds():
        if now_s < open_round.fence_s:
            continue  # it may still be in flight (a stalled or zombie publisher): its keys wait
        written = {(r.topic, r.key, r.value) for r in topic_log.read_from(open_round.positions, names, timeout_s)}
        found = [row for row in open_round.rows if (settings.topic(row.topic), row.key, row.value) in written]
        store.finish_outbox_round(open_round.id, [row.id for row in found], now_s)
        log.warning("outbox round %d of %s was left open: %d of its %d rows were already on the topics (marked "
                     "published), the rest go out again", open_round.id, open_round.owner, len(found), len(open_round.rows))  # fmt: skip
        _observe(found, on_verdict)
        found_total += len(found)
    return found_total


def _outbox_dead_letter(row: OutboxRow, topic: str, size: int, cap: int, dead_letters: str, dead_letter_limit: int,
                        now_s: float) -> Output:  # fmt: skip
    """The dead letter of an outbox row ``topic`` cannot take: ``source`` names that topic,
    partition 0 and the row's id as the offset (docs/wire-format.md); it carries the row's record
    when that fits the dead-letter topic, else its size and SHA-256 (the row stays in the store)."""
    detail = (f"outbox row {row.id}: a {row.topic} record of {size} bytes, over the {cap} {topic[:249]} takes; not sent. "
              "The verdict stays in the audit store (auditstream labels export reads it)")
    if len(row.value) * 4 // 3 + len(row.key) * 3 + 8192 < dead_letter_limit:  # else encoding it is wasted work
        letter = DeadLetter(Reason.TOO_LARGE.value, detail, topic, 0, row.id, row.value, row.key, (), now_s).to_bytes()
        if record_bytes(row.key, letter) <= dead_letter_limit:
            return Output(dead_letters, row.key, letter)
    small = DeadLetter(Reason.TOO_LARGE.value, detail + "; the record is not carried (over the dead-letter topic's "
                       f"limit of {dead_letter_limit} bytes): it stays in the store's outbox table", topic, 0, row.id,
                       None, None, (), now_s, omitted_bytes=len(row.key) + len(row.value),
                       value_sha256=hashlib.sha256(row.value).hexdigest())  # fmt: skip
    return Output(dead_letters, row.key, small.to_bytes())


def _observe(rows: Sequence[OutboxRow], on_verdict: Callable[[Verdict], None] | None) -> None:
    if on_verdict is not None:
        for row in rows:
            if row.topic == topics.VERDICTS:  # a row stored before the ingest checked sizes may be over 8 MiB
                on_verdict(Verdict.from_bytes(row.value, max(MAX_RECORD_BYTES, len(row.value))))


# --------------------------------------------------------------------------------------------
# statistics: the integration points with monitor.tracker and monitor.metrics


class StatsHooks:
    """The integration points with the statistics: ``monitor.tracker.QCTracker`` sees every
    prediction and every published verdict; each tick its snapshots go to
    ``store.qc_history.QCHistory`` (in the store, for the dashboard) and, with the store's read
    models, to ``monitor.metrics.MonitorMetrics`` (served on ``settings.metrics_port``)."""

    def __init__(self, settings: Settings, store: AuditStore, control_view: "ControlView | None" = None,
                 metrics_registry: CollectorRegistry | None = None, version_idle_s: float = 600.0) -> None:  # fmt: skip
        """``metrics_registry``: where the metrics are registered (default: the process's, which
        ``settings.metrics_port`` serves); tests give each instance its own. ``version_idle_s``:
        how long after the last prediction or QC sample of a version it keeps its QC metrics
        (:meth:`tick`)."""
        from auditstream.registry import ModelRegistry
        from monitor.metrics import MonitorMetrics
        from monitor.tracker import QCConfig, QCTracker, audit_weight_floor
        from store.qc_history import QCHistory

        self._lock = threading.Lock()  # the tracker is fed by the loop thread, read by the outbox thread
        registry = self._registry = ModelRegistry.from_settings(settings)

        refused: set[tuple[str, str]] = set()

        def cards(name: str, version: str):  # noqa: ANN202 - ModelCard | None
            try:
                return registry.card(name, version)
            except ModelNotFound:
                return None
            except ModelRefused as e:
                # A card edited by hand, unreadable, or written by a release whose checks were
                # looser: its version is tracked as one without a card, never a reason to stop the
                # monitor or dead-letter its predictions (it would, at every restart).
                if (name, version) not in refused:
                    refused.add((name, version))
                    log.error("%s; its version is tracked without a card (no budget, threshold or drift "
                              "reference) until the card is fixed", e)
                return None

        config = QCConfig(min_inclusion_prob=audit_weight_floor(settings))
        # The tracker learns each model's threshold override from the control view (once it has read
        # what the topic held): a changed effective threshold restarts that version's statistics.
        controls = ((lambda: control_view.states() if control_view.wait_caught_up(0) else None)
                    if control_view is not None else None)
        self._new_tracker = lambda: QCTracker(cards, config, salt=settings.qc_salt, controls=controls)
        self.tracker = self._new_tracker()
        self.history = QCHistory(store)
        # the limit triage applies, so the over-capacity gauge (and its alert) means what triage does; 0: none
        self.metrics = MonitorMetrics(metrics_registry, max_human_queue_depth=settings.max_human_queue_depth or None)
        self.server = self.metrics.serve(settings.metrics_port) if settings.metrics_port else None
        self.control_view, self.auto_tighten = control_view, settings.auto_tighten
        # (model, version) -> wall time this process last saw a prediction or QC sample of it
        self.version_idle_s = version_idle_s
        self._answered: dict[tuple[str, str], float] = {}

    def dead_lettered(self, source: str) -> Callable[[str], None]:
        """What counts a dead letter by its reason: ``source`` "ingest" (a record the monitor read)
        or "outbox" (a verdict or decision no topic takes)."""
        return lambda reason: self.metrics.dead_letters.labels(reason, source).inc()

    def seed_from_store(self, store: AuditStore) -> int:
        """Start a fresh tracker from the store's QC samples in stream order; returns how
        many audits it counted. Called when this process takes the lead, so the statistics are
        continuous across restarts and hand-overs. Prediction counts start again from zero."""
        started = time.monotonic()
        tracker = self._new_tracker()
        position = store.qc_position()  # before the read: samples final by then are all in it
        counted = tracker.seed(store.qc_stream(upto=position))
        tracker.store_position = position
        with self._lock:
            self.tracker = tracker
        log.info("QC statistics seeded from the store: %d audits in %.1f s", counted, time.monotonic() - started)
        return counted

    def catch_up(self, store: AuditStore) -> int:
        """Place the QC samples ingested since the last read (by any monitor: with several, this
        one's predictions are only its partitions'), so that their verdicts have a place in the
        stream order when they are published; returns how many audits that let count. Reads
        from the last position to the store's current one (``store.qc_position``): a sample
        whose ingest has not committed yet is read next time, never skipped."""
        with self._lock:
            tracker = self.tracker
            after = tracker.store_position
        upto = store.qc_position()
        samples = list(store.qc_stream(after=after, upto=upto))
        now_s = time.time()
        with self._lock:
            for s in samples:  # any monitor's: a version answers even where this one reads no partition of it
                self._answered[(s.model, s.model_version)] = now_s
            if tracker is not self.tracker:
                return 0
            tracker.store_position = upto
            return tracker.seed(samples)

    def observe_prediction(self, prediction: Prediction) -> None:
        with self._lock:
            self._answered[(prediction.model, prediction.model_version)] = time.time()
            self.tracker.observe_prediction(prediction)

    def observe_verdict(self, verdict: Verdict) -> None:
        with self._lock:
            self.tracker.observe_verdict(verdict)

    def tick(self, store: AuditStore, now_s: float) -> list[ControlState]:
        """Save and export the statistics; returns the control states to publish.

        The metrics get the versions that answer: the live and canary ones (:meth:`serving`) and
        those with a prediction or QC sample seen in the last ``version_idle_s`` (:meth:`answering`). The tracker keeps every version it has
        seen (the store re-seeds them after a restart), so exporting them all kept a retired or
        rolled-back version's ``qc_over_budget`` or CUSUM alarm at 1 for ever: its alerts never
        resolved. Nothing is planned until the control view has read the topic back, so a restarted
        monitor never publishes a state that forgets an earlier threshold override.
        """
        stats = store.store_stats(now_s)
        with self._lock:
            snapshots = self.tracker.snapshot()
        self.history.save(snapshots, now_s)
        answering = self.answering(now_s) | self.serving({s.model for s in snapshots})
        current = [s for s in snapshots if (s.model, s.version) in answering]
        self.metrics.update(current, stats)
        if self.control_view is None or not self.control_view.wait_caught_up(0):
            return []
        # Only versions that answer are tightened: an override for a retired one changes nothing
        # and takes one of the record's MAX_THRESHOLD_OVERRIDES places.
        return plan_control(current, stats, self.control_view.states(), self.auto_tighten, now_s)

    def answering(self, now_s: float) -> set[tuple[str, str]]:
        """The (model, version) pairs with a prediction or QC sample seen since ``now_s -
        version_idle_s``: live, canary and shadow versions while traffic flows; the others are
        forgotten."""
        with self._lock:
            for key in [k for k, t in self._answered.items() if t < now_s - self.version_idle_s]:
                del self._answered[key]
            return set(self._answered)

    def serving(self, models: set[str]) -> set[tuple[str, str]]:
        """The versions of ``models`` that answer their requests whether or not traffic flows now:
        each one's live version (the rollout record on the control topic, and the registry's
        ``LIVE`` pointer) and a canary with a share. (Without either, the idle rule alone.) A quiet night must not withdraw a live
        version's series -- its over-budget alert would resolve and fire again at every gap."""
        found: set[tuple[str, str]] = set()
        rollouts = self.control_view.rollouts() if self.control_view is not None else {}
        for model in models:
            rollout = rollouts.get(model)
            if rollout is not None:
                found.add((model, rollout.live_version))
                if rollout.canary_version and rollout.canary_share > 0:
                    found.add((model, rollout.canary_version))
            try:
                live = self._registry.live_version(model)
            except (AuditstreamError, OSError):  # an unreadable pointer: the idle rule alone
                live = None
            if live is not None:
                found.add((model, live))
        return found

    def step_down(self) -> None:
        """This process lost the lead: its metrics show what a follower's do (no QC series, no
        queue figures), never the last values it computed as leader."""
        self.metrics.withdraw()

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()


def publish_control(producer: Producer, settings: Settings, states: Sequence[ControlState], timeout_s: float) -> None:
    """Send control states (compacted topic, key = model) and wait until every one is acknowledged."""
    for state in states:
        producer.send(settings.topic(topics.CONTROL), state.key, state.to_bytes())
    producer.flush(timeout_s)


# --------------------------------------------------------------------------------------------
# the process


class OutboxPublisher(threading.Thread):
    """Publishes the outbox every ``outbox_interval_s`` and ticks the statistics — while this
    process leads (``leadership``; None: alone, always leads). Taking the lead seeds the
    statistics from the store first, so nothing published earlier is missing from them."""

    def __init__(self, store: AuditStore, producer: Producer, topic_log: TopicLog, settings: Settings, args: MonitorArgs,
                 stats: StatsHooks | None = None, leadership: Leadership | None = None,
                 topic_limits: Mapping[str, int] | None = None) -> None:  # fmt: skip
        """``producer``: its delivery timeout must not exceed ``args.flush_timeout_s`` (see
        :func:`publish_outbox`); ``topic_log`` reads the output topics back after a crash;
        ``topic_limits``: the largest record each output topic and the dead-letter topic take."""
        super().__init__(name="outbox-publisher", daemon=True)
        self.store, self.producer, self.settings, self.args, self.stats = store, producer, settings, args, stats
        self.topic_log, self.topic_limits = topic_log, dict(topic_limits or {})
        self.owner = leadership.owner if leadership is not None else default_owner()
        self.leadership, self.leading = leadership, False
        self.shadow: ShadowAnswers | None = None  # pruned each statistics tick
        self.published = 0
        self.error: BaseException | None = None
        self.on_error: Callable[[], None] | None = None  # the monitor stops its loop: fail loudly
        self._stop_event = threading.Event()

    def _lead(self) -> bool:
        leading = self.leadership is None or self.leadership.hold(time.time())
        if leading and not self.leading and self.stats is not None:
            self.stats.seed_from_store(self.store)  # before publishing: the seed holds every recorded verdict
        if self.leading and not leading and self.stats is not None:
            # lost (a broken lock connection, a stalled SQLite lease): the new leader's figures move now
            log.warning("this monitor lost the lead; its QC metrics are withdrawn")
            self.stats.step_down()
        self.leading = leading
        return leading

    def run(self) -> None:
        next_tick = 0.0
        try:
            while True:
                stopping = self._stop_event.is_set()
                if stopping and not self.leading:
                    return  # a follower that is shutting down does not take the lead on its way out
                if self._lead():
                    on_verdict = self.stats.observe_verdict if self.stats else None
                    # Round after round while a backlog lasts -- each one only while this process
                    # still leads: the lead is checked (the SQLite lease renewed) before every round,
                    # not once per pass. A leader draining a large backlog ran past its lease without
                    # renewing it, and a second monitor took the lead while this one still published.
                    while True:
                        if self.stats is not None:  # the samples first: then their verdicts have a place
                            self.stats.catch_up(self.store)
                        n = publish_outbox(self.store, self.producer, self.settings, time.time(), self.args.outbox_batch,
                                           self.args.flush_timeout_s, on_verdict, topic_log=self.topic_log,
                                           owner=self.owner, topic_limits=self.topic_limits,
                                           on_dead_letter=self.stats.dead_lettered("outbox") if self.stats else None)  # fmt: skip
                        self.published += n
                        if not n or not self._lead():
                            break
                    if self.leading and self.stats is not None and time.monotonic() >= next_tick:
                        states = self.stats.tick(self.store, time.time())
                        if states:
                            publish_control(self.producer, self.settings, states, self.args.flush_timeout_s)
                        if self.shadow is not None:
                            self.shadow.prune(time.time(), self.args.shadow_retention_s)
                        next_tick = time.monotonic() + self.args.stats_interval_s
                if stopping:  # one last full round after stop(), so nothing decided is left behind
                    return
                self._stop_event.wait(self.args.outbox_interval_s)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread, which stops loudly
            self.error = e
            log.exception("outbox publishing failed; stopping the monitor")
            if self.on_error is not None:
                self.on_error()
        finally:
            if self.leadership is not None:
                self.leadership.release()  # the next monitor takes over at once, not after a lease

    def stop(self) -> None:
        self._stop_event.set()


def run_monitor(settings: Settings, args: MonitorArgs, store: AuditStore, stop: threading.Event | None = None,
                install_signals: bool = True, metrics_registry: "CollectorRegistry | None" = None) -> int:  # fmt: skip
    """Run until SIGTERM/SIGINT (or ``stop`` is set); returns an exit code. ``metrics_registry``:
    a prometheus_client registry for the metrics (default: the process-wide one)."""
    from auditstream.kafka import ensure_topics, make_producer, make_topic_log, resolve_bootstrap
    from auditstream.kafka.limits import check_dead_letter_limit, topic_limits
    from auditstream.stream import StreamLoop

    args.check_settings(settings)  # before any connection
    bootstrap = resolve_bootstrap(settings)
    names = [settings.topic(t) for t in (topics.AUDIT, topics.PREDICTIONS, topics.VERDICTS, topics.DECISIONS, topics.DEAD_LETTER)]
    ensure_topics(settings, names + [settings.topic(topics.CONTROL)], compacted=(settings.topic(topics.CONTROL),),
                  bootstrap=bootstrap)
    dead_letters = settings.topic(topics.DEAD_LETTER)
    limits = topic_limits(settings, names[2:], bootstrap)  # verdicts, decisions, dead letters
    dead_letter_limit = limits[dead_letters]
    check_dead_letter_limit(dead_letters, dead_letter_limit)
    output_limit = min(limits[names[2]], limits[names[3]])  # an item's verdict and decision must both fit
    control_view = ControlView(settings, bootstrap).start()
    started: list[Callable[[], None]] = [control_view.stop]  # released in reverse if start-up fails
    try:
        stats = StatsHooks(settings, store, control_view, metrics_registry, args.version_idle_s)
        started.append(stats.close)
        # The outbox producer gives up on a record after flush_timeout_s: a round's fence (store/outbox.py).
        outbox_settings = dataclasses.replace(settings, delivery_timeout_s=args.flush_timeout_s)
        topic_log = make_topic_log(settings, bootstrap)
        started.append(topic_log.close)
        publisher = OutboxPublisher(store, make_producer(outbox_settings, bootstrap, "auditstream-monitor-outbox",
                                                         max_block_s=OUTBOX_MAX_BLOCK_S),
                                    topic_log, settings, args, stats, store.leadership("monitor", args.leader_lease_s),
                                    limits)  # fmt: skip
        started.append(publisher.producer.close)
        shadow = publisher.shadow = ShadowAnswers(store)
        loop = StreamLoop.connect(
            settings, args.group_id or group_id(settings), names[:2],
            lambda records: ingest_batch(store, settings, records, time.time(), stats.observe_prediction, shadow,
                                         dead_letter_limit, output_limit, stats.dead_lettered("ingest")),
            make_producer(settings, bootstrap, "auditstream-monitor"), bootstrap=bootstrap,
        )  # fmt: skip
    except BaseException:
        for release in reversed(started):
            release()
        raise
    publisher.on_error = loop.stop
    if install_signals:
        loop.install_signal_handlers()
    if stop is not None:  # a caller's stop event (tests, an embedding process) ends the loop too
        threading.Thread(target=lambda: (stop.wait(), loop.stop()), daemon=True, name="monitor-stop").start()
    publisher.start()
    log.info("monitor: %s -> store %r; outbox -> %s, %s", ", ".join(names[:2]), store, names[2], names[3])
    try:
        stats_out = loop.run()
    finally:
        loop.close()
        publisher.stop()
        publisher.join()
        publisher.producer.close()
        topic_log.close()
        control_view.stop()
        stats.close()
    if publisher.error is not None:
        raise publisher.error
    log.info("monitor stopped: %d records in, %d outbox records published", stats_out.records_in, publisher.published)
    return 0
