"""The ACL grants of docs/serving.md ("Who may write what") are what each process needs: every
topic a process makes sure exists is one its principal may Describe, and every topic whose limit it
reads one it may DescribeConfigs. On a cluster with ACLs a topic the principal may not Describe is
hidden from it, so serve and rl run, which asked for every shared topic (verdicts and transitions
too), tried to create those and died with kafka-python's TopicAuthorizationFailedError."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from auditstream.errors import AuditstreamError, TopicsNotCreated
from auditstream.settings import Settings

DOCS = Path(__file__).resolve().parents[2] / "docs" / "serving.md"
SERVE, MONITOR, DRIVER = "auditstream-serve", "auditstream-monitor", "auditstream-rl"


def documented_grants() -> dict[str, dict[str, set[str]]]:
    """principal -> topic (without the prefix; a model's own topics as ``requests.<m>`` and
    ``episode-state.<m>``) -> the operations the docs' ``acl`` lines grant on it."""
    text = DOCS.read_text()
    block = text[text.index("acl() {"):]
    block = block[:block.index("```")].replace("\\\n", " ")
    grants: dict[str, dict[str, set[str]]] = {}
    for line in block.splitlines():
        words = line.split()
        if len(words) < 2 or words[0] != "acl":
            continue
        operations = {words[i + 1] for i, w in enumerate(words) if w == "--operation"}
        for i, w in enumerate(words):
            if w == "--topic":
                topic = _logical(words[i + 1], "auditstream")
                grants.setdefault(words[1], {}).setdefault(topic, set()).update(operations)
    return grants


def _logical(topic: str, prefix: str) -> str:
    return re.sub(r"^(requests|episode-state)\..+$", r"\1.<m>", topic.removeprefix(prefix + "."))


def _allowed(principal: str, operation: str) -> set[str]:
    return {t for t, ops in documented_grants()[principal].items() if operation in ops}


class Stop(Exception):
    """Raised by a spy once it has seen what it came for."""


def test_the_docs_grant_each_process_describe_on_what_it_reads_and_writes() -> None:
    grants = documented_grants()
    assert set(grants) == {SERVE, MONITOR, DRIVER}
    for principal, topics in grants.items():
        assert all("Describe" in ops for ops in topics.values()), principal


def test_rl_run_asks_only_for_the_topics_its_principal_may_describe(monkeypatch, tiny_registry) -> None:
    import auditstream.kafka
    from tests.conftest import TINY_MODEL
    from training.rl.env_driver import RunArgs, run

    asked: list[str] = []

    def spy(settings, topics, compacted=(), bootstrap=None):
        asked.extend(topics)
        raise Stop

    monkeypatch.setattr(auditstream.kafka, "ensure_topics", spy)
    settings = Settings(bootstrap_servers="b:9092", models_dir=tiny_registry.root)
    with pytest.raises(Stop):
        run(settings, RunArgs(model=TINY_MODEL))
    assert asked and {_logical(t, settings.topic_prefix) for t in asked} <= _allowed(DRIVER, "Describe")


def test_the_monitor_asks_only_for_the_topics_its_principal_may_describe(monkeypatch) -> None:
    import auditstream.kafka
    import auditstream.kafka.limits
    from monitor.service import MonitorArgs, run_monitor

    asked: list[str] = []
    limits: list[str] = []
    monkeypatch.setattr(auditstream.kafka, "ensure_topics", lambda s, topics, *a, **k: asked.extend(topics))

    def limits_spy(settings, topics, bootstrap):
        limits.extend(topics)
        raise Stop

    monkeypatch.setattr(auditstream.kafka.limits, "topic_limits", limits_spy)
    settings = Settings(bootstrap_servers="b:9092")
    with pytest.raises(Stop):
        run_monitor(settings, MonitorArgs(), store=None, install_signals=False)  # type: ignore[arg-type]
    assert asked and {_logical(t, settings.topic_prefix) for t in asked} <= _allowed(MONITOR, "Describe")
    assert limits and {_logical(t, settings.topic_prefix) for t in limits} <= _allowed(MONITOR, "DescribeConfigs")


@pytest.mark.kafka
@pytest.mark.slow
def test_serve_starts_on_a_broker_that_shows_it_only_its_granted_topics(stream_settings, monkeypatch) -> None:
    """acl_sim: Metadata for all topics lists only those the principal may Describe; CreateTopics
    of any topic is refused (TOPIC_AUTHORIZATION_FAILED), even of one that exists."""
    import kafka
    from kafka.errors import TopicAuthorizationFailedError
    from prometheus_client import CollectorRegistry

    import serving.app
    from auditstream.registry import ModelRegistry
    from serving.metrics import ServeMetrics
    from tests.conftest import TINY_MODEL

    prefix = stream_settings.topic_prefix
    describable = _allowed(SERVE, "Describe")
    real_admin = kafka.KafkaAdminClient

    class AclAdmin(real_admin):  # type: ignore[misc,valid-type]
        def list_topics(self):
            return [t for t in super().list_topics() if _logical(t, prefix) in describable]

        def create_topics(self, new_topics, *args, **kwargs):
            raise TopicAuthorizationFailedError(f"CreateTopics denied for {[t.name for t in new_topics]}")

    monkeypatch.setattr(kafka, "KafkaAdminClient", AclAdmin)
    read_limits: list[str] = []
    real_limits = serving.app.topic_limits
    monkeypatch.setattr(serving.app, "topic_limits",
                        lambda s, topics, b: read_limits.extend(topics) or real_limits(s, topics, b))
    model = ModelRegistry(stream_settings.models_dir).load(TINY_MODEL)
    app = serving.app.ServeApp(stream_settings, model, ServeMetrics(TINY_MODEL, CollectorRegistry()))
    app.close()
    assert read_limits and {_logical(t, prefix) for t in read_limits} <= _allowed(SERVE, "DescribeConfigs")


def test_a_refused_create_says_which_topics_and_which_grant(monkeypatch) -> None:
    import kafka
    from kafka.errors import TopicAuthorizationFailedError

    from auditstream.kafka import factory

    class DeniedAdmin:
        def __init__(self, **kwargs) -> None:
            pass

        def list_topics(self) -> list[str]:
            return ["auditstream.predictions"]  # the others exist but are hidden from this principal

        def create_topics(self, new_topics, *args, **kwargs):
            raise TopicAuthorizationFailedError("denied")

        def close(self) -> None:
            pass

    monkeypatch.setattr(kafka, "KafkaAdminClient", DeniedAdmin)
    monkeypatch.setattr(factory, "check_broker", lambda *a, **k: None)
    settings = Settings(bootstrap_servers="b:9092", kafka_security_protocol="SASL_SSL",
                        kafka_sasl_mechanism="SCRAM-SHA-512", kafka_sasl_username="svc", kafka_sasl_password="pw")
    wanted = [settings.topic(t) for t in ("predictions", "verdicts", "transitions")]
    with pytest.raises(TopicsNotCreated) as refused:
        factory.ensure_topics(settings, wanted)
    message = str(refused.value)
    assert isinstance(refused.value, AuditstreamError)  # the CLI's one line, exit code 2
    assert "auditstream.verdicts, auditstream.transitions" in message and "auditstream.predictions" not in message
    assert "User:svc" in message and "Describe" in message and "create them by hand" in message
    assert "pw" not in message


def test_a_refused_create_for_another_reason_names_it(monkeypatch) -> None:
    import kafka
    from kafka.errors import InvalidReplicationFactorError

    from auditstream.kafka import factory

    class RefusingAdmin:
        def __init__(self, **kwargs) -> None:
            pass

        def list_topics(self) -> list[str]:
            return []

        def create_topics(self, new_topics, *args, **kwargs):
            raise InvalidReplicationFactorError("Replication factor: 3 larger than available brokers: 1.")

        def close(self) -> None:
            pass

    monkeypatch.setattr(kafka, "KafkaAdminClient", RefusingAdmin)
    monkeypatch.setattr(factory, "check_broker", lambda *a, **k: None)
    settings = Settings(bootstrap_servers="b:9092")
    with pytest.raises(TopicsNotCreated, match="larger than available brokers.*AUDITSTREAM_REPLICATION_FACTOR"):
        factory.ensure_topics(settings, [settings.topic("audit")])


def test_topic_limits_denied_assume_the_brokers_default_and_say_the_grant_once(monkeypatch, caplog) -> None:
    """Denied DescribeConfigs assumed 11 MB: outputs between ~1 MB and 11 MB went to a broker that
    refuses them, which stops the consumer for good; the guard must take the safe side."""
    from concurrent.futures import Future

    import confluent_kafka.admin
    from confluent_kafka import KafkaError, KafkaException

    from auditstream.kafka import limits

    class DeniedAdmin:
        def __init__(self, config) -> None:
            pass

        def describe_configs(self, resources, request_timeout=None):
            out = {}
            for resource in resources:
                future: Future = Future()
                future.set_exception(KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "denied")))
                out[resource] = future
            return out

    monkeypatch.setattr(confluent_kafka.admin, "AdminClient", DeniedAdmin)
    settings = Settings(bootstrap_servers="b:9092", topic_prefix="denied-limits")
    topics = [settings.topic("audit"), settings.topic("dead-letter")]
    with caplog.at_level(logging.WARNING, "auditstream.kafka.limits"):
        assert limits.topic_limits(settings, topics, "b:9092") == dict.fromkeys(topics, limits.KAFKA_DEFAULT_MESSAGE_BYTES)
        limits.topic_limits(settings, topics, "b:9092")
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "DescribeConfigs" in warnings[0] and all(t in warnings[0] for t in topics)
    limits.check_dead_letter_limit(topics[1], limits.KAFKA_DEFAULT_MESSAGE_BYTES)  # still starts
