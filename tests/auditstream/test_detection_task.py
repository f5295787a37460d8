"""auditstream.tasks.detection: the card check, postprocessing of the detector graph's top-K rows,
per-box triage, and answer equality by one-to-one IoU matching."""

from __future__ import annotations

import numpy as np
import pytest

from auditstream.registry import ModelCard, TensorSpec, TriageSpec
from auditstream.tasks import lookup
from auditstream.tasks.detection import DEFAULT_MATCH_IOU, iou_matrix, match_iou
from auditstream.wire import Route
from qc.triage import TriagePolicy, triage

TASK = lookup("detection")
K = 4


def card(threshold_high: float = 0.9, threshold_low: float = 0.2, **extra) -> ModelCard:
    return ModelCard(name="detector", version="1", task="detection",
                     inputs=[TensorSpec("image", "float32", [None, 64, 64])],
                     outputs=[TensorSpec("boxes", "float32", [None, K, 4]), TensorSpec("labels", "int64", [None, K]),
                              TensorSpec("scores", "float32", [None, K])],
                     triage=TriageSpec(threshold_high, confidence_kind="min_box_score"),
                     labels=[str(d) for d in range(10)], extra={"threshold_low": threshold_low, **extra})


def outputs(rows: list[list[tuple[list[float], int, float]]]) -> dict[str, np.ndarray]:
    """Graph outputs from per-image rows (box, label, score), padded to K with empty low rows."""
    pad = ([0.0, 0.0, 1.0, 1.0], 0, 0.01)
    rows = [r + [pad] * (K - len(r)) for r in rows]
    return {"boxes": np.array([[b for b, _, _ in r] for r in rows], np.float32),
            "labels": np.array([[lab for _, lab, _ in r] for r in rows], np.int64),
            "scores": np.array([[s for _, _, s in r] for r in rows], np.float32)}


def test_the_card_must_say_its_low_threshold_and_graph_outputs() -> None:
    TASK.check_card(card())
    with pytest.raises(ValueError, match="threshold_low"):
        TASK.check_card(ModelCard(**{**card().__dict__, "extra": {}}))
    with pytest.raises(ValueError, match="threshold_low"):
        TASK.check_card(card(threshold_low=1.5))
    with pytest.raises(ValueError, match="match_iou"):
        TASK.check_card(card(match_iou=0.0))
    with pytest.raises(ValueError, match="lacks graph outputs"):
        TASK.check_card(ModelCard(**{**card().__dict__, "outputs": card().outputs[:1]}))
    assert match_iou(card(match_iou=0.7)) == 0.7 and match_iou(card()) == match_iou(None) == DEFAULT_MATCH_IOU


def test_postprocess_keeps_rows_at_or_above_the_low_threshold_best_first() -> None:
    out = outputs([[([10, 10, 20, 24], 3, 0.97), ([30, 5, 41, 19], 7, 0.6), ([1, 1, 5, 5], 1, 0.2)],
                   []])
    first, empty = TASK.postprocess(card(), out)
    assert [d["label"] for d in first.output] == [3, 7, 1]  # 0.2 is kept (>= threshold_low), padding dropped
    assert first.output[0] == {"box": [10.0, 10.0, 20.0, 24.0], "label": 3, "score": pytest.approx(0.97)}
    assert first.confidence == pytest.approx(0.2) and first.details == {"threshold_low": 0.2, "dropped": 1, "match_iou": 0.5,
                                                                 "labels": [str(d) for d in range(10)]}
    assert [p.confidence for p in first.parts] == [d["score"] for d in first.output]
    assert TASK.gating_confidences(first) == [d["score"] for d in first.output]
    # No box at all: the answer claims nothing, confidence 1.0 (docs/detector.md).
    assert empty.output == [] and empty.confidence == 1.0 and empty.parts == () and empty.details["dropped"] == K


def test_both_thresholds_compare_the_published_score() -> None:
    """A row is kept when the score the answer publishes (rounded to 6 decimals) clears the low
    threshold, as triage compares the published scores with the high one: one score per box, the
    one the detector's certificate counts. A float32 score 3e-7 below a threshold rounds onto it."""
    scores = np.float32([0.9999997, 0.8999997, 0.3999997, 0.2999994])  # published 1.0, 0.9, 0.4, 0.299999
    out = outputs([[([1, 1, 5, 5], 1, float(s)) for s in scores]])
    (answer,) = TASK.postprocess(card(threshold_high=0.9, threshold_low=0.4), out)
    assert [d["score"] for d in answer.output] == [1.0, 0.9, 0.4] and answer.details["dropped"] == 1
    assert all(d["score"] >= 0.4 for d in answer.output)
    (kept_at_high,) = TASK.postprocess(card(threshold_high=0.9, threshold_low=0.9), out)
    assert [d["score"] for d in kept_at_high.output] == [1.0, 0.9]
    decision = triage("r", kept_at_high.confidence, card(0.9, 0.9).triage, TriagePolicy(),
                      part_confidences=TASK.gating_confidences(kept_at_high))
    assert decision.route != Route.HUMAN  # every kept box's published score is >= 0.9


def test_non_finite_rows_are_none() -> None:
    out = outputs([[([10, 10, 20, 24], 3, 0.97)], [([10, 10, 20, 24], 3, 0.97)]])
    out["boxes"][1, 0, 0] = np.nan
    answers = TASK.postprocess(card(), out)
    assert answers[0] is not None and answers[1] is None


@pytest.mark.parametrize("scores,route", [
    ([0.97, 0.95], Route.AUTO),  # every box clears the high threshold: no human
    ([0.97, 0.6], Route.HUMAN),  # one box between the thresholds: an auditor looks
])
def test_every_kept_box_gates_the_image(scores: list[float], route: Route) -> None:
    rows = [([10, 10, 20, 24], 3, scores[0]), ([30, 5, 41, 19], 7, scores[1])]
    (answer,) = TASK.postprocess(card(), outputs([rows]))
    spec = card().triage
    decision = triage("r1", answer.confidence, spec, TriagePolicy(qc_rate=0.0),
                      part_confidences=TASK.gating_confidences(answer))
    assert decision.route is route


def test_same_answer_matches_boxes_one_to_one_by_label_and_iou() -> None:
    a = [{"box": [10, 10, 20, 24], "label": 3, "score": 0.9}, {"box": [30, 5, 41, 19], "label": 7, "score": 0.8}]
    moved = [{"box": [31, 5, 42, 19], "label": 7, "score": 0.99}, {"box": [10.5, 10, 20, 24.5], "label": 3}]
    assert TASK.same_answer(a, moved)  # order, scores and a pixel of drift do not matter
    assert TASK.answer_key(a) != TASK.answer_key(moved)  # the key is a canonical form, not the equality
    assert TASK.same_answer(a, [dict(d) for d in a]) and TASK.answer_key(a) == TASK.answer_key([dict(d) for d in a])
    relabelled = [dict(a[0], label=8), a[1]]
    assert not TASK.same_answer(a, relabelled)
    assert not TASK.same_answer(a, a[:1]) and not TASK.same_answer(a[:1], a)
    far = [a[0], {"box": [30, 12, 41, 26], "label": 7}]  # IoU 7/21 with the original: another box
    assert not TASK.same_answer(a, far)
    assert TASK.same_answer(a, far, iou=0.3)  # the card's match IoU can be looser
    # Two boxes of one label over the same object cannot both match it.
    twin = [{"box": [10, 10, 20, 24], "label": 3}, {"box": [10, 10, 20, 24], "label": 3}]
    assert not TASK.same_answer(twin, [a[0], {"box": [50, 50, 60, 60], "label": 3}])
    assert TASK.same_answer([], []) and TASK.same_answer(None, None) and not TASK.same_answer(None, [])
    assert not TASK.same_answer([{"box": [1, 2], "label": 3}], [{"box": [1, 2, 3, 4], "label": 3}])


def test_matching_finds_the_assignment_a_greedy_pass_would_miss() -> None:
    """Box p overlaps both q1 and q2, box p' only q1: only p->q2, p'->q1 matches everything."""
    a = [{"box": [0, 0, 10, 10], "label": 1}, {"box": [0, 0, 8, 10], "label": 1}]
    b = [{"box": [0, 0, 9, 10], "label": 1}, {"box": [1, 0, 11, 10], "label": 1}]
    ious = iou_matrix(np.array([d["box"] for d in a]), np.array([d["box"] for d in b]))
    assert ious[0].min() >= 0.8 and ious[1, 1] < 0.8 <= ious[1, 0]
    assert TASK.same_answer(a, b, iou=0.8)
