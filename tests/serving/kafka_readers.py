"""Helpers for the broker tests: read topics back without joining a group (no ~5 s join wait)."""

from __future__ import annotations

import json
import time

from auditstream.settings import Settings


def read_topic(settings: Settings, topic: str, until_count: int | None = None, timeout_s: float = 60.0,
               idle_s: float = 2.0) -> list:
    """Every record of ``topic`` (kafka-python ConsumerRecords), from the beginning of all partitions.

    Stops when ``until_count`` records were read, or nothing new arrived for ``idle_s`` after the
    current end offsets were reached, or at ``timeout_s``.
    """
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not parts:
            return []
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        out: list = []
        deadline, last_new = time.monotonic() + timeout_s, time.monotonic()
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=200)
            got = [r for recs in batch.values() for r in recs]
            out.extend(got)
            if got:
                last_new = time.monotonic()
            if until_count is not None and len(out) >= until_count:
                break
            if until_count is None and time.monotonic() - last_new > idle_s:
                break
        return out
    finally:
        consumer.close()


def request_ids(records: list) -> list[str]:
    return [json.loads(r.value)["request_id"] for r in records]


def committed_offsets(settings: Settings, group: str) -> dict[tuple[str, int], int]:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    try:
        offsets = admin.list_group_offsets({group: None})[group]
        return {(tp.topic, tp.partition): om.offset for tp, om in offsets.items() if om.offset >= 0}
    finally:
        admin.close()
