"""The at-least-once consume → process → produce loop every auditstream consumer runs (the
serving consumer, the monitor's ingester, the RL consumer).

The loop is the only place that talks to Kafka; the work is a pure ``process_batch(records)``
that returns one list of :class:`Output` per input record (an error belongs to its record: the
function turns it into a dead letter). Checkpoint order, mirrored step by step in
:meth:`StreamLoop.run` (docs/serving.md):

1. **poll** up to the records the open batch still has room for;
2. **batch**: cut a micro-batch when it holds ``max_batch_size`` records (fewer while batches are
   slow: :mod:`auditstream.poll_budget`) or its oldest record has waited ``max_wait_ms`` (by the
   injectable clock), or -- with ``latency_budget_ms`` -- once waiting longer could overrun the
   budget (:mod:`auditstream.batching`);
3. **process** it: ``process_batch(records)``, one result per record;
4. **produce** every output (asynchronously; outputs are keyed so a redelivery is deduplicable);
5. while fewer than ``max_in_flight_batches`` batches are uncommitted and records keep
   coming, go back to 1 (the producer sends while the next batch is computed);
6. **flush** the producer and **verify every delivery** (any failure stops the loop loudly,
   nothing is committed, the records are redelivered after a restart);
7. **commit** the next offset of every partition in the checkpoint; repeat.

A rebalance checkpoints the in-flight batches before partitions are revoked, drops polled but
unprocessed records of revoked partitions and rewinds those partitions to the first of them
(their new owner reads them again, and so does this member if a partition comes back to it).
SIGTERM (or :meth:`StreamLoop.stop`) processes what was polled, checkpoints and returns.
"""

from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from auditstream.batching import ComputeEstimate, collect_for_ms, queued_s
from auditstream.errors import BatchFailed, CommitRejected
from auditstream.kafka import Consumer, Headers, PartitionsCallback, Producer, Record, TopicPartition, make_consumer
from auditstream.poll_budget import PollBudget
from auditstream.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Output:
    """One record to produce: the loop is generic over what the outputs mean."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers = ()


ProcessBatch = Callable[[list[Record]], Sequence[Sequence[Output]]]


@dataclass(frozen=True)
class BatchingConfig:
    """Micro-batching and checkpoint limits (from Settings; docs/serving.md "Batching")."""

    max_batch_size: int = 64
    max_wait_ms: int = 20
    max_in_flight_batches: int = 2
    flush_timeout_s: float = 30.0
    idle_poll_ms: int = 200  # poll timeout while no batch is open
    max_poll_interval_s: float | None = None  # bounds batch work (auditstream.poll_budget); None: no bound
    latency_budget_ms: int = 0  # 0: size and wait only (auditstream/batching.py)

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.max_in_flight_batches < 1 or self.max_wait_ms < 0:
            raise ValueError(f"bad batching config: max_batch_size={self.max_batch_size} (>= 1), "
                             f"max_in_flight_batches={self.max_in_flight_batches} (>= 1), max_wait_ms={self.max_wait_ms} (>= 0)")

    @classmethod
    def from_settings(cls, settings: Settings) -> "BatchingConfig":
        return cls(settings.max_batch_size, settings.max_wait_ms, settings.max_in_flight_batches,
                   settings.delivery_timeout_s, max_poll_interval_s=settings.max_poll_interval_ms / 1000,
                   latency_budget_ms=settings.latency_budget_ms)


@dataclass
class LoopHooks:
    """Extension points (per-episode state lives here): called on the loop's own thread.

    ``before_checkpoint(offsets)`` returns extra outputs (e.g. state snapshots for a compacted
    topic) produced and verified together with the batch outputs before the commit.
    """

    on_assign: PartitionsCallback | None = None
    on_revoke: PartitionsCallback | None = None
    before_checkpoint: Callable[[dict[TopicPartition, int]], Sequence[Output]] | None = None
    after_commit: Callable[[dict[TopicPartition, int]], None] | None = None


@dataclass
class LoopStats:
    records_in: int = 0
    outputs_out: int = 0
    batches: int = 0
    commits: int = 0
    rejected_commits: int = 0
    first_record_at: float | None = None  # clock time the first record arrived
    last_commit_at: float | None = None  # clock time of the last successful commit
    batch_sizes: list[int] = field(default_factory=list, repr=False)
    # Wall seconds in each step since the first record arrived (``bench serve``'s drain split):
    # polling, process_batch, handing outputs to the producer, checkpoints (flush + commit).
    poll_s: float = 0.0
    process_s: float = 0.0
    produce_s: float = 0.0
    checkpoint_s: float = 0.0

    @property
    def drain_s(self) -> float:
        """Seconds from the first record to the last commit (0 or less before a commit)."""
        return (self.last_commit_at or 0) - (self.first_record_at or 0)

    @property
    def drain_rate_per_s(self) -> float:
        """Records per second from the first record to the last commit (NaN before a commit):
        what a benchmark's drain of records produced ahead of time measures."""
        return self.records_in / self.drain_s if self.drain_s > 0 else float("nan")


class StreamLoop:
    """Run ``process_batch`` over a consumer group with at-least-once delivery of its outputs."""

    def __init__(self, consumer: Consumer | None, producer: Producer, process_batch: ProcessBatch,
                 config: BatchingConfig, clock: Callable[[], float] = time.monotonic,
                 hooks: LoopHooks | None = None, wall_clock: Callable[[], float] = time.time) -> None:
        self.consumer = consumer
        self.wall_clock = wall_clock  # to read records' Kafka timestamps (when a batch's wait began)
        self.compute = ComputeEstimate()  # measured process_batch time per batch size
        self.producer, self.process_batch, self.config, self.clock = producer, process_batch, config, clock
        self.hooks = hooks or LoopHooks()
        self.stats = LoopStats()
        self._pending: list[Record] = []  # polled, not yet processed
        self._opened_at = 0.0  # clock time the oldest pending record arrived
        self._in_flight: dict[TopicPartition, int] = {}  # produced, not yet committed: next offsets
        self._in_flight_batches = 0
        self._stopping = False
        self._idle_since: float | None = None  # clock time of the last record (or first assignment)
        self.budget = PollBudget(config.max_batch_size, config.max_poll_interval_s) if config.max_poll_interval_s else None

    @classmethod
    def connect(cls, settings: Settings, group_id: str, topics: list[str], process_batch: ProcessBatch,
                producer: Producer, hooks: LoopHooks | None = None, bootstrap: str | None = None,
                clock: Callable[[], float] = time.monotonic, client_id: str = "") -> "StreamLoop":
        """A loop whose consumer joins ``group_id`` with the loop's rebalance callbacks."""
        loop = cls(None, producer, process_batch, BatchingConfig.from_settings(settings), clock, hooks)
        loop.consumer = make_consumer(settings, group_id, topics, bootstrap,
                                      on_assign=loop._assigned, on_revoke=loop._revoked, client_id=client_id)
        return loop

    def stop(self, *_: object) -> None:
        """Finish the current batch, checkpoint and return from :meth:`run` (signal-safe)."""
        self._stopping = True

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def run(self, max_records: int | None = None, until_idle_s: float | None = None) -> LoopStats:
        """Loop until stopped, or ``max_records`` records were processed, or (batch jobs such as a
        replay) nothing arrived for ``until_idle_s`` after the first assignment; returns the stats."""
        assert self.consumer is not None, "StreamLoop needs a consumer (use StreamLoop.connect)"
        cfg = self.config
        while not self._stopping and (max_records is None or self.stats.records_in < max_records):
            if until_idle_s is not None and self._idle_since is not None and not self._pending \
                    and self.clock() - self._idle_since > until_idle_s:
                break
            # 1. poll: as many records as the open batch has room for, until its deadline
            room = self._batch_limit() - len(self._pending)
            timeout_ms = cfg.idle_poll_ms if not self._pending else max(0, int(self._deadline_ms()))
            poll_started = self.clock()
            polled = self.consumer.poll(room, timeout_ms)
            if self.stats.first_record_at is not None:  # not the wait for an assignment or a first record
                self.stats.poll_s += self.clock() - poll_started
            if polled or (self._idle_since is None and self.consumer.assignment()):
                self._idle_since = self.clock()
            if polled and not self._pending:
                self._opened_at = self.clock()
                if self.stats.first_record_at is None:
                    self.stats.first_record_at = self._opened_at
                # The batch's wait began when its oldest record was written to Kafka, not when it
                # was polled: records that queued while the last batch ran are not made to wait
                # max_wait_ms again (at 70% load that wait lengthened every cycle and so every
                # queue: p99 355 ms, 262 counting from the write; docs/serving.md).
                stamps = [r.timestamp_ms for r in polled if r.timestamp_ms > 0]
                if stamps:
                    self._opened_at -= queued_s(min(stamps), self.wall_clock(),
                                                max(cfg.max_wait_ms, cfg.latency_budget_ms))
            self._pending.extend(polled)
            # 2. batch: full, or the oldest record waited max_wait_ms
            if self._pending and (len(self._pending) >= self._batch_limit() or self._deadline_ms() <= 0):
                self._process_and_produce(self._pending)
                self._pending = []
            # 5. checkpoint when the in-flight cap is reached or the stream went quiet
            if self._in_flight_batches >= cfg.max_in_flight_batches or (not polled and self._in_flight):
                self._checkpoint()
        if self._pending:  # SIGTERM: finish what was polled
            self._process_and_produce(self._pending)
            self._pending = []
        self._checkpoint()
        return self.stats

    def close(self) -> None:
        if self.consumer is not None:
            self.consumer.close()
        self.producer.close()

    # ----------------------------------------------------------------------------------------

    def _batch_limit(self) -> int:
        return self.budget.limit if self.budget is not None else self.config.max_batch_size

    def _deadline_ms(self) -> float:
        cfg = self.config
        collect_ms = collect_for_ms(cfg.max_wait_ms, cfg.latency_budget_ms,
                                    self.compute.seconds(cfg.max_batch_size) if cfg.latency_budget_ms else None)
        return collect_ms - (self.clock() - self._opened_at) * 1000.0

    def _process_and_produce(self, batch: list[Record]) -> None:
        # 3. process: one result per record; an exception here is a broken dependency, not a record
        started = self.clock()
        try:
            results = self.process_batch(batch)
        except Exception as e:
            raise BatchFailed(batch[0].where, batch[-1].where, len(batch), repr(e)) from e
        if len(results) != len(batch):
            raise BatchFailed(batch[0].where, batch[-1].where, len(batch),
                              f"process_batch returned {len(results)} results for {len(batch)} records")
        processed = self.clock()
        self.compute.observe(len(batch), processed - started)
        self.stats.process_s += processed - started
        # 4. produce every output; remember the next offset of each partition
        for outputs in results:
            for out in outputs:
                self.producer.send(out.topic, out.key, out.value, out.headers)
                self.stats.outputs_out += 1
        self.stats.produce_s += self.clock() - processed
        if self.budget is not None:  # slow batches shrink the next ones: polls stay inside max.poll.interval
            before = self.budget.limit
            why = self.budget.observe(len(batch), self.clock() - started)
            if why:
                log.log(logging.WARNING if self.budget.limit <= before else logging.INFO, "%s", why)
        for r in batch:
            self._in_flight[(r.topic, r.partition)] = r.offset + 1
        self._in_flight_batches += 1
        self.stats.records_in += len(batch)
        self.stats.batches += 1
        self.stats.batch_sizes.append(len(batch))

    def _checkpoint(self) -> None:
        if not self._in_flight:
            return
        started = self.clock()
        try:
            self._flush_and_commit()
        finally:
            self.stats.checkpoint_s += self.clock() - started

    def _flush_and_commit(self) -> None:
        offsets, self._in_flight, self._in_flight_batches = self._in_flight, {}, 0
        if self.hooks.before_checkpoint:
            for out in self.hooks.before_checkpoint(offsets):
                self.producer.send(out.topic, out.key, out.value, out.headers)
        # 6. flush and verify every delivery: DeliveryFailed propagates, nothing is committed
        self.producer.flush(self.config.flush_timeout_s)
        # 7. commit
        try:
            self.consumer.commit(offsets)  # type: ignore[union-attr]
        except CommitRejected as e:
            # The group moved on: the partitions' new owner re-reads these records (duplicates, not loss).
            self.stats.rejected_commits += 1
            log.warning("%s; the new owner reprocesses them", e)
            return
        self.stats.commits += 1
        self.stats.last_commit_at = self.clock()
        if log.isEnabledFor(logging.DEBUG):  # once per batch: format only when someone reads it
            log.debug("committed %s", _partitions(offsets))
        if self.hooks.after_commit:
            self.hooks.after_commit(offsets)

    def _assigned(self, partitions: list[TopicPartition]) -> None:
        log.info("assigned %d partitions: %s", len(partitions), _partitions(partitions))
        if self.hooks.on_assign:
            self.hooks.on_assign(partitions)

    def _revoked(self, partitions: list[TopicPartition]) -> None:
        # Checkpoint what was processed while we still own it, and let the new owner take the rest.
        log.info("revoking %d partitions: %s", len(partitions), _partitions(partitions))
        self._checkpoint()
        gone, unread = set(partitions), {}  # type: set[TopicPartition], dict[TopicPartition, int]
        for r in self._pending:
            if (r.topic, r.partition) in gone:
                unread[(r.topic, r.partition)] = min(r.offset, unread.get((r.topic, r.partition), r.offset))
        self._pending = [r for r in self._pending if (r.topic, r.partition) not in gone]
        # A client may keep a partition's position when the partition comes back to this member
        # (kafka-python 3 does): without this the dropped records would be skipped, and the next
        # commit would pass records nobody answered.
        if unread:
            self.consumer.rewind(unread)  # type: ignore[union-attr]
        if self.hooks.on_revoke:
            self.hooks.on_revoke(partitions)


def _partitions(partitions: Sequence[TopicPartition] | dict[TopicPartition, int]) -> str:
    """``topic[0,3,7]`` (or ``topic[0@12,3@40]`` with next offsets) for the logs."""
    by_topic: dict[str, list[str]] = {}
    for tp in sorted(partitions):
        offset = partitions[tp] if isinstance(partitions, dict) else None
        by_topic.setdefault(tp[0], []).append(f"{tp[1]}" if offset is None else f"{tp[1]}@{offset}")
    return " ".join(f"{topic}[{','.join(parts)}]" for topic, parts in by_topic.items()) or "none"
