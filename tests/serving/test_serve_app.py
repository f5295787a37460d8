"""ServeApp on the embedded broker: a failed start-up releases what it started; the lag gauge keeps
moving while the consumer is stalled; the metrics measure what they say (ORT time per run, the
version label, over-capacity deferrals); a model that fails on everything stops the consumer."""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from auditstream import topics as T
from auditstream.control import ControlState
from auditstream.errors import BatchFailed, BrokerUnavailable, InferenceBroken
from auditstream.kafka import make_producer
from auditstream.registry import ModelRegistry
from auditstream.settings import Settings
from auditstream.wire import InferenceRequest, Route
from monitor.service import publish_control
from serving import app as app_module
from serving.app import ServeApp, group_id
from serving.metrics import ServeMetrics
from serving.runtime import load_session
from tests.conftest import TINY_MODEL
from tests.serving.kafka_readers import committed_offsets

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def send_requests(settings: Settings, n: int, prefix: str, seed: int = 0) -> None:
    producer = make_producer(settings)
    try:
        rng = np.random.default_rng(seed)
        for i in range(n):
            request = InferenceRequest(f"{prefix}-{i}", TINY_MODEL, rng.standard_normal((8, 8)).astype(np.float32),
                                       time.time())
            producer.send(settings.request_topic(TINY_MODEL), request.key, request.to_bytes())
        producer.flush(30)
    finally:
        producer.close()


def wait_until(condition, timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


class ClosingSpy:
    """Wraps a session or producer and records close()."""

    def __init__(self, inner) -> None:
        self.inner, self.closed = inner, False

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def close(self, *args, **kwargs) -> None:
        self.closed = True
        self.inner.close(*args, **kwargs)


@pytest.mark.parametrize("failing", ["StreamLoop.connect", "ensure_topics"])
def test_failed_start_up_releases_what_it_started(stream_settings: Settings, monkeypatch, failing) -> None:
    model = ModelRegistry(stream_settings.models_dir).load(TINY_MODEL)
    session, producer = ClosingSpy(load_session(model)), ClosingSpy(make_producer(stream_settings))
    views = []
    real_view = app_module.ControlView

    def recording_view(*args, **kwargs):
        views.append(real_view(*args, **kwargs))
        return views[-1]

    def refuse(*args, **kwargs):
        raise BrokerUnavailable(stream_settings.bootstrap_servers, "refused by the test")

    monkeypatch.setattr(app_module, "ControlView", recording_view)
    if failing == "StreamLoop.connect":
        monkeypatch.setattr(app_module.StreamLoop, "connect", refuse)
    else:
        monkeypatch.setattr(app_module, "ensure_topics", refuse)
    with pytest.raises(BrokerUnavailable, match="refused by the test"):
        ServeApp(stream_settings, model, ServeMetrics(TINY_MODEL, CollectorRegistry()), producer=producer,
                 session=session)
    assert session.closed and session.inner.session is None  # the ORT session is released
    assert producer.closed
    if failing == "StreamLoop.connect":  # the control view had started: its thread is stopped
        assert len(views) == 1 and not views[0]._thread.is_alive()
    else:
        assert views == []
    assert not [t for t in threading.enumerate() if t.name == "control-view" and t.is_alive()]


def test_lag_keeps_updating_while_the_consumer_is_stalled(stream_settings: Settings) -> None:
    settings = stream_settings
    model = ModelRegistry(settings.models_dir).load(TINY_MODEL)
    registry = CollectorRegistry()
    app = ServeApp(settings, model, ServeMetrics(TINY_MODEL, registry), lag_refresh_s=0.2)
    labels = {"model": TINY_MODEL, "version": model.card.version, "role": "serve"}
    lag = lambda: registry.get_sample_value("auditstream_serve_consumer_lag_records", labels)  # noqa: E731
    try:
        send_requests(settings, 10, "first")
        app.run(max_records=10)  # joined, answered, committed; now nobody polls: a stalled consumer
        assert wait_until(lambda: lag() == 0, 30), lag()
        send_requests(settings, 25, "late")
        # no poll, no commit since: the gauge still follows the broker's end offsets
        assert wait_until(lambda: lag() == 25, 30), lag()
        assert sum(committed_offsets(settings, group_id(settings, TINY_MODEL)).values()) == 10
    finally:
        app.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("lag-probe-") and t.is_alive()]


def test_metrics_time_ort_runs_carry_the_version_and_count_over_capacity(stream_settings: Settings) -> None:
    settings = dataclasses.replace(stream_settings, max_human_queue_depth=5, qc_rate=0.0)
    model = ModelRegistry(settings.models_dir).load(TINY_MODEL)
    producer = make_producer(settings)
    publish_control(producer, settings, [ControlState(TINY_MODEL, human_queue_depth=9, reason="test")], 30)
    producer.send(settings.topic(T.CONTROL), TINY_MODEL.encode(), b'{"v":1,"model":"tiny","human_queue_depth":1e400}')
    publish_control(producer, settings, [ControlState(TINY_MODEL, human_queue_depth=9, reason="test")], 30)
    producer.close()
    registry = CollectorRegistry()
    app = ServeApp(settings, model, ServeMetrics(TINY_MODEL, registry))
    assert app.control_view.wait_caught_up(60)
    skipped = {"model": TINY_MODEL, "topic": "control"}  # the hostile record: refused, counted, the view goes on
    assert registry.get_sample_value("auditstream_serve_skipped_state_records", skipped) == 1
    runs = []
    real_run = app.session.run
    app.session.run = lambda batch: runs.append(len(batch)) or real_run(batch)  # count ORT runs
    try:
        send_requests(settings, 40, "cap")
        stats = app.run(max_records=40)
    finally:
        app.close()
    labels = {"model": TINY_MODEL, "version": model.card.version}
    value = lambda name, **extra: registry.get_sample_value(name, {**labels, **extra})  # noqa: E731
    # one observation per ONNX Runtime run (one run per batch here: one input shape), no more
    assert value("auditstream_serve_inference_seconds_count") == len(runs) == stats.batches
    assert value("auditstream_serve_records_in_total") == 40
    human = value("auditstream_serve_predictions_total", route=Route.HUMAN.value)
    assert human > 0 and value("auditstream_serve_over_capacity_total") == human  # queue 9 >= 5: every deferral


def test_a_model_that_always_fails_stops_the_consumer(stream_settings: Settings) -> None:
    model = ModelRegistry(stream_settings.models_dir).load(TINY_MODEL)
    session = load_session(model)

    def broken(batch):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    session.run = broken  # warmed up fine, then the device went bad: nothing runs, not even the probe
    app = ServeApp(stream_settings, model, ServeMetrics(TINY_MODEL, CollectorRegistry()), session=session,
                   use_control=False)
    try:
        send_requests(stream_settings, 1, "lonely")  # light traffic: a batch of one record
        with pytest.raises(BatchFailed, match="model tiny v1 is broken") as info:
            app.run(max_records=1)
    finally:
        app.close()
    assert isinstance(info.value.__cause__, InferenceBroken)
    assert "illegal memory access" in str(info.value)
    # nothing committed, nothing dead-lettered: the record is redelivered once the model is fixed
    assert committed_offsets(stream_settings, group_id(stream_settings, TINY_MODEL)) == {}
    assert app.metrics.dead_letters.labels(TINY_MODEL, "1", "inference_failed")._value.get() == 0
