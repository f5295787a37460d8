"""serving.metrics: declared once, labels pre-initialised, registry injectable, served over HTTP."""

from __future__ import annotations

import socket
import urllib.request

from prometheus_client import CollectorRegistry

from auditstream.wire import Reason, Route
from serving.metrics import ServeMetrics


def test_labels_preinitialised_at_zero() -> None:
    registry = CollectorRegistry()
    ServeMetrics("tiny", registry)
    for route in Route:
        assert registry.get_sample_value("auditstream_serve_predictions_total", {"model": "tiny", "route": route.value}) == 0
    for reason in Reason:
        assert registry.get_sample_value("auditstream_serve_dead_letters_total", {"model": "tiny", "reason": reason.value}) == 0
    assert registry.get_sample_value("auditstream_serve_records_in_total", {"model": "tiny"}) == 0
    assert registry.get_sample_value("auditstream_serve_batch_size_count", {"model": "tiny"}) == 0
    assert registry.get_sample_value("auditstream_serve_consumer_lag_records", {"model": "tiny"}) == 0


def test_metrics_endpoint() -> None:
    registry = CollectorRegistry()
    metrics = ServeMetrics("tiny", registry)
    metrics.inference_seconds.labels("tiny").observe(0.02)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    metrics.serve_http(port)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'auditstream_serve_inference_seconds_count{model="tiny"} 1.0' in body
    assert "auditstream_serve_end_to_end_latency_seconds_bucket" in body
