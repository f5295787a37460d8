"""ensure_topics reads each topic's own answer to CreateTopics.

kafka-python raises the *first* non-zero error code of a CreateTopics response. When one topic of
the request already existed (a concurrent creator won the race, or a topic hidden from
list_topics by a missing Describe ACL that the principal may still Create) and the next was
refused (TOPIC_AUTHORIZATION_FAILED, a policy), ensure_topics saw TopicAlreadyExistsError, let it
pass, and reported every topic as created: the process went on to use a topic that is not there.
Now it asks for each topic's code (``raise_errors=False``): 36 is fine, 29/31 name the grant, any
other code its name, and only the refused topics are named."""

from __future__ import annotations

import dataclasses
import uuid

import kafka
import pytest
from kafka.errors import TopicAlreadyExistsError, for_code
from kafka.future import Future

from auditstream.errors import TopicsNotCreated
from auditstream.kafka import factory
from auditstream.settings import Settings


def _fresh(broker: Settings) -> Settings:
    return dataclasses.replace(broker, topic_prefix=f"t{uuid.uuid4().hex[:10]}")


class _Hidden(kafka.KafkaAdminClient):
    """The real admin client, against the real broker, with ``hidden`` topics left out of
    list_topics (what a missing Describe ACL does) and ``codes`` written into the broker's real
    CreateTopics answer for the topics named (what the broker's ACLs or policy would answer)."""

    hidden: set[str] = set()
    codes: dict[str, int] = {}

    def __init__(self, **config) -> None:
        super().__init__(**config)
        send = self._manager.send

        def send_rewriting(request, *args, **kwargs):
            sent = send(request, *args, **kwargs)
            if type(request).__name__ != "CreateTopicsRequest" or not self.codes:
                return sent
            answer = Future()

            def rewrite(response):
                for topic in response.topics:
                    if topic.name in self.codes:
                        topic.error_code, topic.error_message = self.codes[topic.name], "from the test's broker policy"
                answer.success(response)

            sent.add_callback(rewrite)
            sent.add_errback(answer.failure)
            return answer

        self._manager.send = send_rewriting

    def list_topics(self):
        return [t for t in super().list_topics() if t not in self.hidden]


def _use(monkeypatch, hidden=(), codes=None) -> None:
    monkeypatch.setattr(_Hidden, "hidden", set(hidden))
    monkeypatch.setattr(_Hidden, "codes", dict(codes or {}))
    monkeypatch.setattr(kafka, "KafkaAdminClient", _Hidden)


def test_a_topic_that_already_exists_is_not_reported_created(broker: Settings, monkeypatch) -> None:
    settings = _fresh(broker)
    existing, new = settings.topic("audit"), settings.topic("verdicts")
    assert factory.ensure_topics(settings, [existing]) == [existing]
    _use(monkeypatch, hidden={existing})  # it looks missing: the request asks for it again
    assert factory.ensure_topics(settings, [existing, new]) == [new]
    monkeypatch.undo()
    assert factory.ensure_topics(settings, [existing, new]) == []  # both there


@pytest.mark.parametrize("code, denied", [(29, True), (31, True), (37, False), (44, False)])
def test_a_refusal_behind_an_existing_topic_is_not_reported_created(broker: Settings, monkeypatch, code: int,
                                                                   denied: bool) -> None:
    """The reviewer's case on the real broker and client: the first topic exists (36), the next is
    refused; the third is created."""
    settings = _fresh(broker)
    existing, refused, new = settings.topic("audit"), settings.topic("verdicts"), settings.topic("decisions")
    factory.ensure_topics(settings, [existing])
    _use(monkeypatch, hidden={existing}, codes={refused: code})
    with pytest.raises(TopicsNotCreated) as e:
        factory.ensure_topics(settings, [existing, refused, new])
    message = str(e.value)
    assert e.value.topics == [refused] and e.value.denied is denied, message
    assert existing not in message and new not in message
    assert for_code(code).__name__ in message
    if denied:
        assert "grant this process's principal Describe" in message and "kafka-acls.sh" in message
    else:
        assert "create them by hand" in message and "kafka-acls.sh" not in message


class _Answering:
    """kafka-python 3.0's KafkaAdminClient.create_topics, as far as ensure_topics sees it: with
    raise_errors (the default) the first non-zero code of the answer is raised; without, the
    answer comes back as ``response.to_dict()`` without throttle_time_ms."""

    codes: dict[str, int] = {}

    def __init__(self, **config) -> None:
        pass

    def list_topics(self) -> list[str]:
        return []

    def create_topics(self, new_topics, timeout_ms=None, validate_only=False, raise_errors=True,
                      wait_for_metadata=False) -> dict:
        answer = {"topics": [{"name": t.name, "topic_id": None if self.codes.get(t.name) else "01a2-...",
                              "error_code": self.codes.get(t.name, 0),
                              "error_message": for_code(self.codes[t.name]).description if self.codes.get(t.name) else None,
                              "topic_config_error_code": 0, "num_partitions": 12, "replication_factor": 3}
                             for t in new_topics]}  # fmt: skip
        if raise_errors:
            for topic in answer["topics"]:
                if topic["error_code"]:
                    raise for_code(topic["error_code"])(f"Request failed with response {answer}")
        return answer

    def close(self) -> None:
        pass


def test_each_topics_code_in_kafka_pythons_answer_is_read(monkeypatch) -> None:
    monkeypatch.setattr(kafka, "KafkaAdminClient", _Answering)
    monkeypatch.setattr(factory, "check_broker", lambda *a, **k: None)
    settings = Settings(bootstrap_servers="b:9092", kafka_security_protocol="SASL_SSL",
                        kafka_sasl_mechanism="SCRAM-SHA-512", kafka_sasl_username="svc", kafka_sasl_password="pw")
    a, b, c, d = (settings.topic(t) for t in ("audit", "verdicts", "decisions", "control"))

    monkeypatch.setattr(_Answering, "codes", {a: 36, b: 29, d: 29})
    with pytest.raises(TopicsNotCreated) as e:
        factory.ensure_topics(settings, [a, b, c, d])
    assert e.value.topics == [b, d] and e.value.denied
    assert f"did not create topics {b}, {d} (TopicAuthorizationFailedError" in str(e.value)
    assert "User:svc" in str(e.value) and a not in str(e.value) and c not in str(e.value)

    monkeypatch.setattr(_Answering, "codes", {a: 36, b: 38, c: 29})  # denied first, with the others' errors
    with pytest.raises(TopicsNotCreated) as e:
        factory.ensure_topics(settings, [a, b, c])
    assert e.value.topics == [c] and e.value.denied

    monkeypatch.setattr(_Answering, "codes", {a: 36, b: 38, c: 87})
    with pytest.raises(TopicsNotCreated) as e:
        factory.ensure_topics(settings, [a, b, c])
    assert e.value.topics == [b, c] and not e.value.denied
    assert f"{b}: InvalidReplicationFactorError" in str(e.value) and f"{c}: InvalidRecordError" in str(e.value)

    monkeypatch.setattr(_Answering, "codes", {a: 36})
    assert factory.ensure_topics(settings, [a, b]) == [b]
    monkeypatch.setattr(_Answering, "codes", {a: 36, b: 36})
    assert factory.ensure_topics(settings, [a, b]) == []
    assert issubclass(for_code(36), TopicAlreadyExistsError)


def test_topic_limits_give_each_unanswered_topic_its_own_error(monkeypatch, caplog) -> None:
    """Each topic whose DescribeConfigs failed for another reason than the ACLs was warned about
    with the *last* topic's error: a timeout on one and an unknown topic on another read as two
    unknown topics."""
    import logging
    from concurrent.futures import Future as Result

    import confluent_kafka.admin
    from confluent_kafka import KafkaError, KafkaException

    from auditstream.kafka import limits

    settings = Settings(bootstrap_servers="b:9092", topic_prefix=f"t{uuid.uuid4().hex[:10]}")
    slow, gone, denied, fine = (settings.topic(t) for t in ("audit", "dead-letter", "decisions", "verdicts"))
    errors = {slow: KafkaError(KafkaError._TIMED_OUT, "slow broker"),
              gone: KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART, "no such topic"),
              denied: KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "denied")}

    class Admin:
        def __init__(self, config) -> None:
            pass

        def describe_configs(self, resources, request_timeout=None):
            out = {}
            for resource in resources:
                result: Result = Result()
                if resource.name in errors:
                    result.set_exception(KafkaException(errors[resource.name]))
                else:
                    result.set_result({})
                out[resource] = result
            return out

    monkeypatch.setattr(confluent_kafka.admin, "AdminClient", Admin)
    with caplog.at_level(logging.WARNING, "auditstream.kafka.limits"):
        got = limits.topic_limits(settings, [slow, gone, denied, fine], "b:9092")
    assert got == {slow: limits.KAFKA_DEFAULT_MESSAGE_BYTES, gone: limits.KAFKA_DEFAULT_MESSAGE_BYTES,
                   denied: limits.KAFKA_DEFAULT_MESSAGE_BYTES, fine: limits.MAX_PRODUCE_BYTES}
    warnings = [r.getMessage() for r in caplog.records]
    about = {t: [w for w in warnings if t in w] for t in (slow, gone, denied)}
    assert all(len(found) == 1 for found in about.values()), warnings
    assert "slow broker" in about[slow][0] and "no such topic" not in about[slow][0]
    assert "no such topic" in about[gone][0] and "slow broker" not in about[gone][0]
    assert "DescribeConfigs" in about[denied][0] and "slow broker" not in about[denied][0]
    assert not any(fine in w for w in warnings)


def test_topics_created_with_fewer_replicas_than_the_cluster_could_give_are_warned_about() -> None:
    from auditstream.kafka.factory import replication_warning

    message = replication_warning({"a.audit": 1, "a.requests.m": 1, "a.control": 3}, brokers=3)
    assert message is not None and message.startswith("created a.audit, a.requests.m with 1 replica on a cluster "
                                                      "of 3 brokers: losing that broker loses their records")
    assert "AUDITSTREAM_REPLICATION_FACTOR=3" in message
    assert "AUDITSTREAM_REPLICATION_FACTOR=2" in replication_warning({"t": 1}, brokers=2)
    assert "with 2 replicas on a cluster of 5 brokers: losing 2 brokers" in replication_warning({"t": 2}, brokers=5)
    assert replication_warning({"t": 1}, brokers=1) is None  # the embedded broker: nothing to replicate to
    assert replication_warning({"t": 3}, brokers=6) is None
    assert replication_warning({"t": 0}, brokers=3) is None  # the answer did not say


def test_the_embedded_broker_is_no_replication_warning(broker, caplog, monkeypatch) -> None:
    """The real CreateTopics answer carries each topic's replication factor (1 on Tansu's one
    broker) and DescribeCluster one broker: nothing is said."""
    settings = _fresh(broker)
    asked = []
    real = factory.replication_warning
    monkeypatch.setattr(factory, "replication_warning", lambda *a: asked.append(a) or real(*a))
    with caplog.at_level("WARNING", logger="auditstream.kafka.factory"):
        created = factory.ensure_topics(settings, [settings.topic_prefix + ".audit"])
    assert created == [settings.topic_prefix + ".audit"]
    assert asked == [({settings.topic_prefix + ".audit": 1}, 1)]  # what the real broker answered
    assert not [r for r in caplog.records if "replica" in r.getMessage()]
