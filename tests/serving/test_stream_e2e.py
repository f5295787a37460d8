"""The serving consumer against the embedded broker (no mocks): nothing lost, nothing duplicated
in a clean run; poison records reach the dead-letter topic and replay; other clients' requests
are answered."""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter

import numpy as np
import pytest
from tests.serving.kafka_readers import read_topic, request_ids
from prometheus_client import CollectorRegistry

from auditstream import topics as T
from auditstream.kafka import ensure_topics, make_producer
from auditstream.settings import Settings
from auditstream.wire import REPLAY_OF_HEADER, DeadLetter, InferenceRequest, Prediction, Route, replay_of
from serving.app import ServeApp
from serving.dlq import replay
from serving.loadgen import inputs_for, produce_requests
from serving.metrics import ServeMetrics

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_10k_requests_in_10k_predictions_out(stream_settings: Settings, tiny_registry) -> None:
    settings, model, n = stream_settings, tiny_registry.model, 10_000
    registry = CollectorRegistry()
    app = ServeApp(settings, model, ServeMetrics("tiny", registry))
    producer = make_producer(settings)
    try:
        sent = produce_requests(producer, settings.request_topic("tiny"), "tiny", inputs_for(model.card), n,
                                progress=False)
        stats = app.run(max_records=n)
    finally:
        producer.close()
        app.close()
    assert stats.records_in == n
    out = read_topic(settings, settings.topic(T.PREDICTIONS), until_count=n, timeout_s=120)
    ids = request_ids(out)
    assert len(ids) == n and set(ids) == set(sent.request_ids)  # none lost, none duplicated
    routes = Counter(Prediction.from_bytes(r.value).route for r in out)
    labels = {"model": "tiny", "version": model.card.version}
    assert registry.get_sample_value("auditstream_serve_records_in_total", labels) == n
    for route in Route:
        assert registry.get_sample_value("auditstream_serve_predictions_total",
                                         {**labels, "route": route.value}) == routes[route]
    assert routes[Route.HUMAN] > 0 and routes[Route.AUTO] > 0
    audit = read_topic(settings, settings.topic(T.AUDIT), until_count=routes[Route.HUMAN] + routes[Route.AUTO_QC])
    decisions = read_topic(settings, settings.topic(T.DECISIONS), until_count=routes[Route.AUTO] + routes[Route.AUTO_QC])
    assert len(audit) == routes[Route.HUMAN] + routes[Route.AUTO_QC]
    assert len(decisions) == routes[Route.AUTO] + routes[Route.AUTO_QC]
    assert registry.get_sample_value("auditstream_serve_batch_size_count", labels) == stats.batches
    # one ONNX Runtime run per batch (one input shape), each timed on its own
    assert registry.get_sample_value("auditstream_serve_inference_seconds_count", labels) == stats.batches


def test_poison_records_dead_lettered_valid_answered_and_replayed(stream_settings: Settings, tiny_registry) -> None:
    from confluent_kafka import Producer as ConfluentProducer

    settings = dataclasses.replace(stream_settings, max_request_bytes=4096)
    topic, model = settings.request_topic("tiny"), tiny_registry.model
    ensure_topics(settings, [topic])
    inputs = inputs_for(model.card)
    poison = {
        b"garbage": b"\x00\x01 not json at all",
        b"wrong-shape": InferenceRequest("p-shape", "tiny", np.zeros((3, 3), np.float32), time.time()).to_bytes(),
        b"oversized": InferenceRequest("p-big", "tiny", np.zeros((40, 40), np.float32), time.time()).to_bytes(),
        b"other-model": InferenceRequest("p-model", "ocr", next(inputs), time.time()).to_bytes(),
    }
    headers = [("trace", b"abc"), ("content-type", b"application/json")]
    valid_ids = []
    # A client other than the one serving (confluent-kafka; serving uses kafka-python), writing
    # hand-made JSON with a plain "values" tensor, never touching auditstream.wire.
    other = ConfluentProducer({"bootstrap.servers": settings.bootstrap_servers})
    for i in range(200):
        rid = f"v-{i}"
        value = json.dumps({"v": 1, "request_id": rid, "model": "tiny", "created_at_s": time.time(),
                            "input": {"tensor": {"dtype": "float32", "shape": [8, 8],
                                                 "values": next(inputs).round(4).tolist()}}})
        other.produce(topic, key=rid, value=value)
        valid_ids.append(rid)
        if i % 50 == 25:
            for key, bad in poison.items():
                other.produce(topic, key=key + str(i).encode(), value=bad, headers=headers)
    assert other.flush(30) == 0
    n_poison = 4 * len(poison)
    app = ServeApp(settings, model, ServeMetrics("tiny", CollectorRegistry()))
    try:
        app.run(max_records=200 + n_poison)
        dead = app.metrics.dead_letters
        assert {r: dead.labels("tiny", model.card.version, r)._value.get() for r in ("undecodable", "wrong_shape", "too_large", "wrong_model")} \
            == {"undecodable": 4, "wrong_shape": 4, "too_large": 4, "wrong_model": 4}
    finally:
        app.close()
    ids = request_ids(read_topic(settings, settings.topic(T.PREDICTIONS), until_count=200))
    assert sorted(ids) == sorted(valid_ids)
    letters = [DeadLetter.from_bytes(r.value) for r in read_topic(settings, settings.topic(T.DEAD_LETTER), until_count=n_poison)]
    assert len(letters) == n_poison
    for dl in letters:
        assert dl.value == poison[dl.key.rstrip(b"0123456789")] and list(dl.headers) == headers
        assert dl.source_topic == topic and dl.source_offset >= 0
    assert Counter(dl.reason for dl in letters) == {"undecodable": 4, "wrong_shape": 4, "too_large": 4, "wrong_model": 4}

    # replay only the wrong-model letters: they reappear on the source topic, bytes and headers
    # intact, marked with the letter they replay (auditstream-replay-of)
    report = replay(settings, reasons=["wrong_model"])
    assert report.replayed == {"wrong_model": 4} and sum(report.skipped.values()) == 12 and not report.refused
    again = read_topic(settings, topic, until_count=200 + n_poison + 4)
    replayed = [r for r in again if r.value == poison[b"other-model"]]
    assert len(replayed) == 8
    originals = [r for r in replayed if replay_of(r.headers) is None]
    sent_back = [r for r in replayed if replay_of(r.headers) is not None]
    assert len(originals) == len(sent_back) == 4 and all(list(r.headers) == headers for r in originals)
    assert all(list(r.headers)[:-1] == headers and r.headers[-1][0] == REPLAY_OF_HEADER for r in sent_back)
    assert len({replay_of(r.headers) for r in sent_back}) == 4  # one letter each: "<dead-letter topic>[p]@offset"
    assert all(replay_of(r.headers).startswith(settings.topic(T.DEAD_LETTER) + "[") for r in sent_back)
    # the skipped letters were not used up: a replay of everything finds exactly those 12
    rest = replay(settings)
    assert rest.replayed == {"undecodable": 4, "wrong_shape": 4, "too_large": 4} and rest.already == 4
