"""Every Prometheus metric of a serving consumer, declared in one place (``auditstream_`` prefix,
base units, bounded labels pre-initialised so dashboards and alert rules see zeros, not gaps).

The registry is injectable: tests build a fresh ``CollectorRegistry`` and read values back with
``registry.get_sample_value``. Labels: ``model`` (one per process), ``route`` (the three routes),
``reason`` (the dead-letter reason codes) -- all bounded.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from auditstream.wire import Reason, Route

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
INFERENCE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ServeMetrics:
    """The serving consumer's metrics for one model."""

    def __init__(self, model: str, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import REGISTRY

        self.model = model
        self.registry = registry if registry is not None else REGISTRY
        r = self.registry
        self.records_in = Counter("auditstream_serve_records_in_total", "Request records consumed.", ["model"], registry=r)
        self.predictions = Counter("auditstream_serve_predictions_total", "Predictions produced, by triage route.",
                                   ["model", "route"], registry=r)
        self.dead_letters = Counter("auditstream_serve_dead_letters_total", "Records sent to the dead-letter topic, by reason.",
                                    ["model", "reason"], registry=r)
        self.batch_size = Histogram("auditstream_serve_batch_size", "Records per micro-batch.", ["model"],
                                    buckets=BATCH_SIZE_BUCKETS, registry=r)
        self.inference_seconds = Histogram("auditstream_serve_inference_seconds", "ONNX Runtime time per micro-batch.",
                                           ["model"], buckets=INFERENCE_BUCKETS, registry=r)
        self.end_to_end_seconds = Histogram("auditstream_serve_end_to_end_latency_seconds",
                                            "From the request's created_at to its prediction being produced.",
                                            ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.consumer_lag = Gauge("auditstream_serve_consumer_lag_records",
                                  "Records not yet consumed on the assigned partitions (last known).", ["model"], registry=r)
        self.records_in.labels(model)
        for route in Route:
            self.predictions.labels(model, route.value)
        for reason in Reason:
            self.dead_letters.labels(model, reason.value)
        self.batch_size.labels(model)
        self.inference_seconds.labels(model)
        self.end_to_end_seconds.labels(model)
        self.consumer_lag.labels(model).set(0)

    def children(self) -> dict:
        """The labelled series of this model, looked up once: keyed by name, Route and reason code."""
        m = self.model
        out: dict = {"records_in": self.records_in.labels(m), "batch_size": self.batch_size.labels(m),
                     "inference_seconds": self.inference_seconds.labels(m),
                     "end_to_end": self.end_to_end_seconds.labels(m)}
        out.update({route: self.predictions.labels(m, route.value) for route in Route})
        out.update({reason.value: self.dead_letters.labels(m, reason.value) for reason in Reason})
        return out

    def serve_http(self, port: int) -> None:
        """Expose ``/metrics`` on ``port`` (a daemon thread)."""
        start_http_server(port, registry=self.registry)
