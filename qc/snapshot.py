"""The QC picture of one model version at one moment: what the monitor's tracker computes
(:class:`monitor.tracker.QCTracker`), the metrics export, the control channel plans from, the
store keeps as history and the dashboard draws."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelQC:
    """The QC picture of one model version at one moment (what metrics and dashboards show)."""

    model: str
    version: str
    predictions: int
    auto: int  # AUTO + AUTO_QC
    human: int
    coverage: float | None  # auto / predictions
    audited: int  # AUTO_QC verdicts that judged the answer (skip and gold excluded)
    errors: int
    error_estimate: float | None  # weighted (Hajek) error rate of auto-accepted answers
    ci_low: float  # the anytime-valid confidence sequence (qc/sequential.py): valid at every audit
    ci_high: float
    certified_risk: float | None  # the card's certified risk (the bound proven at calibration)
    over_budget: bool  # budget_state is over_budget: the sequence's lower bound is above the budget
    ks_statistic: float | None
    ks_pvalue: float | None
    cusum_statistic: float | None  # nats; alarm at the design's h
    cusum_alarm: bool
    suggested_threshold: float | None
    effective_sample_size: float
    reason: str
    budget: float | None = None  # the error budget judged: the card's target risk
    budget_state: str = "not_judged"  # qc.sequential.BudgetState value
    audits_to_settle: int | None = None  # not yet known: rough audits until the state is settled
    # Kinds that accept parts one by one (a detector's boxes): the audited parts, the false ones, the
    # weighted (Hajek) false-discovery rate of accepted parts and its confidence sequence. For them
    # the budget state above judges this rate, not the answers' error rate.
    parts_audited: int | None = None
    parts_false: int | None = None
    part_fdr_estimate: float | None = None
    part_fdr_low: float | None = None
    part_fdr_high: float | None = None
    # The stream order of the audits (monitor/qc_order.py): verdicts not yet counted because an
    # earlier QC sample still waits for its verdict (or their prediction is not seen yet), QC samples
    # given up without a verdict (the audits no longer cover every sample), and verdicts left out for
    # want of a place in the stream. None in snapshots stored before they existed.
    audits_waiting: int | None = 0
    qc_released_unaudited: int | None = 0
    audits_unplaced: int | None = 0
