"""A record the Kafka client library itself cannot read fails alone (issue 13, poison at every
step): a header name that is not UTF-8 -- which librdkafka's C API or ``kcat -H`` write without
complaint -- made kafka-python raise on every poll of its partition and confluent-kafka raise a
SystemError, so one such record stopped ``serve`` and every restart met it again. Now it is
dead-lettered (``undecodable``) with what the client could read, and the records behind it on
the same partition are answered. On the embedded broker, with both client libraries."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from tests.serving.kafka_readers import read_topic

from auditstream import topics as T
from auditstream.settings import Settings
from auditstream.wire import DeadLetter, InferenceRequest, Prediction, Reason
from serving.app import ServeApp
from serving.metrics import ServeMetrics

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


class _NotUtf8(str):
    """A header name kafka-python's producer writes as bytes that are not UTF-8 (it calls
    ``.encode("utf-8")`` on the name): how a C client's raw header name looks on the wire."""

    def encode(self, *args: object, **kwargs: object) -> bytes:
        return b"\xff\xfe-trace"


def _request(i: int) -> InferenceRequest:
    return InferenceRequest(f"u-{i}", "tiny", np.random.default_rng(i).random((8, 8), dtype=np.float32), time.time())


@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_a_record_the_client_cannot_read_is_dead_lettered_and_its_partition_goes_on(
        stream_settings: Settings, tiny_registry, client: str) -> None:
    from kafka import KafkaProducer

    settings = dataclasses.replace(stream_settings, kafka_client=client)
    topic = settings.request_topic("tiny")
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    poison = _request(10)
    # All on partition 0, the unreadable record between readable ones, each in its own producer
    # batch (.get()): kafka-python cannot parse the rest of a batch past a record it cannot read
    # (they become unreadable dead letters too; docs/serving.md).
    for i in range(20):
        request = poison if i == 10 else _request(i)
        headers = [(_NotUtf8("h"), b"v")] if i == 10 else [("trace", b"t")]
        producer.send(topic, key=request.key, value=request.to_bytes(), headers=headers, partition=0).get(30)
    for i in range(20, 30):  # and some on another partition
        producer.send(topic, key=_request(i).key, value=_request(i).to_bytes(), partition=1)
    producer.flush()
    producer.close()

    app = ServeApp(settings, tiny_registry.model, ServeMetrics("tiny", CollectorRegistry()), use_control=False)
    try:
        stats = app.run(max_records=30)
    finally:
        app.close()
    assert stats.records_in == 30
    answered = {Prediction.from_bytes(r.value).request_id
                for r in read_topic(settings, settings.topic(T.PREDICTIONS), until_count=29)}
    assert answered == {f"u-{i}" for i in range(30) if i != 10}
    (letter,) = [DeadLetter.from_bytes(r.value) for r in read_topic(settings, settings.topic(T.DEAD_LETTER), until_count=1)]
    assert letter.reason == Reason.UNDECODABLE.value and "could not read this record" in letter.detail
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == (topic, 0, 10)
    if client == "confluent":  # librdkafka hands over the key and value; only the headers are lost
        assert letter.value == poison.to_bytes() and letter.key == poison.key and letter.headers == ()
    else:  # kafka-python cannot parse the record at all: where it was, not what it held
        assert letter.value is None
