"""The live false-discovery rate of a detector's auto-accepted boxes (issue 10): the kind counts
an audited answer's false boxes by its own matching, the confidence sequence over
``(F - m A) / K`` stays valid at every audit under risk-weighted QC, the tracker judges the
card's budget on that rate (not on the answers' error rate), the metrics export it, and a
monitor restarted from the store (SQLite, PostgreSQL) continues exactly where it was."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from tests.monitor.test_service import RecordingProducer
from tests.store.store_factories import BACKENDS, add_users, make_store

from auditstream import tasks
from auditstream.registry import ModelCard, ModelRegistry, TensorSpec, TriageSpec
from auditstream.settings import Settings
from auditstream.wire import AuditItem, Prediction, Route, Verdict, VerdictKind
from monitor.metrics import MonitorMetrics, StoreStats
from monitor.service import StatsHooks, publish_outbox
from monitor.tracker import QCConfig, QCTracker
from qc.sequential import BettingState, SequenceConfig
from store import AuditStore, StoreConfig, accounts
from store.records import audit_false_parts

DETECTION = tasks.lookup("detection")
K = 16
BOXES = [{"box": [2.0, 2.0, 12.0, 18.0], "label": 7, "score": 0.99},
         {"box": [20.0, 4.0, 30.0, 20.0], "label": 1, "score": 0.98},
         {"box": [40.0, 30.0, 52.0, 46.0], "label": 3, "score": 0.97}]  # fmt: skip


def _card() -> ModelCard:
    return ModelCard(name="parcel", version="1", task="detection", inputs=[TensorSpec("image", "float32", [None, 64, 64])],
                     outputs=[TensorSpec("boxes", "float32", [None, K, 4]), TensorSpec("labels", "int64", [None, K]),
                              TensorSpec("scores", "float32", [None, K])],
                     triage=TriageSpec(threshold=0.9, confidence_kind="min_box_score", target_risk=0.02, delta=0.05,
                                       certified_risk=0.02, coverage=0.9, method="learn-then-test"),
                     extra={"threshold_low": 0.2, "max_boxes": K, "match_iou": 0.5})  # fmt: skip


def _moved(box: dict, dx: float) -> dict:
    x0, y0, x1, y1 = box["box"]
    return {**box, "box": [x0 + dx, y0, x1 + dx, y1]}


def test_false_boxes_are_the_model_boxes_the_auditor_does_not_confirm() -> None:
    nudged = [_moved(BOXES[0], 1.0), *BOXES[1:]]  # IoU ~0.8: the same box
    relabelled = [BOXES[0], {**BOXES[1], "label": 4}, BOXES[2]]
    deleted = BOXES[:2]
    added = [*BOXES, {"box": [50.0, 2.0, 60.0, 14.0], "label": 9}]  # a missed digit is no false box
    moved_away = [_moved(BOXES[0], 8.0), *BOXES[1:]]  # IoU 0.11: not the same box
    counts = {name: audit_false_parts(VerdictKind.CORRECT, DETECTION, BOXES, fix) for name, fix in
              [("nudged", nudged), ("relabelled", relabelled), ("deleted", deleted), ("added", added),
               ("moved_away", moved_away)]}  # fmt: skip
    assert counts == {"nudged": 0, "relabelled": 1, "deleted": 1, "added": 0, "moved_away": 1}
    assert audit_false_parts(VerdictKind.ACCEPT, DETECTION, BOXES, None) == 0
    assert audit_false_parts(VerdictKind.REJECT, DETECTION, BOXES, None) == 3  # wrong, without saying which
    assert audit_false_parts(VerdictKind.CORRECT, DETECTION, BOXES, [{"box": "junk", "label": 1}]) == 3
    assert DETECTION.count_parts(BOXES) == 3 and DETECTION.false_parts([], BOXES) == 0
    assert DETECTION.max_parts(_card()) == K and tasks.lookup("classification").max_parts(_card()) is None


def test_the_fdr_sequence_covers_the_population_rate_at_every_audit_under_weighted_qc() -> None:
    """300 monitors watch 4,000 audits each. QC samples unsure answers 10x as often as sure ones
    (pi 0.2 vs 0.02), and unsure answers hold the false boxes: the audited boxes are ~3x as often
    false as the population's (2.0%). At m = 2.0% neither gambler may ever win in more than alpha
    of the monitors (Ville), and the weighted point estimate finds the population's rate."""
    rng = np.random.default_rng(3)
    runs, audits, config = 300, 4000, SequenceConfig(min_inclusion_prob=0.02)
    p_unsure = 0.2 * 0.2 / (0.2 * 0.2 + 0.8 * 0.02)  # among audited answers
    fdr = 0.8 * 0.005 + 0.2 * 0.08  # population: boxes per answer do not depend on the stratum
    state = BettingState(np.float64(fdr), config, shape=(runs,))
    sums = np.zeros(4)  # unweighted F, A; weighted F, A (first run only)
    for _ in range(audits):
        unsure = rng.random(runs) < p_unsure
        pis = np.where(unsure, 0.2, 0.02)
        boxes = rng.integers(1, 9, size=runs)
        false = rng.binomial(boxes, np.where(unsure, 0.08, 0.005))
        state.update(false / K, pis, boxes / K)
        sums += (false[0], boxes[0], false[0] / pis[0], boxes[0] / pis[0])
    assert np.mean(state.shown_over | state.shown_under) <= 0.05
    assert sums[0] / sums[1] > 2.5 * fdr  # what an unweighted monitor would report
    assert sums[2] / sums[3] == pytest.approx(fdr, rel=0.2)


def _feed(tracker: QCTracker, rng: np.random.Generator, n: int, p_false: float, start: int = 0) -> tuple[float, float]:
    """``n`` audited QC answers of 1-8 boxes, each box false with ``p_false``; returns the weighted
    sums (F / pi, A / pi) a hand computation gives."""
    f_w = a_w = 0.0
    for i in range(start, start + n):
        rid, pi = f"r{i}", (0.05, 0.5)[i % 2]
        output = [{"box": [8.0 * j, 0.0, 8.0 * j + 7.0, 12.0], "label": j % 10, "score": 0.99}
                  for j in range(int(rng.integers(1, 9)))]  # fmt: skip
        wrong = rng.random(len(output)) < p_false
        fixed = [{**d, "label": (d["label"] + 1) % 10} if w else d for d, w in zip(output, wrong)]
        tracker.observe_prediction(Prediction(rid, "parcel", "1", "detection", output, 0.99, Route.AUTO_QC, "", pi, 0.0))
        kind = VerdictKind.CORRECT if wrong.any() else VerdictKind.ACCEPT
        tracker.observe_verdict(Verdict(f"v{i}", rid, "parcel", "1", "a", kind, 1.0, output,
                                        fixed if wrong.any() else None, Route.AUTO_QC, pi))  # fmt: skip
        f_w, a_w = f_w + wrong.sum() / pi, a_w + len(output) / pi
    return f_w, a_w


def test_the_tracker_judges_a_detectors_budget_on_its_boxes_and_exports_it() -> None:
    # Bets are bounded by K = 16 boxes per answer while answers hold ~4.5: a clean detector needs
    # thousands of audits to be verified (docs/qc-statistics.md).
    clean = QCTracker(lambda m, v: _card(), QCConfig(min_inclusion_prob=0.05))
    f_w, a_w = _feed(clean, np.random.default_rng(0), 4000, 0.002)
    (qc,) = clean.snapshot()
    assert qc.part_fdr_estimate == pytest.approx(f_w / a_w) and qc.parts_audited > 4 * qc.audited
    assert qc.part_fdr_low <= qc.part_fdr_estimate <= qc.part_fdr_high < 0.02
    assert qc.budget == 0.02 and qc.budget_state == "within_budget" and not qc.over_budget
    # Answers of 4.5 boxes err far more often than boxes: the answers' rate is shown, not judged.
    assert qc.error_estimate > qc.part_fdr_estimate and qc.cusum_statistic is None
    assert "false-discovery rate of accepted parts shown below 0.0200" in qc.reason

    bad = QCTracker(lambda m, v: _card(), QCConfig(min_inclusion_prob=0.05))
    _feed(bad, np.random.default_rng(1), 1500, 0.06)
    (over,) = bad.snapshot()
    assert over.budget_state == "over_budget" and over.over_budget and over.part_fdr_low > 0.02
    assert over.suggested_threshold is None  # the answer-level suggestion does not apply to boxes

    registry = CollectorRegistry()
    metrics, labels = MonitorMetrics(registry), {"model": "parcel", "version": "1"}
    metrics.update([qc], StoreStats([], {}, {}, 0))
    assert registry.get_sample_value("auditstream_qc_part_fdr_ratio", labels) == pytest.approx(f_w / a_w)
    assert registry.get_sample_value("auditstream_qc_part_fdr_ratio_upper_bound", labels) == qc.part_fdr_high
    assert registry.get_sample_value("auditstream_qc_audited_parts", labels) == qc.parts_audited
    assert registry.get_sample_value("auditstream_qc_budget_verified", labels) == 1
    metrics.update([over], StoreStats([], {}, {}, 0))
    assert registry.get_sample_value("auditstream_qc_over_budget", labels) == 1
    assert registry.get_sample_value("auditstream_qc_part_fdr_ratio_lower_bound", labels) == over.part_fdr_low


def test_a_classifier_exports_no_box_rate() -> None:
    card = ModelCard(name="digits", version="1", task="classification", inputs=[], outputs=[],
                     triage=TriageSpec(threshold=0.9, target_risk=0.02))  # fmt: skip
    tracker = QCTracker(lambda m, v: card, QCConfig(min_inclusion_prob=0.05))
    tracker.observe_prediction(Prediction("r", "digits", "1", "classification", 3, 0.99, Route.AUTO_QC, "", 0.5, 0.0))
    tracker.observe_verdict(Verdict("v", "r", "digits", "1", "a", VerdictKind.ACCEPT, 1.0, 3, None, Route.AUTO_QC, 0.5))
    (qc,) = tracker.snapshot()
    assert qc.parts_audited is None and qc.part_fdr_estimate is None and qc.budget_state == "not_yet_known"
    registry = CollectorRegistry()
    MonitorMetrics(registry).update([qc], StoreStats([], {}, {}, 0))
    assert math.isnan(registry.get_sample_value("auditstream_qc_part_fdr_ratio", {"model": "digits", "version": "1"}))


# --------------------------------------------------------------------------------------------
# a restart: the store's audited history seeds the same statistics


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AuditStore]:
    monkeypatch.setattr(accounts, "SCRYPT_N", 2**8)
    with make_store(request.param, tmp_path, StoreConfig(gold_rate=0.0, seed=1)) as s:
        yield s


def test_a_restarted_monitor_continues_the_box_fdr_from_the_store(store: AuditStore, tmp_path: Path) -> None:
    ModelRegistry(tmp_path / "models").publish(_card(), b"cards only: the monitor never loads the model")
    settings = Settings(topic_prefix="t", models_dir=tmp_path / "models", metrics_port=0)
    add_users(store, "alice")
    alice = store.accounts.get("alice")
    items = [AuditItem(Prediction(f"q{i}", "parcel", "1", "detection", BOXES[: 1 + i % 3], 0.97, Route.AUTO_QC, "qc",
                                  (0.1, 0.5, 1.0)[i % 3], 1000.0, {"threshold": 0.9}),
                       np.zeros((64, 64), np.float32)) for i in range(24)]  # fmt: skip
    store.ingest_many(items, 9_000.0)
    now = 9_000.0
    for k in range(24):
        claim = store.claim(alice, 60, now)
        output = claim.item.output
        now += 1.0
        if k % 4 == 1:  # one box relabelled
            kind, fix = "correct", [{**output[0], "label": (output[0]["label"] + 1) % 10}, *output[1:]]
        elif k % 4 == 2:  # every box nudged by a pixel: the same answer, no false box
            kind, fix = "correct", [_moved(d, 1.0) for d in output]
        elif k % 8 == 3:
            kind, fix = "reject", None
        else:
            kind, fix = "accept", None
        store.record_verdict(store.new_verdict_id(), claim.item_id, alice, kind, fix, now)
    live = StatsHooks(settings, store, metrics_registry=CollectorRegistry())
    for item in items:  # the predictions stream gives the live tracker the order of the audits
        live.observe_prediction(item.prediction)
    producer = RecordingProducer()
    publish_outbox(store, producer, settings, now, limit=10_000, on_verdict=live.observe_verdict, topic_log=producer)
    (before,) = live.tracker.snapshot()
    history = list(store.audited_qc_history())
    assert len(history) == 24 and all(o.parts is not None for o in history)
    assert before.parts_audited == sum(o.parts for o in history) and before.parts_false == sum(o.false_parts
                                                                                              for o in history)
    assert 0 < before.parts_false < before.parts_audited and before.part_fdr_low is not None
    restarted = StatsHooks(settings, store, metrics_registry=CollectorRegistry())
    assert restarted.seed_from_store(store) == 24
    (after,) = restarted.tracker.snapshot()
    fields = ("parts_audited", "parts_false", "part_fdr_estimate", "part_fdr_low", "part_fdr_high", "budget_state")
    assert {f: getattr(after, f) for f in fields} == {f: getattr(before, f) for f in fields}
