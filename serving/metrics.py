"""Every Prometheus metric of a serving consumer, declared in one place (``auditstream_`` prefix,
base units, bounded labels pre-initialised so dashboards and alert rules see zeros, not gaps).

The registry is injectable: tests build a fresh ``CollectorRegistry`` and read values back with
``registry.get_sample_value``. Labels, all bounded: ``model`` and ``version`` (one of each per
process: a consumer serves one model version), ``route`` (the three routes), ``reason`` (the
dead-letter reason codes).

What each one measures (docs/serving.md, "Metrics"):

* ``inference_seconds`` -- time inside ONNX Runtime, one observation per run (one run per shape
  group of a micro-batch; a failed run's rows are retried one by one). Decoding, triage and
  serialisation are not in it: the end-to-end histogram holds everything.
* ``device_copy_seconds`` -- on a GPU (I/O binding), the host → device and device → host copies
  of each run, kept out of ``inference_seconds``; no observations on the CPU.
* ``consumer_lag_records`` -- set by :class:`serving.lag.LagProbe` on a timer, from the broker's
  end and committed offsets of the partitions this process owns; sum it over replicas. It and
  ``assigned_partitions`` carry ``role``: ``serve`` (the group that answers) or ``shadow`` (a
  candidate's own group, which starts at the beginning of the retained requests: its lag is no
  backlog of anyone's answers, and the alert rules leave it out).
* ``assigned_partitions`` -- partitions of the request topic this process owns now (updated by
  every rebalance): summed over replicas it equals the topic's partition count once the group
  has settled; a replica at 0 serves nothing.
* ``version_switches_total`` / ``version_load_failures_total`` / ``canary_share`` -- a running
  consumer following promotions (serving/rollout.py): switches made, announced versions that
  could not be loaded (the old one kept serving), and the share of requests on the canary. The
  per-version series (``predictions_total{version=...}``) show which version answered what.
* ``over_capacity`` -- deferrals that joined a human queue at or over its configured depth
  (still deferred, never auto-accepted: qc/triage.py).
* ``control_unread_batches_total`` -- batches routed with every answer deferred (HUMAN) because
  the control view had not read the control topic yet (serving/app.py, :class:`ControlGate`): a
  few at start-up are a slow join; a count that keeps rising means the view cannot read the topic.
* ``control_view_read`` -- 1 once this process's control view has read what the control topic
  held when it joined, 0 before (no series in a shadow, which has no view): until then each batch
  waits for it (bounded) or is deferred, so a start that stays at 0 is a view that cannot join or
  read; ``bench serve`` waits for it before timing a drain.
* ``skipped_state_records`` -- records of a compacted topic (``control``, ``episode-state``) this
  process refused since it started, read at scrape time from the control view and the episode
  store: each is logged with where it is and why, and a compacted topic keeps it, so any
  non-zero value is worth a look.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from auditstream.metrics_http import start_metrics_server
from auditstream.wire import Reason, Route

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
INFERENCE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
LABELS = ["model", "version"]
ROLES = ("serve", "shadow")  # the ``role`` label of the group gauges (lag, assigned partitions)
STATE_TOPICS = ("control", "episode-state")  # the compacted topics a consumer reads state from


class ServeMetrics:
    """The serving consumer's metrics for one model; ``version`` pre-initialises that version's
    series (the app also does it through :meth:`children` when it knows the version)."""

    def __init__(self, model: str, registry: CollectorRegistry | None = None, version: str | None = None,
                 role: str = "serve") -> None:
        from prometheus_client import REGISTRY

        if role not in ROLES:
            raise ValueError(f"role {role!r}: expected one of {ROLES}")
        self.model, self.role = model, role
        self.registry = registry if registry is not None else REGISTRY
        r = self.registry
        self.records_in = Counter("auditstream_serve_records_in_total", "Request records consumed.", LABELS, registry=r)
        self.predictions = Counter("auditstream_serve_predictions_total", "Predictions produced, by triage route.",
                                   LABELS + ["route"], registry=r)
        self.dead_letters = Counter("auditstream_serve_dead_letters_total", "Records sent to the dead-letter topic, by reason.",
                                    LABELS + ["reason"], registry=r)
        self.over_capacity = Counter("auditstream_serve_over_capacity_total",
                                     "Deferrals that joined a human queue at or over its configured depth (still deferred).",
                                     LABELS, registry=r)
        self.batch_size = Histogram("auditstream_serve_batch_size", "Records per micro-batch.", LABELS,
                                    buckets=BATCH_SIZE_BUCKETS, registry=r)
        self.inference_seconds = Histogram("auditstream_serve_inference_seconds",
                                           "Time inside ONNX Runtime per run (one run per shape group of a micro-batch).",
                                           LABELS, buckets=INFERENCE_BUCKETS, registry=r)
        self.device_copy_seconds = Histogram("auditstream_serve_device_copy_seconds",
                                             "Host-to-device plus device-to-host copy time per GPU run (I/O binding).",
                                             LABELS, buckets=INFERENCE_BUCKETS, registry=r)
        self.end_to_end_seconds = Histogram("auditstream_serve_end_to_end_latency_seconds",
                                            "From the request's created_at to its prediction being produced.",
                                            LABELS, buckets=LATENCY_BUCKETS, registry=r)
        self.consumer_lag = Gauge("auditstream_serve_consumer_lag_records",
                                  "Records produced but not committed on the partitions this process owns "
                                  "(end offset - committed offset, refreshed on a timer).", LABELS + ["role"], registry=r)
        self.assigned_partitions = Gauge("auditstream_serve_assigned_partitions",
                                         "Request-topic partitions this process owns now (after the last rebalance).",
                                         LABELS + ["role"], registry=r)
        # Hot reload and canary (serving/rollout.py): one series per model, labelled up front.
        self.version_switches = Counter("auditstream_serve_version_switches_total",
                                        "Live-version switches a running consumer made after a promotion.", ["model"],
                                        registry=r)
        self.version_load_failures = Counter("auditstream_serve_version_load_failures_total",
                                             "Announced versions that failed to load, verify or warm up (the old "
                                             "version kept serving).", ["model"], registry=r)
        self.canary_share = Gauge("auditstream_serve_canary_share", "Share of requests the canary version answers "
                                  "(0: no canary).", ["model"], registry=r)
        self.control_unread_batches = Counter("auditstream_serve_control_unread_batches_total",
                                              "Batches routed with every answer deferred to a human because the "
                                              "control view had not read the control topic yet.", ["model"],
                                              registry=r)
        # set at scrape time from the view (ServeApp); no series without one
        self.control_view_read = Gauge("auditstream_serve_control_view_read", "1 once the control view has read "
                                       "what the control topic held when it joined, 0 before.", ["model"], registry=r)
        self.skipped_state_records = Gauge("auditstream_serve_skipped_state_records",
                                           "Records of a compacted topic (control, episode-state) this process "
                                           "refused since it started; each is logged with where it is and why.",
                                           ["model", "topic"], registry=r)
        for metric in (self.version_switches, self.version_load_failures, self.canary_share,
                       self.control_unread_batches):
            metric.labels(model)
        for topic in STATE_TOPICS:
            self.skipped_state_records.labels(model, topic)
        if version is not None:
            self.children(version)

    def children(self, version: str) -> dict:
        """The labelled series of this model version, created at zero and looked up once: keyed by
        name, Route and reason code."""
        labels = (self.model, version)
        out: dict = {"records_in": self.records_in.labels(*labels), "batch_size": self.batch_size.labels(*labels),
                     "inference_seconds": self.inference_seconds.labels(*labels),
                     "device_copy_seconds": self.device_copy_seconds.labels(*labels),
                     "end_to_end": self.end_to_end_seconds.labels(*labels),
                     "over_capacity": self.over_capacity.labels(*labels),
                     "consumer_lag": self.consumer_lag.labels(*labels, self.role),
                     "assigned_partitions": self.assigned_partitions.labels(*labels, self.role)}
        out.update({route: self.predictions.labels(*labels, route.value) for route in Route})
        out.update({reason.value: self.dead_letters.labels(*labels, reason.value) for reason in Reason})
        return out

    def count_skipped(self, topic: str, source: object) -> None:
        """Expose ``source.skipped`` (read at each scrape) as the skipped records of ``topic``."""
        self.skipped_state_records.labels(self.model, topic).set_function(lambda: getattr(source, "skipped"))

    def serve_http(self, port: int) -> None:
        """Expose ``/metrics`` on ``port`` (a daemon thread)."""
        start_metrics_server(port, self.registry)
