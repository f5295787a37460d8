"""Monitor metrics: names, units, pre-initialised bounded labels, values from snapshots and stats."""

from __future__ import annotations

import math
import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from auditstream.wire import Route
from monitor.metrics import MonitorMetrics, QueueStat, StoreStats
from qc.snapshot import ModelQC


def _qc(**overrides) -> ModelQC:
    values = dict(model="zip", version="3", predictions=1000, auto=800, human=200, coverage=0.8, audited=300,
                  errors=3, error_estimate=0.01, ci_low=0.002, ci_high=0.029, certified_risk=0.02, over_budget=True,
                  ks_statistic=0.05, ks_pvalue=0.2, cusum_statistic=1.5, cusum_alarm=False,
                  suggested_threshold=0.97, effective_sample_size=300.0, reason="")
    values.update(overrides)
    return ModelQC(**values)


def _stats(**overrides) -> StoreStats:
    values = dict(queue=[QueueStat("zip", "3", Route.HUMAN, 120, 35.0), QueueStat("zip", "3", Route.AUTO_QC, 7, 12.5)],
                  verdicts={("zip", "3", "AUTO_QC", "accept"): 297, ("zip", "3", "AUTO_QC", "reject"): 3},
                  auditor_throughput={"alice": 1800, "bob": 1800}, outbox_pending=4)
    values.update(overrides)
    return StoreStats(**values)


def test_every_metric_is_prefixed_and_documented():
    registry = CollectorRegistry()
    MonitorMetrics(registry)
    families = list(registry.collect())
    assert len(families) >= 20
    for family in families:
        assert family.name.startswith("auditstream_"), family.name
        assert family.documentation
        assert not family.name.endswith(("_ms", "_minutes", "_percent", "_hours"))


def test_update_sets_qc_and_store_values():
    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry, max_human_queue_depth=100)
    metrics.update([_qc()], _stats())
    mv = {"model": "zip", "version": "3"}
    get = registry.get_sample_value
    assert get("auditstream_coverage_ratio", mv) == 0.8
    assert get("auditstream_qc_error_ratio", mv) == 0.01
    assert get("auditstream_qc_error_ratio_upper_bound", mv) == 0.029
    assert get("auditstream_certified_risk_ratio", mv) == 0.02
    assert get("auditstream_qc_over_budget", mv) == 1
    assert get("auditstream_qc_suggested_threshold", mv) == 0.97
    assert get("auditstream_drift_ks_statistic", mv) == 0.05
    assert get("auditstream_drift_cusum_statistic", mv) == 1.5 and get("auditstream_drift_cusum_alarm", mv) == 0
    assert get("auditstream_audit_queue_depth", {**mv, "route": "HUMAN"}) == 120
    assert get("auditstream_audit_oldest_pending_age_seconds", {**mv, "route": "AUTO_QC"}) == 12.5
    assert get("auditstream_verdicts_total", {**mv, "route": "AUTO_QC", "kind": "reject"}) == 3
    assert get("auditstream_verdicts_total", {**mv, "route": "HUMAN", "kind": "skip"}) == 0  # pre-initialised
    assert get("auditstream_auditor_throughput_verdicts_per_second") == 1.0  # 3600 per hour
    assert get("auditstream_human_queue_over_capacity", {"model": "zip"}) == 1
    assert get("auditstream_outbox_pending_records") == 4


def test_the_stream_order_counts_are_exported():
    import dataclasses

    registry = CollectorRegistry()
    qc = dataclasses.replace(_qc(), audits_waiting=12, qc_released_unaudited=2, audits_unplaced=1)
    MonitorMetrics(registry).update([qc], _stats())
    mv = {"model": "zip", "version": "3"}
    get = registry.get_sample_value
    assert (get("auditstream_qc_audits_waiting", mv), get("auditstream_qc_released_unaudited", mv),
            get("auditstream_qc_audits_unplaced", mv)) == (12, 2, 1)


def test_counters_follow_store_totals_and_queues_drain_to_zero():
    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry, max_human_queue_depth=1000)
    metrics.update([_qc()], _stats())
    later = {("zip", "3", "AUTO_QC", "accept"): 400, ("zip", "3", "AUTO_QC", "reject"): 3}
    metrics.update([_qc()], _stats(queue=[], verdicts=later))
    key = {"model": "zip", "version": "3", "route": "AUTO_QC", "kind": "accept"}
    assert registry.get_sample_value("auditstream_verdicts_total", key) == 400
    assert registry.get_sample_value("auditstream_audit_queue_depth", {"model": "zip", "version": "3", "route": "HUMAN"}) == 0
    assert registry.get_sample_value("auditstream_human_queue_over_capacity", {"model": "zip"}) == 0


STORE_SERIES = ("auditstream_audit_queue_depth", "auditstream_audit_oldest_pending_age_seconds", "auditstream_verdicts")


def _labelled(registry: CollectorRegistry) -> set[tuple[str, str]]:
    """(sample name, version) of every sample with a model label."""
    return {(s.name, s.labels.get("version", "")) for f in registry.collect() for s in f.samples if "model" in s.labels}


def test_a_version_left_out_of_an_update_loses_every_qc_series():
    """Series of a version no longer given (retired, rolled back) used to stay at their last
    values for ever: a latched ``qc_over_budget`` or CUSUM alarm kept paging."""
    import dataclasses

    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry)
    metrics.update([_qc(), dataclasses.replace(_qc(), version="4", over_budget=False)], _stats())
    assert registry.get_sample_value("auditstream_qc_over_budget", {"model": "zip", "version": "3"}) == 1
    metrics.update([dataclasses.replace(_qc(), version="4", over_budget=False)], _stats())
    left = {name for name, version in _labelled(registry) if version == "3"}
    assert left and all(name.startswith(STORE_SERIES) for name in left), left  # the queue and counters stay
    assert registry.get_sample_value("auditstream_qc_over_budget", {"model": "zip", "version": "4"}) == 0
    metrics.update([_qc()], _stats())  # it answers again: back
    assert registry.get_sample_value("auditstream_qc_over_budget", {"model": "zip", "version": "3"}) == 1


def test_withdraw_leaves_what_a_follower_exports():
    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry, max_human_queue_depth=100)
    metrics.update([_qc()], _stats())
    metrics.withdraw()
    follower = CollectorRegistry()
    MonitorMetrics(follower, max_human_queue_depth=100)
    counters = {(n, v) for n, v in _labelled(registry) if n.startswith("auditstream_verdicts")}
    assert _labelled(registry) - counters == _labelled(follower) == set()
    for name in ("auditstream_auditor_throughput_verdicts_per_second", "auditstream_outbox_pending_records"):
        assert registry.get_sample_value(name) == follower.get_sample_value(name) == 0
    metrics.update([_qc()], _stats())  # leading again: the counters carry on from the store's totals
    assert registry.get_sample_value("auditstream_verdicts_total", {"model": "zip", "version": "3", "route": "AUTO_QC",
                                                                    "kind": "accept"}) == 297  # fmt: skip
    assert registry.get_sample_value("auditstream_human_queue_over_capacity", {"model": "zip"}) == 1


def test_unknowns_are_nan_not_zero():
    registry = CollectorRegistry()
    MonitorMetrics(registry).update([_qc(audited=0, error_estimate=None, coverage=None, certified_risk=None,
                                         ks_statistic=None, ks_pvalue=None, cusum_statistic=None,
                                         suggested_threshold=None, over_budget=False)], _stats(queue=[], verdicts={}))
    mv = {"model": "zip", "version": "3"}
    for name in ("auditstream_qc_error_ratio", "auditstream_qc_error_ratio_upper_bound", "auditstream_coverage_ratio",
                 "auditstream_certified_risk_ratio", "auditstream_drift_ks_statistic", "auditstream_drift_cusum_statistic"):
        assert math.isnan(registry.get_sample_value(name, mv)), name
    assert registry.get_sample_value("auditstream_qc_over_budget", mv) == 0


def test_serve_exposes_the_text_format(unused_tcp_port):
    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry)
    metrics.update([_qc()], _stats())
    server = metrics.serve(unused_tcp_port, addr="127.0.0.1")
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{unused_tcp_port}/metrics", timeout=10).read().decode()
    finally:
        server.shutdown()
        server.server_close()
    assert 'auditstream_coverage_ratio{model="zip",version="3"} 0.8' in body


@pytest.fixture
def unused_tcp_port() -> int:
    from stack.broker import free_port

    return free_port()


@pytest.mark.parametrize("limit, depth, over", [(5, 10, 1), (5, 4, 0), (0, 10, 0)])
def test_the_monitor_flags_its_human_queue_over_the_settings_capacity(tmp_path, limit, depth, over):
    """Through the monitor's StatsHooks, which builds the metrics from the settings (review r2: it
    left max_human_queue_depth out, so the gauge was always 0 and AuditstreamHumanQueueOverCapacity
    never fired). 0 is "no limit", as for triage."""
    from auditstream.settings import Settings
    from monitor.service import StatsHooks
    from tests.store.store_factories import audit_item, make_store

    settings = Settings(max_human_queue_depth=limit, models_dir=tmp_path / "models")
    with make_store("sqlite", tmp_path) as store:
        for i in range(depth):
            store.ingest(audit_item(f"r{i}"), 1000.0)
        registry = CollectorRegistry()
        StatsHooks(settings, store, None, registry).tick(store, 1001.0)
    assert registry.get_sample_value("auditstream_audit_queue_depth", {"model": "zip", "version": "v1", "route": "HUMAN"}) == depth
    assert registry.get_sample_value("auditstream_human_queue_over_capacity", {"model": "zip"}) == over


def test_the_monitors_dead_letters_are_counted_by_reason_and_source(tmp_path):
    """Every record the monitor dead-letters at ingest is counted by its reason (the alert
    AuditstreamMonitorDeadLetters reads it); every series exists at 0 from the start."""
    from auditstream import topics
    from auditstream.kafka import Record
    from auditstream.settings import Settings
    from auditstream.wire import Reason
    from monitor.service import StatsHooks, ingest_batch
    from tests.store.store_factories import audit_item, make_store

    settings = Settings(topic_prefix="t", models_dir=tmp_path / "models")
    audit = settings.topic(topics.AUDIT)
    values = [audit_item("ok").to_bytes(), b"\xff not json", b'{"v": 1}']
    records = [Record(audit, 0, i, None, v) for i, v in enumerate(values)]
    registry = CollectorRegistry()
    with make_store("sqlite", tmp_path) as store:
        stats = StatsHooks(settings, store, None, registry)
        results = ingest_batch(store, settings, records, 1000.0, on_dead_letter=stats.dead_lettered("ingest"))
    assert [len(r) for r in results] == [0, 1, 1]
    get = lambda reason, source: registry.get_sample_value(  # noqa: E731
        "auditstream_monitor_dead_letters_total", {"reason": reason, "source": source})
    assert get("undecodable", "ingest") == 1 and get("bad_schema", "ingest") == 1
    assert all(get(r.value, s) == 0 for r in Reason for s in ("ingest", "outbox")
               if (r.value, s) not in {("undecodable", "ingest"), ("bad_schema", "ingest")})
