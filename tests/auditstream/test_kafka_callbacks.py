"""A rebalance callback that fails stops the consumer's poll, on the embedded broker.

kafka-python calls the rebalance listener inside ``poll()`` and only logs what it raises; a
delivery failure while checkpointing on revoke would be swallowed and stale records processed.
The adapter keeps the error and raises it from ``poll()`` (confluent-kafka raises it itself)."""

from __future__ import annotations

import dataclasses
import time

import pytest

from auditstream.errors import DeliveryFailed
from auditstream.kafka import make_consumer
from auditstream.settings import Settings


@pytest.mark.kafka
@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_an_error_in_the_assign_callback_is_raised_from_poll(stream_settings: Settings, client: str) -> None:
    settings = dataclasses.replace(stream_settings, kafka_client=client)

    def failing(partitions: list) -> None:
        raise DeliveryFailed("t.state", b"k", "broker gone while checkpointing")

    consumer = make_consumer(settings, f"cb-{client}", [settings.request_topic("tiny")], on_assign=failing)
    try:
        deadline = time.monotonic() + 60
        with pytest.raises(DeliveryFailed, match="broker gone while checkpointing"):
            while time.monotonic() < deadline:
                consumer.poll(10, 500)
            pytest.fail("no assignment within 60 s")
    finally:
        consumer.close()
