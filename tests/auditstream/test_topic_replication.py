"""Topics auditstream creates take their replication factor from the settings, and by default
from the broker (a fixed 1 beside a cluster's ``min.insync.replicas`` 2 refused every acks=all
write to them). On the embedded broker, which records the factor asked for."""

from __future__ import annotations

import dataclasses
import uuid

import pytest

from auditstream.errors import ConfigError
from auditstream.kafka import ensure_topics
from auditstream.settings import Settings

pytestmark = [pytest.mark.kafka]


def _replicas(settings: Settings, topic: str) -> set[int]:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    try:
        [described] = admin.describe_topics([topic])
        return {len(p["replica_nodes"]) for p in described["partitions"]}
    finally:
        admin.close()


@pytest.mark.parametrize("factor, expected", [(0, 1), (1, 1), (3, 3)])  # 0: the broker's default (1 here)
def test_created_topics_have_the_replication_factor_asked_for(broker: Settings, factor: int, expected: int) -> None:
    settings = dataclasses.replace(broker, topic_prefix=f"rf{uuid.uuid4().hex[:8]}", replication_factor=factor,
                                   partitions=2)
    topic = settings.topic("predictions")
    assert ensure_topics(settings, [topic]) == [topic]
    assert _replicas(settings, topic) == {expected}


@pytest.mark.parametrize("value", ["-1", "32768", "two"])
def test_an_odd_replication_factor_is_refused_at_start(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("AUDITSTREAM_REPLICATION_FACTOR", value)
    with pytest.raises(ConfigError, match="replication_factor|REPLICATION_FACTOR"):
        Settings.from_env()
