"""What a row of graph outputs must be to make an answer, for every kind
(auditstream.tasks.base.answerable_rows): probabilities and scores in [0, 1], boxes drawn forwards,
label indices of the card, no more boxes than the card's ``max_boxes``, one-character sequence
labels. Before, a classifier exported without its softmax answered with confidence 7.5 and was
auto-accepted; a detector's logit scores, a box with x1 < x0 and a label of -7 were published; a
detector returning more boxes than its card's ``max_boxes`` was auto-accepted and then left out of
the monitor's false-discovery estimate."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tests.conftest import tiny_card

from auditstream.registry import ModelCard, TensorSpec, TriageSpec
from auditstream.tasks import lookup
from auditstream.tasks.base import PROB_TOLERANCE, answerable_rows


def detection_card(k: int | None = None, max_boxes: int = 0, labels: int = 10) -> ModelCard:
    extra = {"threshold_low": 0.3, **({"max_boxes": max_boxes} if max_boxes else {})}
    return ModelCard(name="det", version="1", task="detection", inputs=[TensorSpec("image", "float32", [None, 4])],
                     outputs=[TensorSpec("boxes", "float32", [None, k, 4]), TensorSpec("labels", "int64", [None, k]),
                              TensorSpec("scores", "float32", [None, k])],
                     triage=TriageSpec(threshold=0.9), labels=[str(i) for i in range(labels)], extra=extra)


def sequence_card(labels: list[str], classes: int | None = None) -> ModelCard:
    return ModelCard(name="zip", version="1", task="sequence", inputs=[TensorSpec("x", "float32", [None, 4])],
                     outputs=[TensorSpec("char_probs", "float32", [None, 3, classes])],
                     triage=TriageSpec(threshold=0.5), labels=labels)


def caption_card() -> ModelCard:
    return ModelCard(name="cap", version="1", task="caption", inputs=[TensorSpec("x", "uint8", [None, 4])],
                     outputs=[TensorSpec("tokens", "int64", [None, 4]),
                              TensorSpec("token_probs", "float32", [None, 4])],
                     triage=TriageSpec(0.5, confidence_kind="min_token_prob"), labels=["<pad>", "<eos>", "red", "dot"],
                     extra={"special_tokens": ["<pad>"]})


def detections(rows: list[tuple[list[float], int, float]]) -> dict[str, np.ndarray]:
    return {"boxes": np.array([[b for b, _, _ in rows]], np.float32).reshape(1, len(rows), 4),
            "labels": np.array([[lab for _, lab, _ in rows]], np.int64).reshape(1, len(rows)),
            "scores": np.array([[s for _, _, s in rows]], np.float32).reshape(1, len(rows))}


def answer(card: ModelCard, outputs: dict[str, np.ndarray]) -> Any:
    (a,) = lookup(card.task).postprocess(card, outputs)
    return a


# -- the shared check -----------------------------------------------------------------------------

def test_answerable_rows_checks_each_row_apart() -> None:
    probs = np.array([[0.2, 0.8], [7.5, -2.0], [np.nan, 0.5], [1.0 + PROB_TOLERANCE / 2, 0.0], [1.01, 0.0]])
    assert answerable_rows(probs=probs).tolist() == [True, False, False, True, False]
    boxes = np.array([[[0, 0, 1, 1]], [[50, 60, -10, -20]], [[0, 5, 1, 4]], [[0, 0, np.inf, 1]]], np.float32)
    assert answerable_rows(boxes=boxes).tolist() == [True, False, False, False]
    labels = np.array([[0, 9], [-7, 0], [10, 0]])
    assert answerable_rows(labels=labels, n_labels=10).tolist() == [True, False, False]
    assert answerable_rows(labels=labels).tolist() == [True, False, True]  # without a label list: >= 0
    assert answerable_rows(labels=np.array([[1.0], [1.5], [np.inf]])).tolist() == [True, False, False]
    assert answerable_rows(boxes=np.zeros((2, 3, 5))).tolist() == [False, False]  # not four numbers a box
    assert answerable_rows(probs=np.zeros((2, 0)), boxes=np.zeros((2, 0, 4))).tolist() == [True, True]


# -- each kind ------------------------------------------------------------------------------------

def test_a_classifier_answering_logits_is_no_answer() -> None:
    card = tiny_card(classes=3)
    logits, probs = np.array([[7.5, -2.0, 1.0]], np.float32), np.array([[0.7, 0.1, 0.2]], np.float32)
    assert answer(card, {"probs": logits}) is None
    assert answer(card, {"probs": probs}).confidence == pytest.approx(0.7)


def test_a_sequence_model_with_scores_outside_the_unit_interval_is_no_answer() -> None:
    card = sequence_card(list("abc"), 3)
    good = np.full((1, 3, 3), 0.1, np.float32)
    good[0, :, 1] = 0.8
    assert answer(card, {"char_probs": good}).output == "bbb"
    bad = good.copy()
    bad[0, 2, 0] = 1.5
    assert answer(card, {"char_probs": bad}) is None


def test_a_caption_with_token_probabilities_outside_the_unit_interval_is_no_answer() -> None:
    card = caption_card()
    tokens = np.array([[2, 3, 1, 0]], np.int64)
    assert answer(card, {"tokens": tokens, "token_probs": np.array([[0.9, 0.8, 0.95, 1.0]], np.float32)}).output \
        == "red dot"
    assert answer(card, {"tokens": tokens, "token_probs": np.array([[3.2, 0.8, 0.95, 1.0]], np.float32)}) is None
    assert answer(card, {"tokens": tokens * 0 + 4, "token_probs": np.ones((1, 4), np.float32)}) is None  # not a word


@pytest.mark.parametrize("row", [
    ([0, 0, 10, 10], 3, 4.2),  # a logit score
    ([0, 0, 10, 10], 3, -0.5),
    ([50, 60, -10, -20], 3, 0.9),  # x1 < x0 and y1 < y0
    ([0, 20, 10, 10], 3, 0.9),  # y1 < y0
    ([0, 0, 10, 10], -7, 0.9),  # a negative label
    ([0, 0, 10, 10], 10, 0.9),  # past the card's 10 labels
], ids=["logit", "negative-score", "backwards", "upside-down", "negative-label", "label-past-card"])
def test_a_detection_that_is_not_boxes_labels_and_probabilities_is_no_answer(row: tuple) -> None:
    card = detection_card()
    good = ([1, 2, 11, 12], 3, 0.95)
    assert answer(card, detections([good])).output == [{"box": [1.0, 2.0, 11.0, 12.0], "label": 3,
                                                        "score": pytest.approx(0.95)}]
    assert answer(card, detections([good, row])) is None


def test_a_dropped_detection_row_may_hold_padding_boxes_and_labels() -> None:
    """Rows below threshold_low are not published: a graph may pad them (label -1, an empty box)."""
    a = answer(detection_card(), detections([([1, 2, 11, 12], 3, 0.95), ([0, 0, -1, -1], -1, 0.0)]))
    assert [d["label"] for d in a.output] == [3] and a.details["dropped"] == 1


# -- max_boxes ------------------------------------------------------------------------------------

def test_a_row_with_more_kept_boxes_than_max_boxes_is_no_answer() -> None:
    card = detection_card(max_boxes=2)
    box = ([0, 0, 10, 10], 0, 0.9)
    low = ([0, 0, 10, 10], 0, 0.1)
    assert len(answer(card, detections([box, box])).output) == 2
    assert len(answer(card, detections([box, box, low, low, low])).output) == 2  # the dropped rows do not count
    assert answer(card, detections([box] * 5)) is None
    assert len(answer(detection_card(), detections([box] * 5)).output) == 5  # no max_boxes: no bound


@pytest.mark.parametrize(("k", "max_boxes", "ok"), [(16, 16, True), (8, 16, True), (None, 16, True), (16, 0, True),
                                                     (17, 16, False), (5, 2, False)])
def test_the_card_check_refuses_a_graph_with_more_rows_than_max_boxes(k: int | None, max_boxes: int, ok: bool) -> None:
    card = detection_card(k, max_boxes)
    if ok:
        lookup("detection").check_card(card)
    else:
        with pytest.raises(ValueError, match=f"{k} rows per image but extra.max_boxes is {max_boxes}"):
            lookup("detection").check_card(card)


@pytest.mark.parametrize(("name", "shape", "match"), [
    ("boxes", [None, 16, 5], "boxes has shape"), ("boxes", [None, 16], "boxes has shape"),
    ("labels", [None, 16, 1], "labels has shape"), ("scores", [None, 8], "one K"),
])
def test_the_card_check_refuses_detection_outputs_of_another_shape(name: str, shape: list, match: str) -> None:
    card = detection_card(16, 16)
    outputs = [dataclasses.replace(o, shape=shape) if o.name == name else o for o in card.outputs]
    with pytest.raises(ValueError, match=match):
        lookup("detection").check_card(dataclasses.replace(card, outputs=outputs))


# -- sequence labels ------------------------------------------------------------------------------

@pytest.mark.parametrize("labels", [["a", "10", "c"], ["", "a", "b"], ["ab", "c", "d"]])
def test_a_sequence_card_whose_labels_are_not_one_character_each_is_refused(labels: list[str]) -> None:
    """"10" made the 3-position answer "10ac" with parts and runner-ups at the wrong positions;
    "" raised IndexError for every record (a failure streak against the model)."""
    with pytest.raises(ValueError, match=r"labels\[\d\] = .* must be exactly one character"):
        lookup("sequence").check_card(sequence_card(labels, 3))


def test_a_sequence_card_of_one_class_is_refused_and_a_dynamic_class_past_ten_is_no_answer() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        lookup("sequence").check_card(sequence_card(["a"], 1))
    card = sequence_card(["a", "b"])  # dynamic class axis
    lookup("sequence").check_card(card)
    probs = np.full((1, 3, 12), 0.01, np.float32)
    probs[0, :, 3] = 0.8
    assert answer(card, {"char_probs": probs}).output == "333"  # a class past the alphabet: its one digit
    probs[0, 1, 11] = 0.9  # class 11 has no one-character name
    assert answer(card, {"char_probs": probs}) is None
    assert lookup("sequence").postprocess(card, {"char_probs": np.full((2, 3, 1), 1.0, np.float32)}) == [None, None]


# -- property: whatever numbers a graph returns -----------------------------------------------------

VALUES = st.one_of(st.floats(-3, 3, width=32), st.sampled_from([0.0, 1.0, np.nan, np.inf, -np.inf, 1e30]))


def _within_unit(x: float) -> bool:
    return -PROB_TOLERANCE <= x <= 1 + PROB_TOLERANCE


@settings(max_examples=300, deadline=None)
@given(data=st.data(), kind=st.sampled_from(["classification", "sequence", "detection", "caption"]))
def test_property_every_answer_has_probabilities_in_the_unit_interval_and_boxes_drawn_forwards(data: Any,
                                                                                               kind: str) -> None:
    rows = data.draw(st.integers(1, 3))
    if kind == "classification":
        card = tiny_card(classes=4)
        out = {"probs": data.draw(hnp.arrays(np.float32, (rows, 4), elements=VALUES))}
    elif kind == "sequence":
        card = sequence_card(list("abcd"), 4)
        out = {"char_probs": data.draw(hnp.arrays(np.float32, (rows, 3, 4), elements=VALUES))}
    elif kind == "caption":
        card = caption_card()
        out = {"tokens": data.draw(hnp.arrays(np.int64, (rows, 4), elements=st.integers(-2, 5))),
               "token_probs": data.draw(hnp.arrays(np.float32, (rows, 4), elements=VALUES))}
    else:
        card = detection_card(max_boxes=3, labels=4)
        out = {"boxes": data.draw(hnp.arrays(np.float32, (rows, 4, 4), elements=st.floats(-5, 20, width=32))),
               "labels": data.draw(hnp.arrays(np.int64, (rows, 4), elements=st.integers(-2, 5))),
               "scores": data.draw(hnp.arrays(np.float32, (rows, 4), elements=VALUES))}
    answers = lookup(kind).postprocess(card, out)
    assert len(answers) == rows
    for a in answers:
        if a is None:
            continue
        assert _within_unit(a.confidence) and all(_within_unit(p.confidence) for p in a.parts)
        if kind == "detection":
            assert len(a.output) <= 3
            for d in a.output:
                x0, y0, x1, y1 = d["box"]
                assert x0 <= x1 and y0 <= y1 and 0 <= d["label"] < 4 and _within_unit(d["score"])
        if kind == "sequence":
            assert len(a.output) == 3
