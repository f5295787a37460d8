"""The one small Kafka client interface every auditstream process uses (serving consumers, the
monitor's ingester, the RL consumer, load generators, benchmarks).

Two implementations sit behind it (:mod:`auditstream.kafka_clients`), chosen by
``Settings.kafka_client``: kafka-python (pure Python, the default; ``crc32c`` installed so record
checksums are native) and confluent-kafka (librdkafka, faster). Callers see only :class:`Record`, :class:`Producer` and :class:`Consumer`;
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
from typing import Callable, Protocol

from auditstream.errors import BrokerUnavailable, DeliveryFailed
from auditstream.settings import Settings


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


class Reader(Protocol):
    """Every partition of some topics, outside any consumer group (no join wait, no commits):
    for reading a compacted state topic or a log from the beginning, or tailing a topic."""

    def poll(self, max_records: int, timeout_ms: int) -> list[Record]: ...

    def caught_up(self) -> bool:
        """True once every partition was read up to its end offset as of the reader's start."""

    def close(self) -> None: ...


def _quiet_client_logs() -> None:
    # kafka-python logs every connection and metadata refresh at INFO; keep them out of the
    # process log unless someone configured the "kafka" logger on purpose.
    logger = logging.getLogger("kafka")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.WARNING)


def check_deliveries(pending: list[Delivery]) -> None:
    for d in pending:
        if not d.done:
            raise DeliveryFailed(d.topic, d.key, "not acknowledged before the flush timeout")
        if d.error is not None:
            raise DeliveryFailed(d.topic, d.key, d.error)


# --------------------------------------------------------------------------------------------
# factories


def make_producer(settings: Settings, bootstrap: str | None = None, client_id: str = "auditstream") -> Producer:
    """A producer for ``settings.kafka_client`` (acks=all: a send is acked once it is durable)."""
    from auditstream.kafka_clients import ConfluentProducer, KafkaPythonProducer

    bootstrap = bootstrap or _bootstrap(settings)
    _quiet_client_logs()
    if settings.kafka_client == "confluent":
        return ConfluentProducer(bootstrap, client_id)
    return KafkaPythonProducer(bootstrap, client_id)


def make_consumer(settings: Settings, group_id: str, topics: list[str], bootstrap: str | None = None,
                  on_assign: PartitionsCallback | None = None,
                  on_revoke: PartitionsCallback | None = None) -> Consumer:
    """A group member subscribed to ``topics``, manual commits, reading from the earliest offset."""
    from auditstream.kafka_clients import ConfluentConsumer, KafkaPythonConsumer

    bootstrap = bootstrap or _bootstrap(settings)
    _quiet_client_logs()
    cls = ConfluentConsumer if settings.kafka_client == "confluent" else KafkaPythonConsumer
    return cls(settings, bootstrap, group_id, list(topics), on_assign, on_revoke)


def make_reader(settings: Settings, topics: list[str], from_beginning: bool = True,
                bootstrap: str | None = None) -> Reader:
    """A :class:`Reader` of every partition of ``topics`` from the beginning, or (``from_beginning``
    False) from the current end on. Always kafka-python: readers are few and off the hot path."""
    from auditstream.kafka_clients import KafkaPythonReader

    _quiet_client_logs()
    return KafkaPythonReader(bootstrap or _bootstrap(settings), list(topics), from_beginning)


def read_to_end(settings: Settings, topics: list[str], bootstrap: str | None = None,
                timeout_s: float = 60.0) -> list[Record]:
    """Every record of ``topics`` up to their end offsets at the call (in partition order)."""
    import time

    reader = make_reader(settings, topics, True, bootstrap)
    try:
        out: list[Record] = []
        deadline = time.monotonic() + timeout_s
        while not reader.caught_up():
            if time.monotonic() > deadline:
                raise BrokerUnavailable(bootstrap or _bootstrap(settings),
                                        f"could not read {topics} to their end within {timeout_s:.0f} s")
            out.extend(reader.poll(10_000, 200))
        return out
    finally:
        reader.close()


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
