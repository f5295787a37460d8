"""Every Prometheus metric of the monitor process, declared in one place (docs/qc-statistics.md,
"Metrics"): ``auditstream_`` prefix, base units, bounded labels.

The monitor (monitor/service.py) calls :meth:`MonitorMetrics.update` every few seconds with the
QC tracker's snapshots (monitor/tracker.py) and the audit store's :class:`StoreStats`; the alert
rules in deploy/prometheus/rules/ read these series. Labels are ``model``, ``version``,
``route`` (HUMAN and AUTO_QC: the audited routes) and ``kind`` (the four verdict kinds) — bounded by the models in the
registry — and each (model, version) is pre-initialised with all its routes and kinds as soon as
it is seen, so rules see zeros rather than gaps. Unknown values (no audits yet, no reference
sample for KS) are exported as NaN, which no alert comparison matches.

The QC series of a version exist exactly while :meth:`MonitorMetrics.update` is given its
snapshot: the monitor passes the versions still answering (monitor/service.py, ``StatsHooks.tick``),
so a retired or rolled-back version's series go and its alerts resolve.
:meth:`MonitorMetrics.withdraw` removes everything only the leader exports (the QC series and
the queue figures; the two unlabelled ones, outbox_pending_records and the auditors' throughput,
read 0) when the process loses the lead: a follower shows none, never stale ones.

The registry is injectable: tests build a fresh ``CollectorRegistry`` and read values back with
``registry.get_sample_value``.
"""

from __future__ import annotations

import math
from typing import Iterable
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge

from auditstream.metrics_http import start_metrics_server
from auditstream.wire import Reason, Route, VerdictKind
from qc.sequential import BudgetState
from qc.snapshot import ModelQC
from store.records import QueueStat, StoreStats

__all__ = ["MonitorMetrics", "QueueStat", "StoreStats"]
AUDITED_ROUTES = (Route.HUMAN, Route.AUTO_QC)
THROUGHPUT_WINDOW_S = 3600.0  # StoreStats.auditor_throughput counts verdicts over the last hour


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


class MonitorMetrics:
    """The monitor's metrics; ``max_human_queue_depth`` is the same limit triage is given."""

    def __init__(self, registry: CollectorRegistry | None = None, *, max_human_queue_depth: int | None = None) -> None:
        from prometheus_client import REGISTRY

        self.registry = registry if registry is not None else REGISTRY
        self.max_human_queue_depth = max_human_queue_depth
        r, mv = self.registry, ["model", "version"]

        def gauge(name: str, doc: str, labels: list[str] = mv) -> Gauge:
            return Gauge(f"auditstream_{name}", doc, labels, registry=r)

        # the audit store
        self.queue_depth = gauge("audit_queue_depth", "Open audit items waiting for an auditor.", mv + ["route"])
        self.oldest_age = gauge("audit_oldest_pending_age_seconds", "Age of the oldest open audit item.", mv + ["route"])
        self.verdicts = Counter("auditstream_verdicts_total", "Verdicts recorded (gold items excluded).",
                                mv + ["route", "kind"], registry=r)
        self.throughput = gauge("auditor_throughput_verdicts_per_second",
                                "Verdicts per second over the last hour, all auditors together.", [])
        self.over_capacity = gauge("human_queue_over_capacity",
                                   "1 while the human queue is at or over its configured depth (items stay HUMAN).",
                                   ["model"])
        self.outbox_pending = gauge("outbox_pending_records", "Verdicts/decisions recorded but not yet published.", [])
        self.dead_letters = Counter("auditstream_monitor_dead_letters_total", "Records the monitor sent to the "
                                    "dead-letter topic, by reason and source: ingest (an audit item or prediction it "
                                    "read) or outbox (a verdict or decision over its topic's limit).",
                                    ["reason", "source"], registry=r)
        for reason in Reason:  # every series from the start: rate() and increase() see the first letter
            for source in ("ingest", "outbox"):
                self.dead_letters.labels(reason.value, source)
        # QC statistics (monitor/tracker.py)
        self.predictions = gauge("qc_predictions", "Predictions seen by the QC tracker (serving counts them by route).")
        self.coverage = gauge("coverage_ratio", "Share of predictions auto-accepted (AUTO + AUTO_QC).")
        self.audited = gauge("qc_audited_items", "QC audits of auto-accepted answers counted (skips excluded).")
        self.error = gauge("qc_error_ratio", "Weighted (Hajek) error rate of auto-accepted answers, from QC audits.")
        self.error_low = gauge("qc_error_ratio_lower_bound",
                               "Lower end of the 95% confidence sequence of the error rate of auto-accepted "
                               "answers (valid at every audit; not the budgeted rate of a kind that accepts parts one by "
                               "one: qc_part_fdr_ratio_lower_bound).")
        self.error_high = gauge("qc_error_ratio_upper_bound",
                                "Upper end of the 95% confidence sequence of the error rate of auto-accepted "
                                "answers (valid at every audit; not the budgeted rate of a kind that accepts parts one by "
                                "one: qc_part_fdr_ratio_upper_bound).")
        self.parts_audited = gauge("qc_audited_parts", "Parts (a detector's boxes) of audited auto-accepted answers "
                                   "(kinds that accept parts one by one; NaN for the others).")
        self.part_fdr = gauge("qc_part_fdr_ratio", "Weighted (Hajek) false-discovery rate of auto-accepted parts (a "
                              "detector's boxes), from QC audits; the rate such a card's budget judges.")
        self.part_fdr_low = gauge("qc_part_fdr_ratio_lower_bound", "Lower end of the 95% confidence sequence of the "
                                  "false-discovery rate of auto-accepted parts (valid at every audit).")
        self.part_fdr_high = gauge("qc_part_fdr_ratio_upper_bound", "Upper end of the 95% confidence sequence of the "
                                   "false-discovery rate of auto-accepted parts (valid at every audit).")
        self.ess = gauge("qc_effective_sample_size", "Korn-Graubard n* = p(1-p)/V, capped at the audits (a description; no bound uses it).")
        self.certified = gauge("certified_risk_ratio", "The model card's certified risk (proven at calibration).")
        self.budget = gauge("qc_error_budget_ratio", "The error budget audits are judged against: the card's target risk.")
        self.over_budget = gauge("qc_over_budget", "1 when the audits at the current threshold now show the budgeted rate "
                                 "above the budget: the answers' error rate, or a detector's false-discovery rate of "
                                 "accepted parts (that rate's confidence-sequence lower bound is then at or above it).")
        self.verified = gauge("qc_budget_verified", "1 when the audits at the current threshold now show the budgeted rate "
                              "below the budget: the answers' error rate, or a detector's false-discovery rate of "
                              "accepted parts (that rate's confidence-sequence upper bound is then at or below it).")
        self.to_settle = gauge("qc_audits_to_settle", "Budget not yet known: rough audits until it is settled "
                               "(NaN when settled or when the estimate sits on the budget).")
        self.waiting = gauge("qc_audits_waiting", "Verdicts not yet counted: held behind an earlier QC sample still "
                             "without a verdict (stream order), or waiting for their prediction.")
        self.released = gauge("qc_released_unaudited", "QC samples given up without a verdict (too many verdicts "
                              "held behind them): the audits no longer cover every sample.")
        self.unplaced = gauge("qc_audits_unplaced", "Verdicts left out: their prediction was never seen or their "
                              "sample was already released.")
        self.suggested = gauge("qc_suggested_threshold", "Smallest threshold whose audited bound is within budget.")
        self.ks_statistic = gauge("drift_ks_statistic", "KS distance of live confidences from the card's reference.")
        self.ks_pvalue = gauge("drift_ks_pvalue", "p-value of that KS test.")
        self.cusum = gauge("drift_cusum_statistic", "Bernoulli CUSUM on audited errors (log-likelihood ratio, nats).")
        self.cusum_alarm = gauge("drift_cusum_alarm", "1 once the CUSUM crossed its threshold (latched per version).")
        self._qc_gauges = [self.predictions, self.coverage, self.audited, self.error, self.error_low, self.error_high,
                           self.parts_audited, self.part_fdr, self.part_fdr_low, self.part_fdr_high, self.ess,
                           self.certified, self.budget, self.over_budget, self.verified, self.to_settle, self.waiting,
                           self.released, self.unplaced, self.suggested, self.ks_statistic, self.ks_pvalue, self.cusum,
                           self.cusum_alarm]  # fmt: skip
        self._qc_versions: set[tuple[str, str]] = set()  # (model, version) with QC series now
        self.throughput.set(0)
        self.outbox_pending.set(0)
        self._seen: set[tuple[str, str]] = set()
        self._queues: set[tuple[str, str, str]] = set()
        self._verdict_totals: dict[tuple[str, str, str, str], int] = {}

    def _init_version(self, model: str, version: str) -> None:
        """Create every labelled child of a new (model, version), so it exports zeros, not gaps."""
        if (model, version) in self._seen:
            return
        self._seen.add((model, version))
        for route in AUDITED_ROUTES:
            self.queue_depth.labels(model, version, route.value).set(0)
            self.oldest_age.labels(model, version, route.value).set(0)
            for kind in VerdictKind:
                self.verdicts.labels(model, version, route.value, kind.value)
        self.over_capacity.labels(model).set(0)

    def update(self, snapshots: Iterable[ModelQC], store_stats: StoreStats) -> None:
        """Export ``snapshots`` (the versions that have QC series from now on: a version exported
        before and missing here loses its series) and the store's figures."""
        exported = set()
        for s in snapshots:
            self._init_version(s.model, s.version)
            self._update_qc(s)
            exported.add((s.model, s.version))
        for mv in self._qc_versions - exported:
            for g in self._qc_gauges:
                g.remove(*mv)
        self._qc_versions = exported
        self._update_store(store_stats)

    def withdraw(self) -> None:
        """Export what a follower does (the process lost the lead): no QC series and no queue
        figures (the two unlabelled ones, pending outbox records and throughput, read 0: an
        unlabelled gauge is always exported), whose stale values would keep alerts firing and
        double the sums over pods; the counters stay (each only grows)."""
        for g in [*self._qc_gauges, self.queue_depth, self.oldest_age, self.over_capacity]:
            g.clear()
        self._qc_versions.clear()
        self._queues.clear()
        self._seen.clear()  # pre-initialised again when this process leads again
        self.throughput.set(0)
        self.outbox_pending.set(0)

    def _update_qc(self, s: ModelQC) -> None:
        mv = (s.model, s.version)
        self.predictions.labels(*mv).set(s.predictions)
        self.coverage.labels(*mv).set(_nan(s.coverage))
        self.audited.labels(*mv).set(s.audited)
        self.error.labels(*mv).set(_nan(s.error_estimate))
        self.error_low.labels(*mv).set(s.ci_low if s.audited else math.nan)
        self.error_high.labels(*mv).set(s.ci_high if s.audited else math.nan)
        self.parts_audited.labels(*mv).set(_nan(s.parts_audited))
        self.part_fdr.labels(*mv).set(_nan(s.part_fdr_estimate))
        self.part_fdr_low.labels(*mv).set(_nan(s.part_fdr_low) if s.parts_audited else math.nan)
        self.part_fdr_high.labels(*mv).set(_nan(s.part_fdr_high) if s.parts_audited else math.nan)
        self.ess.labels(*mv).set(s.effective_sample_size)
        self.certified.labels(*mv).set(_nan(s.certified_risk))
        self.budget.labels(*mv).set(_nan(s.budget))
        self.over_budget.labels(*mv).set(int(s.over_budget))
        self.verified.labels(*mv).set(int(s.budget_state == BudgetState.VERIFIED))
        self.to_settle.labels(*mv).set(_nan(s.audits_to_settle))
        self.waiting.labels(*mv).set(_nan(s.audits_waiting))
        self.released.labels(*mv).set(_nan(s.qc_released_unaudited))
        self.unplaced.labels(*mv).set(_nan(s.audits_unplaced))
        self.suggested.labels(*mv).set(_nan(s.suggested_threshold))
        self.ks_statistic.labels(*mv).set(_nan(s.ks_statistic))
        self.ks_pvalue.labels(*mv).set(_nan(s.ks_pvalue))
        self.cusum.labels(*mv).set(_nan(s.cusum_statistic))
        self.cusum_alarm.labels(*mv).set(int(s.cusum_alarm))

    def _update_store(self, stats: StoreStats) -> None:
        now_queues = set()
        human_depth: dict[str, int] = {}
        for q in stats.queue:
            self._init_version(q.model, q.model_version)
            key = (q.model, q.model_version, q.route.value)
            now_queues.add(key)
            self.queue_depth.labels(*key).set(q.depth)
            self.oldest_age.labels(*key).set(q.oldest_age_s)
            if q.route is Route.HUMAN:
                human_depth[q.model] = human_depth.get(q.model, 0) + q.depth
        for key in self._queues - now_queues:  # the store lists only non-empty queues
            self.queue_depth.labels(*key).set(0)
            self.oldest_age.labels(*key).set(0)
        self._queues = now_queues
        for model, _ in self._seen:
            depth = human_depth.get(model, 0)
            over = self.max_human_queue_depth is not None and depth >= self.max_human_queue_depth
            self.over_capacity.labels(model).set(int(over))
        for key, total in stats.verdicts.items():
            self._init_version(key[0], key[1])
            delta = total - self._verdict_totals.get(key, 0)
            if delta > 0:  # the store keeps full history, so its counts only grow
                self.verdicts.labels(*key).inc(delta)
            self._verdict_totals[key] = max(total, self._verdict_totals.get(key, 0))
        self.throughput.set(sum(stats.auditor_throughput.values()) / THROUGHPUT_WINDOW_S)
        self.outbox_pending.set(stats.outbox_pending)

    def serve(self, port: int, addr: str = "0.0.0.0") -> WSGIServer:
        """Expose ``/metrics`` on ``port`` (a daemon thread); ``.shutdown()`` the result to stop it."""
        return start_metrics_server(port, self.registry, addr)
