"""The confluent-kafka consumer reads ahead a few batches per partition, not librdkafka's 100,000
records, and still reads every record once (on the embedded broker).

librdkafka's own statistics (fetch requests sent) show the bound at work: a reader seconds behind
a partition of 2,000 records does not keep asking the broker for more, where librdkafka's default
sends a fetch every ``fetch.wait.max.ms`` -- each of which the embedded broker answers by listing
every batch the partition holds (docs/serving.md)."""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import pytest

from auditstream.kafka import ensure_topics, make_consumer, make_producer
from auditstream.settings import Settings

confluent_kafka = pytest.importorskip("confluent_kafka")
LIBRDKAFKA_CONSUMER = confluent_kafka.Consumer

RECORDS = 2_000
VALUE = b"x" * 4096  # ~250 records per 1 MiB fetch of one partition


def _read_slowly(settings: Settings, topic: str, group: str, monkeypatch: pytest.MonkeyPatch) -> tuple[list[int], int]:
    """Offsets read by a slow reader (~3 s for the partition) and how many fetch requests its
    librdkafka sent meanwhile (its own statistics, once a second)."""
    fetches = [0]

    def with_statistics(config: dict) -> Any:
        def stats(text: str) -> None:
            brokers = json.loads(text).get("brokers", {}).values()
            fetches[0] = max(fetches[0], sum(b.get("req", {}).get("Fetch", 0) for b in brokers))
        return LIBRDKAFKA_CONSUMER({**config, "statistics.interval.ms": 1000, "stats_cb": stats})

    monkeypatch.setattr(confluent_kafka, "Consumer", with_statistics)
    consumer = make_consumer(settings, group, [topic])
    offsets: list[int] = []
    deadline = time.monotonic() + 90
    try:
        while len(offsets) < RECORDS and time.monotonic() < deadline:
            offsets += [r.offset for r in consumer.poll(settings.max_batch_size, 500)]
            time.sleep(0.012)
    finally:
        consumer.close()
    return offsets, fetches[0]


@pytest.mark.kafka
def test_read_ahead_is_bounded_and_every_record_is_read_once(stream_settings: Settings,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from auditstream.kafka import clients

    settings = dataclasses.replace(stream_settings, kafka_client="confluent", max_batch_size=8, partitions=1)
    topic = settings.topic("prefetch")
    ensure_topics(settings, [topic])
    producer = make_producer(settings)
    for i in range(RECORDS):
        producer.send(topic, str(i).encode(), VALUE)
    producer.flush(60)
    producer.close()

    bounded, bounded_fetches = _read_slowly(settings, topic, "prefetch-bounded", monkeypatch)
    monkeypatch.setattr(clients, "librdkafka_prefetch", lambda _batch: {})  # librdkafka's defaults
    unbounded, unbounded_fetches = _read_slowly(settings, topic, "prefetch-default", monkeypatch)

    for offsets in (bounded, unbounded):
        assert offsets == list(range(RECORDS)), "every record once, in order"
    # librdkafka's default fetches on (every fetch.wait.max.ms) while the reader is seconds behind;
    # with the bound it asks only when a partition's queue runs below a few batches
    assert unbounded_fetches >= 100, unbounded_fetches
    assert bounded_fetches * 3 <= unbounded_fetches, (bounded_fetches, unbounded_fetches)
