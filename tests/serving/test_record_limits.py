"""Records too large for a topic, on the embedded broker with both clients: a request so large that
its dead letter would exceed what the producers send used to stop `serve` for good (the loop
could not deliver, committed nothing, and met the record again after the restart); a topic that
takes less than an output needs (a hand-made audit topic) did the same. Now the letter fits and
says where an original it cannot carry is, and everything after it is answered."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
import uuid

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from tests.conftest import TINY_MODEL
from tests.serving.kafka_readers import read_topic, request_ids

from auditstream import topics as T
from auditstream.kafka import ensure_model_topics, ensure_topics
from auditstream.kafka.limits import KAFKA_DEFAULT_MESSAGE_BYTES, MAX_PRODUCE_BYTES, topic_limits
from auditstream.settings import Settings
from auditstream.wire import DeadLetter, InferenceRequest, Prediction, Route
from serving.app import ServeApp
from serving.dlq import replay
from serving.loadgen import inputs_for
from serving.metrics import ServeMetrics

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def _configs(settings: Settings, topics: list[str]) -> dict[str, dict[str, str]]:
    from confluent_kafka.admin import AdminClient, ConfigResource

    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers})
    futures = admin.describe_configs([ConfigResource("topic", t) for t in topics])
    return {r.name: {k: v.value for k, v in f.result(10).items()} for r, f in futures.items()}


def _fresh(broker: Settings, tiny_registry, tmp_path) -> Settings:
    return dataclasses.replace(broker, topic_prefix=f"t{uuid.uuid4().hex[:10]}", models_dir=tiny_registry.root,
                               state_dir=tmp_path / "state")


def test_auditstreams_topics_take_its_largest_records_and_request_topics_keep_the_brokers_limit(
        broker: Settings, tiny_registry, tmp_path, caplog) -> None:
    settings = _fresh(broker, tiny_registry, tmp_path)
    ensure_model_topics(settings, [TINY_MODEL])
    outputs = [settings.topic(t) for t in (T.PREDICTIONS, T.AUDIT, T.DEAD_LETTER)] + \
        [settings.episode_state_topic(TINY_MODEL)]
    request = settings.request_topic(TINY_MODEL)
    configs = _configs(settings, outputs + [request])
    assert all(configs[t]["max.message.bytes"] == str(MAX_PRODUCE_BYTES) for t in outputs)
    assert configs[settings.episode_state_topic(TINY_MODEL)]["cleanup.policy"] == "compact"
    assert "max.message.bytes" not in configs[request]
    # what serve reads: a topic's own setting, capped at what the clients send; else that cap
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    try:
        admin.create_topics([NewTopic(settings.topic("small"), 1, 1, topic_configs={"max.message.bytes": "65536"}),
                             NewTopic(settings.topic("huge"), 1, 1, topic_configs={"max.message.bytes": "999999999"})])
    finally:
        admin.close()
    limits = topic_limits(settings, [settings.topic("small"), settings.topic("huge"), request,
                                     settings.topic("missing")], settings.bootstrap_servers)
    assert limits == {settings.topic("small"): 65_536, settings.topic("huge"): MAX_PRODUCE_BYTES,
                      request: MAX_PRODUCE_BYTES, settings.topic("missing"): MAX_PRODUCE_BYTES}
    # no broker to ask: Kafka's default, the safe guess (a record over the real limit would stop
    # the consumer; one under it is only dead-lettered), said, not fatal
    with caplog.at_level(logging.WARNING, "auditstream.kafka.limits"):
        assert topic_limits(settings, [request], "127.0.0.1:1") == {request: KAFKA_DEFAULT_MESSAGE_BYTES}
    assert "max.message.bytes" in caplog.text


def _request(request_id: str, elements: int) -> bytes:
    return InferenceRequest(request_id, TINY_MODEL, np.zeros((elements,), np.float32), time.time()).to_bytes()


@pytest.mark.parametrize("client", ["confluent", "kafka-python"])
def test_requests_too_large_to_carry_do_not_stop_serving(stream_settings: Settings, tiny_registry, client) -> None:
    from confluent_kafka import Producer

    settings = dataclasses.replace(stream_settings, kafka_client=client)
    topic = settings.request_topic(TINY_MODEL)
    carried = _request("big-7mib", 7 * 1024 * 1024 // 4 * 3 // 4)  # ~7 MiB: its letter (~9.7 MB) is carried
    pointer = _request("big-12mib", 12 * 1024 * 1024 // 4 * 3 // 4)  # ~12 MiB: its letter would be ~16 MB
    assert len(carried) * 4 // 3 < MAX_PRODUCE_BYTES < len(pointer) * 4 // 3
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers, "message.max.bytes": 20_000_000})
    inputs = inputs_for(tiny_registry.model.card)
    valid = []
    for value, key in ((carried, b"big-7mib"), (pointer, b"big-12mib")):
        producer.produce(topic, key=key, value=value, headers=[("trace", b"t")])
        for _ in range(10):
            rid = f"ok-{len(valid)}"
            producer.produce(topic, key=rid, value=InferenceRequest(rid, TINY_MODEL, next(inputs), time.time()).to_bytes())
            valid.append(rid)
    assert producer.flush(60) == 0
    app = ServeApp(settings, tiny_registry.model, ServeMetrics(TINY_MODEL, CollectorRegistry()))
    try:
        app.run(max_records=22)
    finally:
        app.close()
    answered = read_topic(settings, settings.topic(T.PREDICTIONS), until_count=20)
    assert sorted(request_ids(answered)) == sorted(valid)
    assert all(Prediction.from_bytes(r.value).route in set(Route) for r in answered)
    letters = [DeadLetter.from_bytes(r.value)
               for r in read_topic(settings, settings.topic(T.DEAD_LETTER), until_count=2, timeout_s=120)]
    first, second = sorted(letters, key=lambda dl: dl.omitted_bytes)
    assert first.reason == second.reason == "too_large"
    assert first.value == carried and first.headers == (("trace", b"t"),) and not first.omitted_bytes
    assert second.value is None and second.omitted_bytes == len(pointer) + len("big-12mib") + len("trace") + 1
    assert second.value_sha256 == hashlib.sha256(pointer).hexdigest() and f"@{second.source_offset}" in second.detail
    report = replay(settings, reasons=["too_large"])
    assert report.replayed == {"too_large": 1} and report.not_carried == 1


def test_an_audit_topic_that_takes_less_than_an_audit_item_dead_letters_those_items(
        broker: Settings, tiny_registry, tmp_path) -> None:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    settings = _fresh(broker, tiny_registry, tmp_path)
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    try:  # made by hand, before auditstream, with a limit below an audit item (~1.5 KB here)
        admin.create_topics([NewTopic(settings.topic(T.AUDIT), 3, 1, topic_configs={"max.message.bytes": "1200"})])
    finally:
        admin.close()
    ensure_model_topics(settings, [TINY_MODEL])
    ensure_topics(settings, [settings.request_topic(TINY_MODEL)])
    from auditstream.kafka import make_producer
    from serving.loadgen import produce_requests

    producer = make_producer(settings)
    try:
        sent = produce_requests(producer, settings.request_topic(TINY_MODEL), TINY_MODEL,
                                inputs_for(tiny_registry.model.card), 200, progress=False)
    finally:
        producer.close()
    app = ServeApp(settings, tiny_registry.model, ServeMetrics(TINY_MODEL, CollectorRegistry()))
    try:
        assert app.topic_limits[settings.topic(T.AUDIT)] == 1200
        app.run(max_records=200)
    finally:
        app.close()
    predictions = read_topic(settings, settings.topic(T.PREDICTIONS), until_count=200, timeout_s=10)
    letters = [DeadLetter.from_bytes(r.value) for r in read_topic(settings, settings.topic(T.DEAD_LETTER))]
    assert len(predictions) + len(letters) == 200 and letters and predictions  # every request: answered or a letter
    assert all(Prediction.from_bytes(r.value).route == Route.AUTO for r in predictions)
    assert {dl.reason for dl in letters} == {"too_large"} and all("limit of 1200" in dl.detail for dl in letters)
    assert set(request_ids(predictions)) | {InferenceRequest.from_bytes(dl.value).request_id for dl in letters} \
        == set(sent.request_ids)
    assert read_topic(settings, settings.topic(T.AUDIT)) == []


def test_serve_refuses_to_start_on_a_dead_letter_topic_too_small_for_any_letter(broker: Settings, tiny_registry,
                                                                                  tmp_path) -> None:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    from auditstream.errors import ConfigError

    settings = _fresh(broker, tiny_registry, tmp_path)
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    try:
        admin.create_topics([NewTopic(settings.topic(T.DEAD_LETTER), 1, 1, topic_configs={"max.message.bytes": "4096"})])
    finally:
        admin.close()
    with pytest.raises(ConfigError, match=f"{settings.topic(T.DEAD_LETTER)} max.message.bytes=4096"):
        ServeApp(settings, tiny_registry.model, ServeMetrics(TINY_MODEL, CollectorRegistry()))
