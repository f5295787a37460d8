"""Every comparison of detection answers matches boxes at the card's ``match_iou``.

Before, the card's ``match_iou`` was used by training's certificate only: ``audit_error`` and
``audit_false_parts`` (the store's QC reads, the monitor), the store's agreement and gold
scoring, and serving's shadow comparison all matched at the default 0.5. On a card trained with
``--match-iou 0.7`` a box at IoU 0.6 with the auditor's is false for the certificate and was no
error for the store and the monitor. Now a prediction
records the card's IoU in its details (``Detection.postprocess``), the kind's rule is bound to it
(``tasks.rule_for(kind, card)``, ``store.records.item_rule(task, details)``), and every path
compares with the bound rule.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.store.store_factories import BACKENDS, add_users, make_store

from auditstream import tasks
from auditstream.registry import ModelCard, TensorSpec, TriageSpec
from auditstream.tasks.detection import iou_matrix, match_iou
from auditstream.wire import AuditItem, Prediction, Route, VerdictKind
from qc.detection_certify import match_boxes
from store.records import audit_error, audit_false_parts, gold_is_correct, item_rule

MODEL = [{"box": [0.0, 0.0, 10.0, 10.0], "label": 3, "score": 0.99}]
AUDITOR = [{"box": [0.0, 0.0, 10.0, 16.6667], "label": 3, "score": 1.0}]  # IoU 0.6 with the model's box
T0 = 10_000.0


def card(iou: float | None) -> ModelCard:
    extra = {"threshold_low": 0.3, "max_boxes": 2, **({"match_iou": iou} if iou is not None else {})}
    return ModelCard(name="det", version="1", task="detection", inputs=[TensorSpec("x", "float32", [None, 4])],
                     outputs=[TensorSpec("boxes", "float32", [None, 2, 4]), TensorSpec("labels", "int64", [None, 2]),
                              TensorSpec("scores", "float32", [None, 2])],
                     triage=TriageSpec(0.9, target_risk=0.05), labels=[str(i) for i in range(10)], extra=extra)


def details_of(c: ModelCard) -> dict:
    """What serving records with the card's answer (Prediction.details)."""
    outputs = {"boxes": np.array([[[0, 0, 10, 10], [0, 0, 0, 0]]], np.float32), "labels": np.array([[3, 0]]),
               "scores": np.array([[0.99, 0.0]], np.float32)}
    (answer,) = tasks.lookup("detection").postprocess(c, outputs)
    return dict(answer.details)


def test_the_reviewers_case_is_an_error_at_the_cards_iou() -> None:
    assert iou_matrix(np.array([MODEL[0]["box"]]), np.array([AUDITOR[0]["box"]]))[0, 0] == pytest.approx(0.6, abs=1e-4)
    c = card(0.7)
    details = details_of(c)
    assert details["match_iou"] == 0.7
    for rule in (tasks.rule_for("detection", c), item_rule("detection", details)):
        assert audit_error(VerdictKind.CORRECT, rule, MODEL, AUDITOR)
        assert audit_false_parts(VerdictKind.CORRECT, rule, MODEL, AUDITOR) == 1
    assert not gold_is_correct("detection", VerdictKind.ACCEPT, MODEL, None, AUDITOR, details)
    # at the default (a card without match_iou, a row from before details carried it) 0.6 matches
    for rule in (tasks.rule_for("detection", card(None)), item_rule("detection", {}), item_rule("detection", None)):
        assert not audit_error(VerdictKind.CORRECT, rule, MODEL, AUDITOR)


@settings(max_examples=200, deadline=None)
@given(iou=st.sampled_from([0.3, 0.5, 0.55, 0.7, 0.9, 1.0]),
       model=st.lists(st.builds(lambda x, w, s: {"box": [x, 0, x + w, 10], "label": 0, "score": s},
                                st.integers(0, 6), st.integers(2, 10), st.sampled_from([0.6, 0.8, 0.95])),
                      min_size=1, max_size=4),
       truth=st.lists(st.builds(lambda x, w: {"box": [x, 0, x + w, 10], "label": 0}, st.integers(0, 6),
                                st.integers(2, 10)), max_size=4))
def test_property_every_rule_bound_to_a_card_counts_the_certificates_false_boxes(iou, model, truth) -> None:
    """The card's rule (serving, the monitor) and the stored item's rule (the store's reads)
    count as false exactly the boxes the certificate counts false at the card's IoU."""
    c = card(iou)
    certificate_false = int((~match_boxes(np.array([d["box"] for d in model], float), np.zeros(len(model)),
                                          np.array([d["score"] for d in model]),
                                          np.array([d["box"] for d in truth], float).reshape(-1, 4),
                                          np.zeros(len(truth)), match_iou(c))).sum())
    at_card = tasks.lookup("detection").same_answer(model, truth, iou=match_iou(c))  # equality: a largest matching
    for rule in (tasks.rule_for("detection", c), item_rule("detection", details_of(c))):
        assert audit_false_parts(VerdictKind.CORRECT, rule, model, truth) == certificate_false
        assert audit_error(VerdictKind.CORRECT, rule, model, truth) is (not at_card)


def test_a_bad_iou_reads_as_the_default_and_never_raises() -> None:
    for bad in ("0.7", None, [0.7], float("nan"), 0.0, 1.5, True):
        assert item_rule("detection", {"match_iou": bad}).iou == 0.5
        assert tasks.rule_for("detection", card(None) if bad is None else
                              ModelCard(**{**card(0.7).__dict__, "extra": {**card(0.7).extra, "match_iou": bad}})).iou == 0.5


def test_serving_compares_at_the_cards_iou() -> None:
    from serving.consumer import ServeConfig
    from auditstream.settings import Settings

    config = ServeConfig.from_settings(Settings(), card(0.7))
    assert config.task.iou == 0.7 and not config.task.same_answer(MODEL, AUDITOR)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_stores_qc_reads_agreement_and_gold_judge_at_the_items_recorded_iou(backend: str, tmp_path: Path,
                                                                                 fast_hashes: None) -> None:
    from store import StoreConfig

    details = {**details_of(card(0.7)), "threshold": 0.9}
    prediction = Prediction(request_id="q1", model="det", model_version="1", task="detection", output=MODEL,
                            confidence=0.99, route=Route.AUTO_QC, reason="test", qc_inclusion_prob=0.5,
                            created_at_s=T0, details=details)
    with make_store(backend, tmp_path, StoreConfig(double_review_rate=1.0)) as store:
        alice, bob = add_users(store, "alice", "bob")
        store.ingest(AuditItem(prediction, np.zeros((2, 2), np.float32)), T0)
        claim = store.claim(alice, 60, T0)
        store.record_verdict(store.new_verdict_id(), claim.item_id, alice, VerdictKind.CORRECT, AUDITOR, T0)
        (sample,) = list(store.qc_stream())
        assert sample.outcome.is_error and sample.outcome.false_parts == 1 and sample.outcome.parts == 1
        claim = store.claim(bob, 60, T0)
        store.record_verdict(store.new_verdict_id(), claim.item_id, bob, VerdictKind.ACCEPT, None, T0)
        assert store.agreement().percent == 0.0  # the model's box and the auditor's are two answers at 0.7


def test_the_monitor_judges_at_the_cards_iou() -> None:
    from monitor.tracker import QCConfig, QCTracker, _rule

    tracker = QCTracker(lambda m, v: card(0.7), QCConfig(min_inclusion_prob=0.01))
    state = tracker._state("det", "1")
    assert _rule(state).iou == 0.7


def test_the_workbench_decides_accept_or_correct_at_the_items_recorded_iou() -> None:
    """The auditor's answer (IoU 0.6 with the model's box) is a correction at the card's 0.7: the
    workbench said "accept" at 0.5 and the store then counted no error."""
    from dashboards import editors

    assert editors.verdict_for("detection", MODEL, AUDITOR, details_of(card(0.7))) == (VerdictKind.CORRECT, AUDITOR)
    assert editors.verdict_for("detection", MODEL, AUDITOR, details_of(card(None)))[0] is VerdictKind.ACCEPT


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_correction_that_is_no_answer_of_the_items_kind_is_refused(backend: str, tmp_path: Path,
                                                                      fast_hashes: None) -> None:
    """A detection item corrected with something that is not boxes (a label, boxes spelt as
    'bbox') is refused by the item's own kind, not only by the shape of the value."""
    prediction = Prediction(request_id="q1", model="det", model_version="1", task="detection", output=MODEL,
                            confidence=0.99, route=Route.HUMAN, reason="test", qc_inclusion_prob=1.0,
                            created_at_s=T0, details=details_of(card(0.7)))
    with make_store(backend, tmp_path) as store:
        (alice,) = add_users(store, "alice")
        store.ingest(AuditItem(prediction, np.zeros((2, 2), np.float32)), T0)
        claim = store.claim(alice, 60, T0)
        for bad in ("cat", [{"bbox": [0, 0, 1, 1], "label": 0}], 7):
            with pytest.raises(ValueError):
                store.record_verdict(store.new_verdict_id(), claim.item_id, alice, VerdictKind.CORRECT, bad, T0)
        store.record_verdict(store.new_verdict_id(), claim.item_id, alice, VerdictKind.CORRECT, AUDITOR, T0)


def test_an_accept_never_hides_a_box_the_certificate_counts_false() -> None:
    """Two overlapping boxes: a largest matching pairs both with the auditor's (the same answer),
    the certificate's greedy matching leaves one false. The workbench recorded ACCEPT (no false
    box); now the answer is a correction, so the live FDR counts the box the certificate bounds."""
    from dashboards import editors
    from store.records import verdict_for

    model = [{"box": [0, 0, 10, 10], "label": 1, "score": 0.9}, {"box": [3, 0, 13, 10], "label": 1, "score": 0.8}]
    fix = [{"box": [-2, 0, 8, 10], "label": 1, "score": 1.0}, {"box": [1, 0, 11, 10], "label": 1, "score": 1.0}]
    rule = tasks.rule_for("detection", details={"match_iou": 0.5})
    assert rule.same_answer(model, fix) and rule.false_parts(model, fix) == 1
    for kind, corrected in (verdict_for(rule, model, fix), editors.verdict_for("detection", model, fix, {"match_iou": 0.5})):
        assert (kind, corrected) == (VerdictKind.CORRECT, fix)
        assert audit_false_parts(kind, rule, model, corrected) == 1
    assert verdict_for(rule, model, model) == (VerdictKind.ACCEPT, None)  # the model's own answer: accept


def test_before_its_card_is_read_the_monitor_judges_at_the_recorded_iou() -> None:
    """A version whose card the registry does not have yet: the tracker judged its audits at 0.5
    and replayed those results once the card came, while the store judges at the recorded IoU."""
    from monitor.tracker import QCTracker
    from auditstream.wire import Verdict

    fix = [{"box": [0.0, 0.0, 10.0, 6.0], "label": 3, "score": 1.0}]  # IoU 0.6 with the model's box
    model = [{"box": [0.0, 0.0, 10.0, 10.0], "label": 3, "score": 0.9}]
    details = {"threshold_low": 0.1, "dropped": 0, "match_iou": 0.75}
    tracker = QCTracker(cards=lambda m, v: None)
    tracker.observe_prediction(Prediction("r1", "det", "7", "detection", model, 0.9, Route.AUTO_QC, "qc", 0.5, T0,
                                          details))
    tracker.observe_verdict(Verdict("v1", "r1", "det", "7", "alice", VerdictKind.CORRECT, T0 + 1, model, fix,
                                    Route.AUTO_QC, 0.5))
    [(error, _, parts, false)] = tracker.states[("det", "7")].before_card
    assert (bool(error), parts, false) == (True, 1, 1)
