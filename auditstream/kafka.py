"""The one small Kafka client interface every auditstream process uses (serving consumers, the
monitor's ingester, the RL consumer, load generators, benchmarks).

Two implementations sit behind it, chosen by ``Settings.kafka_client``: kafka-python (pure
Python, the default; ``crc32c`` installed so record checksums are native) and confluent-kafka
(librdkafka, faster). Callers see only :class:`Record`, :class:`Producer` and :class:`Consumer`;
the at-least-once loop built on them is :mod:`auditstream.stream`.

Consumer settings (docs/serving.md, "Consumer group settings"): offsets are committed only by
the loop (never automatically); the session timeout is short (10 s) because Tansu holds a
group's first JoinGroup for about half of it; the max poll interval is long (5 min) so a slow
batch never pushes a live consumer out of its group.

The client libraries are imported inside the factories, so importing this module is cheap.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from auditstream.errors import BrokerUnavailable, CommitRejected, DeliveryFailed
from auditstream.settings import Settings

log = logging.getLogger(__name__)

# Tansu answers a fetch only when this wait is over, even if records arrived meanwhile: at 100 ms
# (a common default) a request's p50 latency through one consumer was 70 ms, at 10 ms 34 ms
# (tiny model, 200 req/s). An idle consumer then sends ~100 small fetches a second.
FETCH_MAX_WAIT_MS = 10

Headers = tuple[tuple[str, bytes], ...]
TopicPartition = tuple[str, int]
PartitionsCallback = Callable[[list[TopicPartition]], None]


@dataclass(frozen=True, slots=True)
class Record:
    """One consumed record. ``where`` names it in errors and dead letters."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers = ()
    timestamp_ms: int = 0

    @property
    def where(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


class Delivery:
    """The broker's answer to one ``send``: filled in from the client's callback thread."""

    __slots__ = ("topic", "key", "done", "error", "partition", "offset")

    def __init__(self, topic: str, key: bytes | None) -> None:
        self.topic, self.key = topic, key
        self.done, self.error = False, None  # type: bool, str | None
        self.partition, self.offset = -1, -1

    def succeeded(self, partition: int, offset: int) -> None:
        self.partition, self.offset, self.done = partition, offset, True

    def failed(self, error: object) -> None:
        self.error, self.done = str(error), True


class Producer(Protocol):
    def send(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers = ()) -> Delivery: ...

    def flush(self, timeout_s: float) -> None:
        """Wait for every send since the last flush; raise DeliveryFailed unless all were acked."""

    def close(self) -> None: ...


class Consumer(Protocol):
    def poll(self, max_records: int, timeout_ms: int) -> list[Record]: ...

    def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit ``next offset to read`` per partition, synchronously; CommitRejected on a rebalance."""

    def assignment(self) -> set[TopicPartition]: ...

    def lag(self) -> dict[TopicPartition, int]:
        """Records behind the last known end of each assigned partition (from fetch responses)."""

    def close(self) -> None: ...


def _quiet_client_logs() -> None:
    # kafka-python logs every connection and metadata refresh at INFO; keep them out of the
    # process log unless someone configured the "kafka" logger on purpose.
    logger = logging.getLogger("kafka")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.WARNING)


def _check_deliveries(pending: list[Delivery]) -> None:
    for d in pending:
        if not d.done:
            raise DeliveryFailed(d.topic, d.key, "not acknowledged before the flush timeout")
        if d.error is not None:
            raise DeliveryFailed(d.topic, d.key, d.error)


# --------------------------------------------------------------------------------------------
# kafka-python


class _KafkaPythonProducer:
    def __init__(self, bootstrap: str, client_id: str) -> None:
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        try:
            self._p = KafkaProducer(
                bootstrap_servers=bootstrap, client_id=client_id, acks="all", linger_ms=5,
                batch_size=256 * 1024, max_request_size=8 * 1024 * 1024, retries=5,
            )
        except KafkaError as e:
            raise BrokerUnavailable(bootstrap, str(e)) from None
        self._pending: list[tuple[Delivery, Any]] = []

    def send(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers = ()) -> Delivery:
        d = Delivery(topic, key)
        # The future is read at flush time: cheaper than a callback per record on the I/O thread.
        self._pending.append((d, self._p.send(topic, key=key, value=value, headers=list(headers))))
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
        _check_deliveries([d for d, _ in pending])

    def close(self) -> None:
        self._p.close(timeout=5)


class _KafkaPythonConsumer:
    def __init__(self, settings: Settings, bootstrap: str, group_id: str, topics: list[str],
                 on_assign: PartitionsCallback | None, on_revoke: PartitionsCallback | None) -> None:
        from kafka import ConsumerRebalanceListener, KafkaConsumer
        from kafka.errors import KafkaError

        class Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):  # noqa: ANN001
                if on_revoke:
                    on_revoke([(tp.topic, tp.partition) for tp in revoked])

            def on_partitions_assigned(self, assigned):  # noqa: ANN001
                if on_assign:
                    on_assign([(tp.topic, tp.partition) for tp in assigned])

        try:
            self._c = KafkaConsumer(
                bootstrap_servers=bootstrap, group_id=group_id, client_id=group_id,
                enable_auto_commit=False, auto_offset_reset="earliest",
                session_timeout_ms=settings.session_timeout_ms,
                heartbeat_interval_ms=settings.heartbeat_interval_ms,
                max_poll_interval_ms=settings.max_poll_interval_ms,
                max_poll_records=max(500, settings.max_batch_size), fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            )
        except KafkaError as e:
            raise BrokerUnavailable(bootstrap, str(e)) from None
        self._c.subscribe(topics, listener=Listener())

    def poll(self, max_records: int, timeout_ms: int) -> list[Record]:
        batches = self._c.poll(timeout_ms=timeout_ms, max_records=max_records)
        return [
            Record(r.topic, r.partition, r.offset, r.key, r.value, tuple(r.headers or ()), r.timestamp)
            for records in batches.values() for r in records
        ]

    def commit(self, offsets: dict[TopicPartition, int]) -> None:
        from kafka import TopicPartition as TP
        from kafka.errors import CommitFailedError, IllegalStateError
        from kafka.structs import OffsetAndMetadata

        try:
            self._c.commit({TP(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()})
        except (CommitFailedError, IllegalStateError) as e:
            raise CommitRejected(offsets, str(e)) from None

    def assignment(self) -> set[TopicPartition]:
        return {(tp.topic, tp.partition) for tp in self._c.assignment()}

    def lag(self) -> dict[TopicPartition, int]:
        out = {}
        for tp in self._c.assignment():
            high = self._c.highwater(tp)
            if high is not None:
                out[(tp.topic, tp.partition)] = max(0, high - self._c.position(tp))
        return out

    def close(self) -> None:
        self._c.close(autocommit=False)


# --------------------------------------------------------------------------------------------
# confluent-kafka


class _ConfluentProducer:
    def __init__(self, bootstrap: str, client_id: str) -> None:
        from confluent_kafka import Producer as CProducer

        self._p = CProducer({
            "bootstrap.servers": bootstrap, "client.id": client_id, "acks": "all", "linger.ms": 5,
            "message.max.bytes": 8 * 1024 * 1024, "enable.idempotence": False, "log.connection.close": False,
        })
        self._pending: list[Delivery] = []

    def send(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers = ()) -> Delivery:
        d = Delivery(topic, key)

        def on_delivery(err: Any, msg: Any) -> None:
            d.failed(err) if err is not None else d.succeeded(msg.partition(), msg.offset())

        while True:
            try:
                self._p.produce(topic, value=value, key=key, headers=list(headers), on_delivery=on_delivery)
                break
            except BufferError:  # local queue full: serve delivery reports, then retry
                self._p.poll(0.05)
        self._p.poll(0)
        self._pending.append(d)
        return d

    def flush(self, timeout_s: float) -> None:
        pending, self._pending = self._pending, []
        self._p.flush(timeout_s)
        _check_deliveries(pending)

    def close(self) -> None:
        self._p.flush(5)
        self._p = None  # destroys the librdkafka handle (and its reconnect attempts) now, not at GC


class _ConfluentConsumer:
    def __init__(self, settings: Settings, bootstrap: str, group_id: str, topics: list[str],
                 on_assign: PartitionsCallback | None, on_revoke: PartitionsCallback | None) -> None:
        from confluent_kafka import Consumer as CConsumer

        self._c = CConsumer({
            "bootstrap.servers": bootstrap, "group.id": group_id, "client.id": group_id,
            "enable.auto.commit": False, "auto.offset.reset": "earliest",
            "session.timeout.ms": settings.session_timeout_ms,
            "heartbeat.interval.ms": settings.heartbeat_interval_ms,
            "max.poll.interval.ms": settings.max_poll_interval_ms,
            "enable.partition.eof": False, "fetch.wait.max.ms": FETCH_MAX_WAIT_MS, "log.connection.close": False,
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
        messages = [first] + (self._c.consume(num_messages=max_records - 1, timeout=0) if max_records > 1 else [])
        out = []
        for m in messages:
            err = m.error()
            if err is not None:
                if err.fatal() or err.code() == KafkaError._ALL_BROKERS_DOWN:
                    raise BrokerUnavailable("(confluent consumer)", err.str())
                log.warning("consumer error (client retries): %s", err.str())
                continue
            ts = m.timestamp()[1]
            out.append(Record(m.topic(), m.partition(), m.offset(), m.key(), m.value(), tuple(m.headers() or ()), ts))
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

    def lag(self) -> dict[TopicPartition, int]:
        out = {}
        for p in self._c.position(self._c.assignment()):
            _low, high = self._c.get_watermark_offsets(p, cached=True)
            if high >= 0 and p.offset >= 0:
                out[(p.topic, p.partition)] = max(0, high - p.offset)
        return out

    def close(self) -> None:
        self._c.close()


# --------------------------------------------------------------------------------------------
# factories


def make_producer(settings: Settings, bootstrap: str | None = None, client_id: str = "auditstream") -> Producer:
    """A producer for ``settings.kafka_client`` (acks=all: a send is acked once it is durable)."""
    bootstrap = bootstrap or _bootstrap(settings)
    _quiet_client_logs()
    if settings.kafka_client == "confluent":
        return _ConfluentProducer(bootstrap, client_id)
    return _KafkaPythonProducer(bootstrap, client_id)


def make_consumer(settings: Settings, group_id: str, topics: list[str], bootstrap: str | None = None,
                  on_assign: PartitionsCallback | None = None,
                  on_revoke: PartitionsCallback | None = None) -> Consumer:
    """A group member subscribed to ``topics``, manual commits, reading from the earliest offset."""
    bootstrap = bootstrap or _bootstrap(settings)
    _quiet_client_logs()
    cls = _ConfluentConsumer if settings.kafka_client == "confluent" else _KafkaPythonConsumer
    return cls(settings, bootstrap, group_id, list(topics), on_assign, on_revoke)


def ensure_topics(bootstrap: str, topics: list[str], partitions: int, compacted: tuple[str, ...] = ()) -> list[str]:
    """Create the topics that do not exist yet; returns the names created. Idempotent."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    _quiet_client_logs()
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="auditstream-admin")
    except KafkaError as e:
        raise BrokerUnavailable(bootstrap, str(e)) from None
    try:
        missing = [t for t in topics if t not in set(admin.list_topics())]
        new = [NewTopic(t, partitions, 1, topic_configs={"cleanup.policy": "compact"} if t in compacted else {})
               for t in missing]
        if new:
            try:
                admin.create_topics(new)
            except TopicAlreadyExistsError:  # a concurrent creator won the race
                pass
        return missing
    finally:
        admin.close()


BROKER_STATE_FILE = "broker.json"  # written by serving/broker.py: {"pid", "port", "bootstrap", "log"}


def resolve_bootstrap(settings: Settings) -> str:
    """``settings.bootstrap_servers`` if set, else the address of the running embedded broker."""
    if settings.bootstrap_servers:
        return settings.bootstrap_servers
    state = Path(settings.state_dir) / BROKER_STATE_FILE
    try:
        info = json.loads(state.read_text())
        return str(info["bootstrap"])
    except (OSError, ValueError, KeyError):
        raise BrokerUnavailable(
            "(not configured)", f"AUDITSTREAM_BOOTSTRAP_SERVERS is empty and no embedded broker state at {state}"
        ) from None


def _bootstrap(settings: Settings) -> str:
    return resolve_bootstrap(settings)
