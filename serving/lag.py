"""Consumer lag of one serving process, measured on a timer from outside its poll loop.

``auditstream_serve_consumer_lag_records`` must keep moving when the consumer is stuck: a
process blocked in a slow batch, or waiting on a broker, neither polls nor commits, so a lag
read from the consumer's own fetch positions (or refreshed after commits) would freeze at its
last healthy value exactly when the alert matters. :class:`LagProbe` therefore asks the broker,
every ``interval_s`` on a daemon thread with clients of its own: for each partition assigned
to *this* member, the partition's end offset (high watermark) minus the group's committed
offset -- records produced but not yet committed, the definition ``kafka-consumer-groups
--describe`` uses. Each
replica reports its own partitions, so the alert sums the gauge over replicas
(``sum by (model)``, deploy/prometheus/rules/auditstream.rules.yml).

The assignment comes from the loop's rebalance callbacks (:meth:`assigned` / :meth:`revoked`);
the probe's own client never joins the group. A failed measurement is logged and retried at the
next tick: the gauge is an observation, not a dependency of serving.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from auditstream.kafka import TopicPartition, kafka_python_config
from auditstream.settings import Settings

log = logging.getLogger(__name__)

LAG_REFRESH_S = 5.0
FETCH_TIMEOUT_S = 5.0  # longest one measurement waits for the fetch responses


class LagProbe:
    """Sets ``set_lag(records)`` every ``interval_s`` from end offsets minus committed offsets."""

    def __init__(self, settings: Settings, bootstrap: str, group_id: str, set_lag: Callable[[float], None],
                 interval_s: float = LAG_REFRESH_S) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s={interval_s} must be > 0")
        self._security = kafka_python_config(settings)  # the same TLS/SASL as the loop's own clients
        self.bootstrap, self.group_id, self.set_lag, self.interval_s = bootstrap, group_id, set_lag, interval_s
        self._assigned: frozenset[TopicPartition] = frozenset()  # replaced, never mutated: read from the thread
        self._client: Any = None  # a group-less consumer: end offsets
        self._admin: Any = None  # the group's committed offsets
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lag-probe-{group_id}", daemon=True)

    # -- the loop's rebalance callbacks (on the loop's thread)

    def assigned(self, partitions: list[TopicPartition]) -> None:
        self._assigned = self._assigned | frozenset(partitions)

    def revoked(self, partitions: list[TopicPartition]) -> None:
        self._assigned = self._assigned - frozenset(partitions)

    @property
    def owned(self) -> int:
        """Partitions this member owns now."""
        return len(self._assigned)

    # -- the probe thread

    def start(self) -> "LagProbe":
        self._thread.start()
        return self

    def measure(self) -> int:
        """Records not yet committed on the partitions assigned to this member (0 with none)."""
        partitions = sorted(self._assigned)
        if not partitions:
            return 0
        from kafka import TopicPartition as TP

        tps = [TP(t, p) for t, p in partitions]
        ends = self._end_offsets(tps)
        committed = self._committed()
        beginnings = None
        total = 0
        for tp in tps:
            offset = committed.get((tp.topic, tp.partition))
            if offset is None:  # nothing committed yet: the group starts at the earliest offset
                beginnings = beginnings or self._fetcher().beginning_offsets(tps)
                offset = beginnings[tp]
            total += max(0, ends[tp] - offset)
        return total

    def _end_offsets(self, tps: list) -> dict:
        """Each partition's high watermark, from a fetch response of this tick.

        ListOffsets alone would do on Kafka, but the embedded Tansu broker answers it with the
        last record *batch's* base offset + 1 (under-reporting a batch of n records by n - 1),
        while its fetch responses carry the true high watermark. So: seek to the listed end (on
        Kafka that is the end: an empty fetch; on Tansu at most the last batch comes back) and
        read the high watermark of the fetch.
        """
        client = self._fetcher()
        client.assign([])  # a fresh assignment forgets the high watermarks of earlier ticks
        client.assign(tps)
        listed = client.end_offsets(tps)
        for tp in tps:
            client.seek(tp, listed[tp])
        deadline = time.monotonic() + FETCH_TIMEOUT_S
        while time.monotonic() < deadline and any(client.highwater(tp) is None for tp in tps):
            client.poll(timeout_ms=100, max_records=100_000)
        return {tp: max(listed[tp], client.highwater(tp) or 0) for tp in tps}

    def _committed(self) -> dict[TopicPartition, int]:
        admin = self._admin_client()
        offsets = admin.list_group_offsets({self.group_id: None})[self.group_id]
        return {(tp.topic, tp.partition): om.offset for tp, om in offsets.items() if om.offset >= 0}

    def _fetcher(self) -> Any:
        if self._client is None:
            from kafka import KafkaConsumer

            # No group: it only reads end offsets; it never joins or commits.
            self._client = KafkaConsumer(bootstrap_servers=self.bootstrap, client_id=f"{self.group_id}-lag",
                                         enable_auto_commit=False, fetch_max_wait_ms=10, **self._security)
        return self._client

    def _admin_client(self) -> Any:
        if self._admin is None:
            from kafka import KafkaAdminClient

            self._admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id=f"{self.group_id}-lag-admin",
                                           **self._security)
        return self._admin

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval_s):
                try:
                    self.set_lag(self.measure())
                except Exception as e:  # noqa: BLE001 - an observation failed, serving goes on; retried next tick
                    log.warning("consumer lag of %s not measured: %r", self.group_id, e)
                    self._close_client()  # reconnect at the next tick
        finally:
            self._close_client()

    def _close_client(self) -> None:
        for client in (self._client, self._admin):
            if client is not None:
                try:
                    client.close()
                except Exception as e:  # noqa: BLE001 - closing a broken client must not mask why it broke
                    log.debug("closing a lag client: %r", e)
        self._client = self._admin = None

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
