"""The small Kafka client interface: :class:`Record`, :class:`Delivery`, and the
:class:`Producer`, :class:`Consumer` and :class:`Reader` protocols that both client adapters
(:mod:`auditstream.kafka.clients`) implement and every other module uses."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Protocol

from auditstream.errors import DecodeError, DeliveryFailed
from auditstream.wire.codec import Reason

# Tansu answers a fetch only when this wait is over, even if records arrived meanwhile: at 100 ms
# (a common default) a request's p50 latency through one consumer was 70 ms, at 10 ms 34 ms
# (tiny model, 200 req/s). An idle consumer then sends ~100 small fetches a second.
FETCH_MAX_WAIT_MS = 10
# The embedded Tansu build (v0.6.0-133, 510f3e2) stops taking a partition's listed batches once the
# fetch's max wait has passed (dynostore.rs, has_deadline_expired): a listing slower than the wait
# yields nothing. Behind moto (which scans the whole bucket) one listing took ~40 ms at 2,400
# stored batches, and grows with them: at 10 ms a consumer of 12 partitions got empty fetches for
# ever ~70 s into a 10/s feed; at 500 ms it read all 2,400 (docs/serving.md, "Fault suite").
DURABLE_FETCH_MAX_WAIT_MS = 500

Headers = tuple[tuple[str, bytes | None], ...]  # a header value may be null
TopicPartition = tuple[str, int]
PartitionsCallback = Callable[[list[TopicPartition]], None]


@dataclass(frozen=True, slots=True)
class Record:
    """One consumed record. ``where`` names it in errors and dead letters.

    ``unreadable``: why the client library could not read all of the record (say a header name
    that is not UTF-8); what it could read is kept. Such a record is still handed to the consumer,
    so it is dead-lettered like any bad record instead of failing every poll of its partition.
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers = ()
    timestamp_ms: int = 0
    unreadable: str = ""

    @property
    def where(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"

    def check_readable(self) -> None:
        """Raise DecodeError (``undecodable``) if the client could not read the whole record."""
        if self.unreadable:
            raise DecodeError(Reason.UNDECODABLE.value, f"the Kafka client could not read this record: {self.unreadable}")


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

    def rewind(self, offsets: dict[TopicPartition, int]) -> None:
        """Read these partitions again from these offsets (called from the revoke callback, while
        they are still assigned, for records polled but never processed)."""

    def lag(self) -> dict[TopicPartition, int]:
        """Records behind the last known end of each assigned partition (from fetch responses)."""

    def close(self) -> None: ...


class Reader(Protocol):
    """Every partition of some topics, outside any consumer group (no join wait, no commits):
    for reading a compacted state topic or a log from the beginning, or tailing a topic."""

    def poll(self, max_records: int, timeout_ms: int) -> list[Record]: ...

    def caught_up(self) -> bool:
        """True once every partition was read up to its end offset as of the reader's start (as
        the broker reported it: a lower bound on Tansu, so read on until a poll is empty)."""

    def close(self) -> None: ...


class TopicLog(Protocol):
    """Positions in some topics and the records after them, outside any consumer group: how the
    outbox publisher finds what a round left open by a crash already wrote (store/outbox.py)."""

    def end_offsets(self, topics: list[str]) -> dict[TopicPartition, int]:
        """The end offset of every partition of ``topics`` now: a record sent later lands at or after it."""

    def read_from(self, positions: dict[TopicPartition, int], topics: list[str], timeout_s: float) -> list[Record]:
        """Every record of ``topics`` from ``positions`` (a partition not in it: from its beginning)
        to the end of each partition (at least its end offset as of the call, and on until a
        fetch returns nothing); raises BrokerUnavailable if that takes over ``timeout_s``."""

    def close(self) -> None: ...


def quiet_client_logs() -> None:
    # kafka-python logs every connection and metadata refresh at INFO; keep them out of the
    # process log unless someone configured the "kafka" logger on purpose.
    logger = logging.getLogger("kafka")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.WARNING)
    # Its network selector warns when one step of its event loop took over 0.1 s ("Task ... ran for
    # 0.146s (>0.100s threshold). It is blocking the event loop"): on a loaded machine that is the
    # machine's load, not a fault, and it came out of every 'broker start', 'dlq replay', 'monitor'.
    selector = logging.getLogger("kafka.net.selector")
    if selector.level == logging.NOTSET:
        selector.setLevel(logging.ERROR)
    # Whatever the level: its admin client logs its whole configuration at DEBUG, SASL password
    # and key passphrase included -- and DEBUG is what someone chasing a SASL failure turns on.
    admin = logging.getLogger("kafka.admin.client")
    if not any(isinstance(f, _NoClientConfigs) for f in admin.filters):
        admin.addFilter(_NoClientConfigs())


class _NoClientConfigs(logging.Filter):
    """Drops kafka-python's log records that print a client's configuration (secrets and all)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "with configuration" not in str(record.msg)


def check_deliveries(pending: list[Delivery]) -> None:
    for d in pending:
        if not d.done:
            raise DeliveryFailed(d.topic, d.key, "not acknowledged before the flush timeout")
        if d.error is not None:
            raise DeliveryFailed(d.topic, d.key, d.error)
