"""The control channel in the consumer: the monitor's tightened threshold and human queue depth
change routing (never toward auto-accepting more), and a running ``ServeApp`` picks up a state
published on the compacted control topic."""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import pytest

from prometheus_client import CollectorRegistry

from auditstream.control import ControlState, ControlView
from auditstream.kafka import make_producer
from auditstream.registry import ModelRegistry
from auditstream.settings import Settings
from auditstream.wire import InferenceRequest, Prediction, Route
from monitor.control import DEFER_ALL
from monitor.service import publish_control
from serving.app import MAX_CONTROL_WAIT_S, ControlGate, ServeApp, control_wait_s
from serving.consumer import ServeConfig, process_batch
from serving.metrics import ServeMetrics
from serving.runtime import load_session
from tests.conftest import TINY_MODEL, TinyRegistry
from tests.serving.kafka_readers import read_topic
from tests.serving.test_serve_app import send_requests
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


class UnreadView:
    """A control view stand-in that has not read the topic (``caught``: until it has)."""

    topic, group = "p.control", "p-control-view-0123456789ab"

    def __init__(self, state: ControlState | None = None) -> None:
        self.state, self.caught, self.waits = state, False, []

    def caught_up(self) -> bool:
        return self.caught

    def wait_caught_up(self, timeout_s: float) -> bool:
        self.waits.append(timeout_s)
        return self.caught

    def get(self, model: str) -> ControlState | None:
        return self.state


def test_before_the_view_has_read_the_topic_every_answer_is_deferred_and_said_once(served, caplog):
    """Review 2026-12-05: a batch before the control view caught up was routed with no control
    state, so a restarted consumer auto-accepted its backlog under a DEFER_ALL override."""
    session, config = served
    baseline = routes(session, config)
    assert Route.HUMAN in baseline and set(baseline) != {Route.HUMAN}
    view = UnreadView(ControlState(config.card.name, human_queue_depth=3))  # read in part: no override yet
    counted = ServeMetrics(config.card.name, CollectorRegistry()).control_unread_batches.labels(config.card.name)
    gate = ControlGate(view, config.card.name, wait_s=0.01, unread_batches=counted)
    with caplog.at_level("INFO", logger="serving.app"):
        for _ in range(3):
            state, caught_up = gate.read()
            assert not caught_up
            assert set(routes(session, ControlGate.config(config, state, caught_up))) == {Route.HUMAN}
        assert view.waits == [0.01] * 3 and counted._value.get() == 3 and gate.deferred_batches == 3
        unread = [r for r in caplog.records if "has not been read yet" in r.getMessage()]
        assert len(unread) == 1 and unread[0].levelname == "WARNING"
        assert "p.control" in unread[0].getMessage() and "control-view" in unread[0].getMessage()
        view.caught = True  # read now: routing is the view's state, as it says (no override here)
        state, caught_up = gate.read()
        assert caught_up and state is view.state and view.waits == [0.01] * 3  # no wait once caught up
        assert routes(session, ControlGate.config(config, state, caught_up)) == baseline
        gate.read()
    assert counted._value.get() == 3
    assert sum("has been read" in r.getMessage() for r in caplog.records) == 1


def test_the_wait_for_the_view_is_a_small_share_of_the_max_poll_interval():
    assert control_wait_s(Settings()) == MAX_CONTROL_WAIT_S  # 10% of the default 300 s, capped
    assert control_wait_s(Settings(max_poll_interval_ms=30_000, delivery_timeout_s=20.0)) == 3.0


@pytest.mark.kafka
@pytest.mark.slow
def test_a_restarted_consumer_never_auto_accepts_its_backlog_under_a_defer_all_it_has_not_read(
        stream_settings, monkeypatch):
    """The override is on the topic and the requests are waiting before serve starts; the view's
    join and first fetch take 2 s longer than the serving consumer's. Nothing waits for the view
    by hand here: the batches wait for it (ControlGate), none is auto-accepted."""
    settings = dataclasses.replace(stream_settings, qc_rate=0.0)
    model = ModelRegistry(settings.models_dir).load(TINY_MODEL)
    producer = make_producer(settings)
    try:
        publish_control(producer, settings, [ControlState(TINY_MODEL, 0, {model.card.version: DEFER_ALL}, "test")], 30)
    finally:
        producer.close()
    send_requests(settings, 60, "backlog", seed=2)
    real_run = ControlView._run

    def slow_view(view: ControlView) -> None:
        time.sleep(2.0)
        real_run(view)

    monkeypatch.setattr(ControlView, "_run", slow_view)
    registry = CollectorRegistry()
    app = ServeApp(settings, model, ServeMetrics(TINY_MODEL, registry))
    read = {"model": TINY_MODEL}
    try:
        # the view sleeps 2 s before it joins: not read yet, and the gauge says so (bench serve waits on it)
        assert registry.get_sample_value("auditstream_serve_control_view_read", read) == 0
        stats = app.run(max_records=60)
        assert registry.get_sample_value("auditstream_serve_control_view_read", read) == 1
    finally:
        app.close()
    assert stats.records_in == 60
    predictions = read_topic(settings, settings.topic("predictions"), until_count=60, timeout_s=90)
    routes_seen = [Prediction.from_bytes(r.value).route for r in predictions]
    assert len(routes_seen) == 60 and set(routes_seen) == {Route.HUMAN}, routes_seen
    # the first batch waited for the view (well inside the bound): it was routed by the override itself
    assert registry.get_sample_value("auditstream_serve_control_unread_batches_total", {"model": TINY_MODEL}) == 0
