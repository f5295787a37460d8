"""serving.metrics: declared once, labels (model, version, route/reason) pre-initialised, registry
injectable, served over HTTP; what ServeApp puts in them is checked in test_serve_app.py."""

from __future__ import annotations

import urllib.request

from prometheus_client import CollectorRegistry

from auditstream.wire import Reason, Route
from serving.metrics import ServeMetrics
from stack.broker import free_port

TINY_V1 = {"model": "tiny", "version": "1"}


def test_labels_preinitialised_at_zero() -> None:
    registry = CollectorRegistry()
    ServeMetrics("tiny", registry, version="1")
    for route in Route:
        assert registry.get_sample_value("auditstream_serve_predictions_total", {**TINY_V1, "route": route.value}) == 0
    for reason in Reason:
        assert registry.get_sample_value("auditstream_serve_dead_letters_total", {**TINY_V1, "reason": reason.value}) == 0
    for name in ("auditstream_serve_records_in_total", "auditstream_serve_batch_size_count",
                 "auditstream_serve_inference_seconds_count", "auditstream_serve_end_to_end_latency_seconds_count",
                 "auditstream_serve_over_capacity_total"):
        assert registry.get_sample_value(name, TINY_V1) == 0, name
    for name in ("auditstream_serve_consumer_lag_records", "auditstream_serve_assigned_partitions"):
        assert registry.get_sample_value(name, {**TINY_V1, "role": "serve"}) == 0, name


def test_a_shadow_exports_its_group_gauges_as_a_shadow_only() -> None:
    """A shadow's group starts at the beginning of the retained requests: under the live group's
    labels its lag fired AuditstreamConsumerLag on a healthy system, and a pre-initialised
    role="serve" zero would look like a served model owning no partition."""
    registry = CollectorRegistry()
    ServeMetrics("tiny", registry, version="4", role="shadow")
    for name in ("auditstream_serve_consumer_lag_records", "auditstream_serve_assigned_partitions"):
        assert registry.get_sample_value(name, {"model": "tiny", "version": "4", "role": "shadow"}) == 0
        assert registry.get_sample_value(name, {"model": "tiny", "version": "4", "role": "serve"}) is None


def test_children_bind_a_version_later() -> None:
    """ServeApp binds the version it serves; a metrics object made without one gets it then."""
    registry = CollectorRegistry()
    metrics = ServeMetrics("tiny", registry)
    assert registry.get_sample_value("auditstream_serve_records_in_total", TINY_V1) is None
    children = metrics.children("1")
    children["records_in"].inc(3)
    children[Route.HUMAN].inc()
    children["undecodable"].inc()
    assert registry.get_sample_value("auditstream_serve_records_in_total", TINY_V1) == 3
    assert registry.get_sample_value("auditstream_serve_predictions_total", {**TINY_V1, "route": "HUMAN"}) == 1
    assert registry.get_sample_value("auditstream_serve_dead_letters_total", {**TINY_V1, "reason": "undecodable"}) == 1


def test_metrics_endpoint() -> None:
    registry = CollectorRegistry()
    metrics = ServeMetrics("tiny", registry, version="1")
    metrics.inference_seconds.labels("tiny", "1").observe(0.02)
    port = free_port()
    metrics.serve_http(port)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'auditstream_serve_inference_seconds_count{model="tiny",version="1"} 1.0' in body
    assert "auditstream_serve_end_to_end_latency_seconds_bucket" in body
    assert 'auditstream_serve_over_capacity_total{model="tiny",version="1"} 0.0' in body


def test_a_metrics_port_another_process_holds_is_one_clear_error() -> None:
    """Serving and the monitor share the endpoint's start: a port already taken is a
    ConfigError naming the setting (one line and exit 2 from the CLI), not an OSError traceback."""
    import socket

    import pytest

    from auditstream.errors import ConfigError
    from monitor.metrics import MonitorMetrics

    with socket.socket() as holder:
        holder.bind(("0.0.0.0", 0))
        holder.listen()
        port = holder.getsockname()[1]
        for start in (ServeMetrics("tiny", CollectorRegistry(), version="1").serve_http,
                      MonitorMetrics(CollectorRegistry()).serve):
            with pytest.raises(ConfigError, match=f"AUDITSTREAM_METRICS_PORT={port}.*Address already in use"):
                start(port)
