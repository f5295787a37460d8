"""The two Kafka client libraries behind :mod:`auditstream.kafka`'s small interface.

confluent-kafka (librdkafka, the default) and kafka-python (pure Python). Each adapter maps the
library's records, delivery reports, commits and rebalance callbacks onto
:class:`~auditstream.kafka.Record`, :class:`~auditstream.kafka.Delivery`,
:class:`~auditstream.errors.CommitRejected` and ``(topic, partition)`` lists, so nothing else in
auditstream imports a client library. Consumer settings are explained in docs/serving.md
("Consumer group settings"); :data:`~auditstream.kafka.FETCH_MAX_WAIT_MS` in auditstream/kafka/interface.py.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any, Callable, Iterator

from auditstream.errors import BrokerUnavailable, CommitRejected, SendBlocked
from auditstream.kafka.interface import (FETCH_MAX_WAIT_MS, Delivery, Headers, PartitionsCallback, Record, TopicPartition,
                                         check_deliveries)
from auditstream.kafka.limits import MAX_PRODUCE_BYTES
from auditstream.kafka.security import kafka_python_config, librdkafka_config
from auditstream.settings import Settings

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# kafka-python


class KafkaPythonProducer:
    def __init__(self, settings: Settings, bootstrap: str, client_id: str, max_block_s: float | None = None) -> None:
        """``max_block_s``: the longest a ``send`` may block (buffer full, topic metadata unknown)
        before :class:`SendBlocked`; None: kafka-python's default (60 s)."""
        from kafka import KafkaProducer
        from kafka.errors import KafkaError, KafkaTimeoutError

        self._timeout_error = KafkaTimeoutError
        blocking = {} if max_block_s is None else {"max_block_ms": max(1, int(max_block_s * 1000))}
        try:
            self._p = KafkaProducer(
                bootstrap_servers=bootstrap, client_id=client_id, acks="all", linger_ms=5,
                batch_size=256 * 1024, max_request_size=MAX_PRODUCE_BYTES,
                delivery_timeout_ms=int(settings.delivery_timeout_s * 1000),  # retries until then
                # kafka-python requires delivery >= linger + request timeout; a delivery timeout
                # under its 30 s default request timeout (the monitor's outbox) shortens the latter.
                request_timeout_ms=min(30_000, int(settings.delivery_timeout_s * 1000) - 5),
                # Not idempotent (like the confluent producer): kafka-python 3 turns a broker's
                # DUPLICATE_SEQUENCE_NUMBER into a success with offset -1, and Tansu answers that to a
                # batch retried across its restart that it never stored (bench faults broker_restart).
                # A retried batch may be written twice instead: outputs are keyed, duplicates harmless.
                enable_idempotence=False,
                **blocking,
                **kafka_python_config(settings),
            )
        except KafkaError as e:
            raise BrokerUnavailable(bootstrap, str(e)) from None
        self._pending: list[tuple[Delivery, Any]] = []

    def send(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers = ()) -> Delivery:
        d = Delivery(topic, key)
        try:
            future = self._p.send(topic, key=key, value=value, headers=list(headers))
        except self._timeout_error as e:  # max_block_ms passed before the record was taken: not sent
            raise SendBlocked(topic, key, f"not sent: the producer did not take it in time ({e})") from None
        # The future is read at flush time: cheaper than a callback per record on the I/O thread.
        self._pending.append((d, future))
        return d

    def flush(self, timeout_s: float) -> None:
        from kafka.errors import KafkaTimeoutError

        pending, self._pending = self._pending, []
        try:
            self._p.flush(timeout=timeout_s)
        except KafkaTimeoutError:
            pass  # reported per record below
        for d, future in pending:
            if future.failed():
                d.failed(future.exception)
            elif future.is_done:
                d.succeeded(future.value.partition, future.value.offset)
        check_deliveries([d for d, _ in pending])

    def close(self) -> None:
        with _SHUTDOWN_NOISE.closing():
            self._p.close(timeout=5)


class _ShutdownNoise(logging.Filter):
    """kafka-python 3 logs at ERROR what it cancels itself while one of its clients closes (an
    in-flight metadata refresh: "failed Cancelled"; a read on the transport it just closed). That
    is our own clean stop, not a fault: an alert on ERROR lines must not fire on every shutdown.
    Only those two loggers, only while a client of this process is closing."""

    LOGGERS = ("kafka.net.transport", "kafka.cluster")

    def __init__(self) -> None:
        super().__init__()
        self._closing = 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def closing(self) -> Iterator[None]:
        with self._lock:
            self._closing += 1
        try:
            yield
        finally:
            with self._lock:
                self._closing -= 1

    def filter(self, record: logging.LogRecord) -> bool:
        return not (self._closing and record.levelno >= logging.ERROR)


_SHUTDOWN_NOISE = _ShutdownNoise()
for _name in _ShutdownNoise.LOGGERS:
    logging.getLogger(_name).addFilter(_SHUTDOWN_NOISE)


class KafkaPythonConsumer:
    def __init__(self, settings: Settings, bootstrap: str, group_id: str, topics: list[str],
                 on_assign: PartitionsCallback | None, on_revoke: PartitionsCallback | None,
                 client_id: str = "", fetch_max_wait_ms: int = FETCH_MAX_WAIT_MS) -> None:
        from kafka import ConsumerRebalanceListener, KafkaConsumer
        from kafka.errors import KafkaError

        # kafka-python calls the listener inside poll() and only *logs* what it raises: a delivery
        # failure while checkpointing on revoke would be swallowed and stale records processed.
        # The first error is kept and re-raised from poll(), where the loop stops on it.
        consumer = self
        self._callback_error: BaseException | None = None

        def guarded(callback: PartitionsCallback | None, partitions: list) -> None:
            if callback is None or consumer._callback_error is not None:
                return
            try:
                callback([(tp.topic, tp.partition) for tp in partitions])
            except BaseException as e:  # noqa: BLE001 - re-raised from poll()
                consumer._callback_error = e

        class Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):  # noqa: ANN001
                guarded(on_revoke, revoked)

            def on_partitions_assigned(self, assigned):  # noqa: ANN001
                guarded(on_assign, assigned)

        try:
            self._c = KafkaConsumer(
                bootstrap_servers=bootstrap, group_id=group_id, client_id=client_id or group_id,
                enable_auto_commit=False, auto_offset_reset="earliest",
                session_timeout_ms=settings.session_timeout_ms,
                heartbeat_interval_ms=settings.heartbeat_interval_ms,
                max_poll_interval_ms=settings.max_poll_interval_ms,
                max_poll_records=max(500, settings.max_batch_size), fetch_max_wait_ms=fetch_max_wait_ms,
                **kafka_python_config(settings),
            )
        except KafkaError as e:
            raise BrokerUnavailable(bootstrap, str(e)) from None
        self._c.subscribe(topics, listener=Listener())

    def poll(self, max_records: int, timeout_ms: int) -> list[Record]:
        from kafka.errors import CorruptRecordError

        try:
            batches = self._c.poll(timeout_ms=timeout_ms, max_records=max_records)
        except CorruptRecordError as e:
            return self._step_over_unreadable(e)
        if self._callback_error is not None:
            error, self._callback_error = self._callback_error, None
            raise error
        return _kafka_python_records(batches)

    def _step_over_unreadable(self, error: Exception) -> list[Record]:
        """kafka-python raises CorruptRecordError on a record it cannot parse (a header name that
        is not UTF-8 is enough) without saying whose, and its next poll then spins forever on the
        broken partition; after a restart it meets the record again. The fetcher's in-line
        partition (a private attribute: checked by tests/serving/test_unreadable_records.py) names
        the partition, its position is the unreadable record: seek past it and hand it on as an
        ``unreadable`` Record to be dead-lettered (this client cannot give its bytes). When the
        partition cannot be told, the error is raised as before."""
        part = getattr(getattr(self._c, "_fetcher", None), "_next_partition_records", None)
        tp = getattr(part, "topic_partition", None)
        if tp is None or tp not in self._c.assignment():
            raise error
        offset = self._c.position(tp)
        log.error("%s[%d]@%d cannot be read by kafka-python (%s): dead-lettered without its bytes",
                  tp.topic, tp.partition, offset, error)
        self._c.seek(tp, offset + 1)
        return [Record(tp.topic, tp.partition, offset, None, None, unreadable=f"kafka-python: {error}")]

    def commit(self, offsets: dict[TopicPartition, int]) -> None:
        from kafka import TopicPartition as TP
        from kafka.errors import CommitFailedError, IllegalStateError, KafkaError
        from kafka.structs import OffsetAndMetadata

        request = {TP(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()}
        try:
            self._c.commit(request)
        except (CommitFailedError, IllegalStateError) as e:
            raise CommitRejected(offsets, str(e)) from None
        except RuntimeError as e:
            # kafka-python 3 runs some rebalance callbacks on its own I/O thread, where a blocking
            # commit is refused ("Cannot block on net.run() from the IO thread itself"). Send it
            # without waiting: it goes out before the rejoin; unconfirmed, so these records may
            # be answered again by the next owner (duplicates), never lost.
            if "IO thread" not in str(e):
                raise
            self._c.commit_async(request)
            raise CommitRejected(offsets, "sent without confirmation from the rebalance callback") from None
        except KafkaError as e:
            if not e.retriable:  # e.g. not authorised to commit: stop loudly
                raise
            # The broker is away (a restart): the outputs are written, the offsets not. As after a
            # rebalance these records may be answered again (duplicates), never lost; the
            # partition's next checkpoint commits past them.
            raise CommitRejected(offsets, f"broker unavailable: {e!r}") from None

    def assignment(self) -> set[TopicPartition]:
        return {(tp.topic, tp.partition) for tp in self._c.assignment()}

    def rewind(self, offsets: dict[TopicPartition, int]) -> None:
        # kafka-python 3 keeps the position of a partition that is assigned again after a
        # rebalance (subscription_state.assign_from_subscribed): set it back to the first record
        # the loop dropped.
        from kafka import TopicPartition as TP

        assigned = self._c.assignment()
        for (topic, partition), offset in offsets.items():
            if TP(topic, partition) in assigned:
                self._c.seek(TP(topic, partition), offset)

    def lag(self) -> dict[TopicPartition, int]:
        out = {}
        for tp in self._c.assignment():
            high = self._c.highwater(tp)
            if high is not None:
                out[(tp.topic, tp.partition)] = max(0, high - self._c.position(tp))
        return out

    def close(self) -> None:
        with _SHUTDOWN_NOISE.closing():
            self._c.close(autocommit=False)


def _kafka_python_records(batches: dict) -> list[Record]:
    return [Record(r.topic, r.partition, r.offset, r.key, r.value, tuple(r.headers or ()), r.timestamp)
            for records in batches.values() for r in records]


class KafkaPythonReader:
    """Manual assignment of every partition of ``topics``; see :class:`auditstream.kafka.Reader`."""

    def __init__(self, settings: Settings, bootstrap: str, topics: list[str], from_beginning: bool,
                 fetch_max_wait_ms: int = FETCH_MAX_WAIT_MS) -> None:
        from kafka import KafkaConsumer
        from kafka import TopicPartition as TP
        from kafka.errors import KafkaError

        try:
            self._c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                    fetch_max_wait_ms=fetch_max_wait_ms, max_poll_records=10_000,
                                    **kafka_python_config(settings))
            parts = [TP(t, p) for t in topics for p in sorted(self._c.partitions_for_topic(t) or ())]
        except KafkaError as e:
            raise BrokerUnavailable(bootstrap, str(e)) from None
        missing = [t for t in topics if not any(tp.topic == t for tp in parts)]
        if missing:
            self._c.close()
            raise BrokerUnavailable(bootstrap, f"topics {missing} do not exist (create them: auditstream broker start)")
        self._c.assign(parts)
        self._end = self._c.end_offsets(parts)
        if from_beginning:
            self._c.seek_to_beginning(*parts)
        else:
            for tp, end in self._end.items():
                self._c.seek(tp, end)

    def poll(self, max_records: int, timeout_ms: int) -> list[Record]:
        return _kafka_python_records(self._c.poll(timeout_ms=timeout_ms, max_records=max_records))

    def caught_up(self) -> bool:
        return all(self._c.position(tp) >= end for tp, end in self._end.items())

    def close(self) -> None:
        with _SHUTDOWN_NOISE.closing():
            self._c.close(autocommit=False)


class KafkaPythonTopicLog:
    """End offsets and reads from given offsets by manual assignment; see
    :class:`auditstream.kafka.TopicLog`. One consumer, kept between calls."""

    def __init__(self, settings: Settings, bootstrap: str, fetch_max_wait_ms: int = FETCH_MAX_WAIT_MS) -> None:
        from kafka import KafkaConsumer
        from kafka.errors import KafkaError

        self._bootstrap = bootstrap
        try:
            self._c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                    fetch_max_wait_ms=fetch_max_wait_ms, max_poll_records=10_000,
                                    **kafka_python_config(settings))
        except KafkaError as e:
            raise BrokerUnavailable(bootstrap, str(e)) from None

    def _partitions(self, topics: list[str]) -> list[Any]:
        from kafka import TopicPartition as TP

        parts = [TP(t, p) for t in topics for p in sorted(self._c.partitions_for_topic(t) or ())]
        missing = [t for t in topics if not any(tp.topic == t for tp in parts)]
        if missing:
            raise BrokerUnavailable(self._bootstrap, f"topics {missing} do not exist (create them: auditstream broker start)")
        return parts

    def end_offsets(self, topics: list[str]) -> dict[TopicPartition, int]:
        from kafka.errors import KafkaError

        try:
            return {(tp.topic, tp.partition): int(o) for tp, o in self._c.end_offsets(self._partitions(topics)).items()}
        except KafkaError as e:
            raise BrokerUnavailable(self._bootstrap, f"end offsets of {topics}: {e}") from None

    def read_from(self, positions: dict[TopicPartition, int], topics: list[str], timeout_s: float) -> list[Record]:
        import time

        parts = self._partitions(topics)
        ends = {tp: int(o) for tp, o in self._c.end_offsets(parts).items()}
        self._c.assign(parts)
        for tp in parts:
            self._c.seek(tp, min(positions.get((tp.topic, tp.partition), 0), ends[tp]))
        out: list[Record] = []
        deadline = time.monotonic() + timeout_s
        # Past the end offsets, on to a fetch that returns nothing: Tansu 0.6.0 answers ListOffsets
        # with the last batch's base offset + 1 (a partition holding one batch of records 0..9 has
        # "end" 1; docs/audit-store.md), so its end offset is a lower bound, not the end.
        while True:
            if time.monotonic() > deadline:
                raise BrokerUnavailable(self._bootstrap, f"could not read {topics} to their end within {timeout_s:.0f} s")
            got = _kafka_python_records(self._c.poll(timeout_ms=500, max_records=10_000))
            out.extend(got)
            if not got and all(self._c.position(tp) >= end for tp, end in ends.items()):
                return out

    def close(self) -> None:
        with _SHUTDOWN_NOISE.closing():
            self._c.close(autocommit=False)


# --------------------------------------------------------------------------------------------
# confluent-kafka


class ConfluentProducer:
    def __init__(self, settings: Settings, bootstrap: str, client_id: str, max_block_s: float | None = None) -> None:
        """``max_block_s``: the longest a ``send`` waits for room in librdkafka's local queue
        before :class:`SendBlocked` (``produce`` itself never blocks); None: as long as it takes."""
        from confluent_kafka import Producer as CProducer

        self._max_block_s = max_block_s
        self._p = CProducer({
            "bootstrap.servers": bootstrap, "client.id": client_id, "acks": "all", "linger.ms": 5,
            "message.max.bytes": MAX_PRODUCE_BYTES, "enable.idempotence": False, "log.connection.close": False,
            "message.timeout.ms": int(settings.delivery_timeout_s * 1000),
            **librdkafka_config(settings),
        })
        self._pending: list[Delivery] = []

    def send(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers = ()) -> Delivery:
        d = Delivery(topic, key)

        def on_delivery(err: Any, msg: Any) -> None:
            d.failed(err) if err is not None else d.succeeded(msg.partition(), msg.offset())

        deadline = None if self._max_block_s is None else time.monotonic() + self._max_block_s
        while True:
            try:
                self._p.produce(topic, value=value, key=key, headers=list(headers), on_delivery=on_delivery)
                break
            except BufferError:  # local queue full: serve delivery reports, then retry
                if deadline is not None and time.monotonic() >= deadline:
                    raise SendBlocked(topic, key, f"not sent: librdkafka's queue stayed full for {self._max_block_s:g} s") from None
                self._p.poll(0.05)
        self._p.poll(0)
        self._pending.append(d)
        return d

    def flush(self, timeout_s: float) -> None:
        pending, self._pending = self._pending, []
        self._p.flush(timeout_s)
        check_deliveries(pending)

    def close(self) -> None:
        self._p.flush(5)
        self._p = None  # destroys the librdkafka handle (and its reconnect attempts) now, not at GC


def _confluent_headers(message: Any) -> tuple[Headers, str]:
    """A message's headers, or ``()`` and why they cannot be read. confluent-kafka (2.16) turns a
    header name that is not UTF-8 into a NULL tuple item and leaves the decode error pending: it
    surfaces as a SystemError at some later call, or not at all. Only ``repr`` looks at a NULL
    item safely, and calling it makes a pending error surface here."""
    try:
        headers = message.headers() or []
        items = [repr(h) for h in headers]
    except (SystemError, UnicodeDecodeError) as e:
        return (), f"confluent-kafka cannot read its headers: {e.__cause__ or e!r}"
    if any(item.startswith("(<NULL>,") for item in items):
        return (), "confluent-kafka cannot read its headers: a header name is not UTF-8"
    return tuple(headers), ""


# librdkafka keeps fetching every partition until 100,000 records (64 MiB) wait in its local
# queue, one fetch per fetch.wait.max.ms: a serving consumer that needs one batch at a time
# asked the broker ~100 times a second for records it would not read for seconds. The embedded
# Tansu lists every stored batch of a partition on each fetch, so its CPU -- on the server's own
# cores -- grew with it (bench serve drain: 250 µs of broker CPU per record, 72 with this bound).
# A few batches per partition keep the loop fed (a fetch takes ~10 ms, a batch ~150 ms); a
# partition at the bound is looked at again after PREFETCH_BACKOFF_MS, not librdkafka's 1 s.
PREFETCH_BATCHES = 4
PREFETCH_BACKOFF_MS = 20
# librdkafka's own limits: a larger value raises ValueError / KafkaException instead of reading.
# Settings keeps max_batch_size far below them (auditstream/settings.py); a caller that asks for
# more gets what the client can give.
CONSUME_MAX_MESSAGES = 1_000_000
QUEUED_MIN_MESSAGES_MAX = 10_000_000


def librdkafka_prefetch(max_batch_size: int) -> dict[str, int]:
    """Consumer properties that bound librdkafka's read-ahead to :data:`PREFETCH_BATCHES`
    batches per partition."""
    return {"queued.min.messages": min(QUEUED_MIN_MESSAGES_MAX, PREFETCH_BATCHES * max(1, max_batch_size)),
            "fetch.queue.backoff.ms": PREFETCH_BACKOFF_MS}


class ConfluentConsumer:
    def __init__(self, settings: Settings, bootstrap: str, group_id: str, topics: list[str],
                 on_assign: PartitionsCallback | None, on_revoke: PartitionsCallback | None,
                 client_id: str = "", fetch_max_wait_ms: int = FETCH_MAX_WAIT_MS) -> None:
        from confluent_kafka import Consumer as CConsumer

        self._c = CConsumer({
            "bootstrap.servers": bootstrap, "group.id": group_id, "client.id": client_id or group_id,
            "enable.auto.commit": False, "auto.offset.reset": "earliest",
            "session.timeout.ms": settings.session_timeout_ms,
            "heartbeat.interval.ms": settings.heartbeat_interval_ms,
            "max.poll.interval.ms": settings.max_poll_interval_ms,
            "enable.partition.eof": False, "fetch.wait.max.ms": fetch_max_wait_ms, "log.connection.close": False,
            **librdkafka_prefetch(settings.max_batch_size), **librdkafka_config(settings),
        })

        def wrap(cb: PartitionsCallback | None) -> Callable[[Any, list[Any]], None]:
            return lambda _c, parts: cb([(p.topic, p.partition) for p in parts]) if cb else None

        self._c.subscribe(topics, on_assign=wrap(on_assign), on_revoke=wrap(on_revoke))

    def poll(self, max_records: int, timeout_ms: int) -> list[Record]:
        from confluent_kafka import KafkaError

        # consume() waits until max_records arrived or the timeout passed; poll() returns on the
        # first record. So: wait for one, then take whatever else is already fetched.
        first = self._c.poll(timeout_ms / 1000)
        if first is None:
            return []
        more = min(max_records - 1, CONSUME_MAX_MESSAGES)
        messages = [first] + (self._c.consume(num_messages=more, timeout=0) if more > 0 else [])
        out = []
        for m in messages:
            err = m.error()
            if err is not None:
                if err.fatal() or err.code() == KafkaError._ALL_BROKERS_DOWN:
                    raise BrokerUnavailable("(confluent consumer)", err.str())
                log.warning("consumer error (client retries): %s", err.str())
                continue
            ts = m.timestamp()[1]
            headers, unreadable = _confluent_headers(m)
            out.append(Record(m.topic(), m.partition(), m.offset(), m.key(), m.value(), headers, ts, unreadable))
        return out

    def commit(self, offsets: dict[TopicPartition, int]) -> None:
        from confluent_kafka import KafkaException
        from confluent_kafka import TopicPartition as TP

        try:
            results = self._c.commit(offsets=[TP(t, p, o) for (t, p), o in offsets.items()], asynchronous=False)
        except KafkaException as e:
            raise CommitRejected(offsets, str(e)) from None
        failed = [f"{r.topic}[{r.partition}]: {r.error}" for r in results or () if r.error is not None]
        if failed:
            raise CommitRejected(offsets, "; ".join(failed))

    def assignment(self) -> set[TopicPartition]:
        return {(p.topic, p.partition) for p in self._c.assignment()}

    def rewind(self, offsets: dict[TopicPartition, int]) -> None:
        """Nothing to do: librdkafka's eager assignment drops a revoked partition's position, and
        one that comes back starts from its committed offset -- which the revoke's checkpoint set
        to the first record the loop dropped (or earlier, if that commit was refused)."""

    def lag(self) -> dict[TopicPartition, int]:
        out = {}
        for p in self._c.position(self._c.assignment()):
            low, high = self._c.get_watermark_offsets(p, cached=True)
            if high < 0:  # no fetch response for it yet
                continue
            if p.offset >= 0:
                out[(p.topic, p.partition)] = max(0, high - p.offset)
            elif low == high:
                # librdkafka has no position before the first record it hands over, so an empty
                # partition never had one: without this a consumer of a topic with an empty
                # partition (the control topic's are mostly empty) never counted as caught up
                out[(p.topic, p.partition)] = 0
        return out

    def close(self) -> None:
        self._c.close()
