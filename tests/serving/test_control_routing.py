"""The control channel in the consumer: the monitor's tightened threshold and human queue depth
change routing (never toward auto-accepting more), and a running ``ServeApp`` picks up a state
published on the compacted control topic."""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import pytest

from auditstream.control import ControlState
from auditstream.kafka import make_producer
from auditstream.registry import ModelRegistry
from auditstream.settings import Settings
from auditstream.wire import InferenceRequest, Prediction, Route
from monitor.control import DEFER_ALL
from monitor.service import publish_control
from serving.app import ServeApp
from serving.consumer import ServeConfig, process_batch
from serving.runtime import load_session
from tests.conftest import TINY_MODEL, TinyRegistry
from tests.serving.kafka_readers import read_topic
from tests.serving.test_process_batch import NOW, good, request_record


@pytest.fixture
def served(tiny_registry: TinyRegistry):
    settings = Settings(qc_rate=0.0, triage_policy="uniform", max_human_queue_depth=10)
    return load_session(tiny_registry.model), ServeConfig.from_settings(settings, tiny_registry.model.card)


def routes(session, config, n: int = 60) -> list[Route]:
    return [r.route for r in process_batch([request_record(i, good(i)) for i in range(n)], session, config, NOW)]


def test_a_tightened_threshold_only_moves_answers_to_humans(served):
    session, config = served
    before = routes(session, config)
    card = config.card
    tighter = dataclasses.replace(config, control=ControlState(card.name, 0, {card.version: 0.9}))
    after = routes(session, tighter)
    assert after.count(Route.HUMAN) > before.count(Route.HUMAN)
    assert all(a == Route.HUMAN for b, a in zip(before, after) if b == Route.HUMAN)
    defer_all = dataclasses.replace(config, control=ControlState(card.name, 0, {card.version: DEFER_ALL}))
    assert set(routes(session, defer_all)) == {Route.HUMAN}


def test_an_override_for_another_version_or_a_looser_one_changes_nothing(served):
    session, config = served
    before = routes(session, config)
    other = dataclasses.replace(config, control=ControlState(config.card.name, 0, {"99": DEFER_ALL}))
    looser = dataclasses.replace(config, control=ControlState(config.card.name, 0, {config.card.version: 0.0}))
    assert routes(session, other) == before
    assert routes(session, looser) == before


def test_queue_over_capacity_is_flagged_never_auto_accepted(served):
    session, config = served
    full = dataclasses.replace(config, control=ControlState(config.card.name, human_queue_depth=25))
    results = process_batch([request_record(i, good(i)) for i in range(60)], session, full, NOW)
    baseline = routes(session, config)
    assert [r.route for r in results] == baseline  # capacity never changes a route
    reasons = [Prediction.from_bytes(r.outputs[0].value).reason for r in results if r.route == Route.HUMAN]
    assert reasons and all("over capacity" in reason for reason in reasons)


@pytest.mark.kafka
@pytest.mark.slow
def test_running_consumer_follows_the_control_topic(stream_settings):
    settings = dataclasses.replace(stream_settings, qc_rate=0.0)
    model = ModelRegistry(settings.models_dir).load(TINY_MODEL)
    producer = make_producer(settings)
    publish_control(producer, settings, [ControlState(TINY_MODEL, 0, {model.card.version: DEFER_ALL}, "test")], 30)
    app = ServeApp(settings, model)
    assert app.control_view.wait_caught_up(60)
    runner = threading.Thread(target=app.run, daemon=True)
    runner.start()
    try:
        rng = np.random.default_rng(1)
        for i in range(30):
            request = InferenceRequest(f"ctl-{i}", TINY_MODEL, rng.standard_normal((8, 8)).astype(np.float32), time.time())
            producer.send(settings.request_topic(TINY_MODEL), request.key, request.to_bytes())
        producer.flush(30)
        predictions = read_topic(settings, settings.topic("predictions"), until_count=30, timeout_s=90)
        routes_seen = {Prediction.from_bytes(r.value).route for r in predictions}
        assert routes_seen == {Route.HUMAN}, routes_seen
    finally:
        app.loop.stop()
        runner.join(timeout=60)
        app.close()
        producer.close()
