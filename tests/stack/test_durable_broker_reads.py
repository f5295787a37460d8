"""A group consumer keeps reading a durable embedded broker whose log has grown.

Tansu 0.6.0's S3 engine lists a partition's stored batches within what is left of the fetch's wait
and answers nothing when the listing outlasts it; behind moto the listing grows with the bucket.
At the 10 ms fetch wait that suits the in-memory broker, a consumer of 12 partitions was fed
nothing after ~750 one-record batches (docs/serving.md, "Consumer group settings"), so clients of
the durable broker wait longer (:func:`auditstream.kafka.fetch_wait_ms`)."""

from __future__ import annotations

import dataclasses
import time

import pytest

from auditstream.kafka import DURABLE_FETCH_MAX_WAIT_MS, fetch_wait_ms, make_consumer, make_producer
from auditstream.settings import Settings
from stack import broker as embedded

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

BATCHES = 1_500  # about twice where the 10 ms wait stopped returning records


def write_one_record_batches(settings: Settings, topic: str, count: int) -> None:
    producer = make_producer(settings)
    try:
        for i in range(count):
            producer.send(topic, f"k{i}".encode(), f"v{i}".encode())
            if i % 12 == 11:  # a flush per 12 sends: about one record per partition's batch
                producer.flush(30)
        producer.flush(30)
    finally:
        producer.close()


@pytest.mark.parametrize("client", ["confluent", "kafka-python"])
def test_a_group_consumer_reads_every_record_of_a_long_durable_log(tmp_path, client: str) -> None:
    settings = Settings(state_dir=tmp_path / "state", partitions=12, topic_prefix="long", kafka_client=client)
    info = embedded.start(settings, options=embedded.BrokerOptions(durable=True))
    try:
        settings = dataclasses.replace(settings, bootstrap_servers=info.bootstrap)
        assert fetch_wait_ms(settings, info.bootstrap) == DURABLE_FETCH_MAX_WAIT_MS
        topic = settings.topic("predictions")
        write_one_record_batches(settings, topic, BATCHES)
        consumer = make_consumer(settings, "g-long", [topic])
        seen: set[bytes] = set()
        deadline = time.monotonic() + 180
        try:
            while len(seen) < BATCHES and time.monotonic() < deadline:
                seen |= {r.value for r in consumer.poll(500, 500)}
        finally:
            consumer.close()
        assert len(seen) == BATCHES, f"read {len(seen)} of {BATCHES} records within 180 s"
    finally:
        embedded.stop(settings, storage=True)
