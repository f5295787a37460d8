"""QC snapshots kept in the store for the dashboard: round trip, order, retention, undefined values."""

from __future__ import annotations

import dataclasses
import math

from qc.snapshot import ModelQC
from store.qc_history import RETENTION_S, QCHistory
from store import open_store


def snapshot(model: str = "zip", coverage: float | None = 0.7, **changes) -> ModelQC:
    base = ModelQC(model, "1", 1000, 700, 300, coverage, 50, 1, 0.02, 0.001, 0.1, 0.015, False, None, None, None, False,
                   None, float("nan"), "ok")  # fmt: skip
    return dataclasses.replace(base, **changes)


def test_round_trip_in_time_order_per_model(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'audit.db'}", create=True)
    history = QCHistory(store)
    assert history.save([snapshot("zip"), snapshot("digits", coverage=None)], now_s=100.0) == 2
    history.save([snapshot("zip", coverage=0.8, ks_statistic=0.1, cusum_alarm=True)], now_s=200.0)
    points = history.since(0.0)
    assert [(p.t_s, p.qc.model) for p in points] == [(100.0, "digits"), (100.0, "zip"), (200.0, "zip")]
    last = points[-1].qc
    assert (last.coverage, last.ks_statistic, last.cusum_alarm) == (0.8, 0.1, True)
    assert math.isnan(last.effective_sample_size)  # NaN is stored as null and comes back as NaN
    assert [p.qc.coverage for p in history.since(150.0)] == [0.8]
    assert [p.qc.model for p in history.since(0.0, model="digits")] == ["digits"]
    again = QCHistory(store).since(0.0)  # a second handle on the same store (IF NOT EXISTS)
    assert [(p.t_s, p.qc.model, p.qc.coverage) for p in again] == [(p.t_s, p.qc.model, p.qc.coverage) for p in points]


def test_old_rows_are_pruned_and_dropped_with_the_store(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'audit.db'}", create=True)
    history = QCHistory(store)
    history.save([snapshot()], now_s=0.0)
    history.save([snapshot()], now_s=RETENTION_S + 10.0)
    assert [p.t_s for p in history.since(-1.0)] == [RETENTION_S + 10.0]
    store.drop_tables()
    assert QCHistory(store).since(-1.0) == []
