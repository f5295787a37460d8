"""Every task kind publishes confidences in [0, 1], and a threshold above 1 never auto-accepts.

A row is answerable with probabilities up to ``PROB_TOLERANCE`` past 1 (a float32 softmax's ulp).
Before, the kinds published such a number as the confidence (a detector's score 1.0005, a
caption's mean token probability 1.0009, a ZIP reader's 1.0008), and triage compared it with a
card that certified nothing -- whose threshold is ``nextafter(1, 2)``, meant to accept nothing --
and auto-accepted it. Now :class:`~auditstream.tasks.base.Answer` and ``Part`` clip their
confidences, each kind publishes its scores and probabilities through ``base.probability``, and
triage refuses to auto-accept under any threshold above 1.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from auditstream.registry import ModelCard, TensorSpec, TriageSpec
from auditstream.tasks import lookup
from auditstream.tasks.base import PROB_TOLERANCE, TASKS, Answer, Part
from auditstream.wire import Route
from qc.triage import TriagePolicy, triage

UNCERTIFIED = float(np.nextafter(1.0, 2.0))  # qc.certify / qc.detection_certify: nothing certified
HIGH = 1.0 + PROB_TOLERANCE
VOCAB = ["<pad>", "<bos>", "<eos>", "a", "b"]


def card_of(kind: str, threshold: float, confidence_kind: str | None = None) -> ModelCard:
    """A card of ``kind`` with ``threshold``; its graph outputs as postprocess reads them."""
    if kind == "classification":
        return ModelCard(name="c", version="1", task=kind, inputs=[TensorSpec("x", "float32", [None, 4])],
                         outputs=[TensorSpec("probs", "float32", [None, 3])], triage=TriageSpec(threshold),
                         labels=["x", "y", "z"])
    if kind == "sequence":
        return ModelCard(name="s", version="1", task=kind, inputs=[TensorSpec("x", "float32", [None, 4])],
                         outputs=[TensorSpec("char_probs", "float32", [None, 3, 4])],
                         triage=TriageSpec(threshold, confidence_kind="min_char_prob"), labels=list("0123"))
    if kind == "caption":
        return ModelCard(name="cap", version="1", task=kind, inputs=[TensorSpec("x", "uint8", [None, 4])],
                         outputs=[TensorSpec("tokens", "int64", [None, 4]), TensorSpec("token_probs", "float32", [None, 4])],
                         triage=TriageSpec(threshold, confidence_kind=confidence_kind or "mean_token_prob"),
                         labels=VOCAB, extra={"end_token": "<eos>", "special_tokens": ["<pad>", "<bos>", "<eos>"]})
    if kind == "detection":
        return ModelCard(name="d", version="1", task=kind, inputs=[TensorSpec("x", "float32", [None, 4])],
                         outputs=[TensorSpec("boxes", "float32", [None, 3, 4]), TensorSpec("labels", "int64", [None, 3]),
                                  TensorSpec("scores", "float32", [None, 3])],
                         triage=TriageSpec(threshold, confidence_kind="min_box_score"), labels=["0", "1"],
                         extra={"threshold_low": 0.0 if threshold > 1 else min(threshold, 0.3), "max_boxes": 3})
    if kind == "policy":
        return ModelCard(name="p", version="1", task=kind, inputs=[TensorSpec("obs", "float32", [None, 4])],
                         outputs=[TensorSpec("action_probs", "float32", [None, 3]), TensorSpec("value", "float32", [None])],
                         triage=TriageSpec(threshold, confidence_kind=confidence_kind or "max_prob"))
    raise AssertionError(f"no card for task kind {kind!r}: add one to this test")


def probs(shape: tuple[int, ...]) -> st.SearchStrategy[np.ndarray]:
    """Float32 values in [0, 1 + PROB_TOLERANCE], the top of the range often."""
    top = float(np.nextafter(np.float32(HIGH), np.float32(0)))  # the largest float32 <= 1 + tolerance
    value = st.one_of(st.floats(0.0, top, width=32), st.sampled_from([0.0, 1.0, top, float(np.float32(1.0005))]))
    return hnp.arrays(np.float32, shape, elements=value)


@st.composite
def outputs_of(draw, kind: str) -> dict[str, np.ndarray]:
    b = draw(st.integers(1, 3))
    if kind == "classification":
        return {"probs": draw(probs((b, 3)))}
    if kind == "sequence":
        return {"char_probs": draw(probs((b, 3, 4)))}
    if kind == "caption":
        tokens = draw(hnp.arrays(np.int64, (b, 4), elements=st.integers(0, len(VOCAB) - 1)))
        return {"tokens": tokens, "token_probs": draw(probs((b, 4)))}
    if kind == "detection":
        xy = draw(hnp.arrays(np.float32, (b, 3, 2), elements=st.floats(0, 50, width=32)))
        wh = draw(hnp.arrays(np.float32, (b, 3, 2), elements=st.floats(0, 10, width=32)))
        labels = draw(hnp.arrays(np.int64, (b, 3), elements=st.integers(0, 1)))
        return {"boxes": np.concatenate([xy, xy + wh], axis=-1), "labels": labels, "scores": draw(probs((b, 3)))}
    if kind == "policy":
        raw = draw(probs((b, 3))).astype(np.float64)
        how = draw(st.sampled_from(["raw", "normalised", "one hot high"]))
        if how == "normalised":  # a distribution, then pushed up by up to the tolerance
            raw = raw / np.maximum(raw.sum(axis=1, keepdims=True), 1e-9) * (1 + PROB_TOLERANCE * 0.9)
        elif how == "one hot high":
            raw = np.zeros((b, 3)); raw[:, draw(st.integers(0, 2))] = HIGH * 0.99995
        return {"action_probs": raw.astype(np.float32), "value": np.zeros(b, np.float32)}
    raise AssertionError(f"no outputs for task kind {kind!r}: add them to this test")


CONFIDENCE_KINDS = {"caption": ["joint_token_prob", "mean_token_prob", "min_token_prob"],
                    "policy": ["max_prob", "prob_gap", "entropy"]}
KINDS = [(k.value, c) for k, t in TASKS.items() if t.served for c in CONFIDENCE_KINDS.get(k.value, [None])]


def published_probabilities(kind: str, answer: Answer) -> list[float]:
    """Every score or probability the kind publishes besides the confidences."""
    d, out = answer.details, []
    if kind == "detection":
        out = [box["score"] for box in answer.output]
    elif kind == "caption":
        out = list(d["token_confidences"]) + ([d["end_confidence"]] if d["end_confidence"] is not None else [])
    elif kind == "sequence":
        out = list(d["char_confidences"])
    elif kind == "classification":
        out = list(d["probs"]) + [r["prob"] for r in d["runner_ups"]]
    elif kind == "policy":
        out = list(d["action_probs"])
    return out


def test_every_served_kind_is_covered() -> None:
    assert {k for k, _ in KINDS} == {k.value for k, t in TASKS.items() if t.served}


@pytest.mark.parametrize("kind, confidence_kind", KINDS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_outputs_up_to_the_tolerance_make_confidences_in_the_unit_interval_and_nothing_passes_a_threshold_above_1(
        kind: str, confidence_kind: str | None, data: st.DataObject) -> None:
    outputs = data.draw(outputs_of(kind))
    threshold = data.draw(st.sampled_from([UNCERTIFIED, 1.5, 0.0 + 1.0e-9, 0.5]))
    card = card_of(kind, threshold, confidence_kind)
    task = lookup(kind)
    task.check_card(card)
    answered = 0
    for i, answer in enumerate(task.postprocess(card, outputs)):
        if answer is None:
            continue
        answered += 1
        assert 0.0 <= answer.confidence <= 1.0, (kind, answer.confidence)
        assert all(0.0 <= p.confidence <= 1.0 for p in answer.parts), (kind, answer.parts)
        assert all(0.0 <= p <= 1.0 for p in published_probabilities(kind, answer)), (kind, answer)
        decision = triage(f"r{i}", answer.confidence, card.triage, TriagePolicy(),
                          part_confidences=task.gating_confidences(answer))
        if threshold > 1.0:
            assert decision.route is Route.HUMAN, (kind, answer.confidence, decision)


@settings(max_examples=300, deadline=None)
@given(confidence=st.floats(allow_nan=True, allow_infinity=True),
       threshold=st.one_of(st.just(UNCERTIFIED), st.floats(min_value=1.0, exclude_min=True, allow_infinity=True),
                           st.just(math.nan)),
       parts=st.one_of(st.none(), st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=4)),
       part_threshold=st.one_of(st.none(), st.floats(0.0, 1.0)))
def test_a_threshold_above_1_never_auto_accepts_whatever_the_confidence(confidence, threshold, parts,
                                                                        part_threshold) -> None:
    """Belt and braces: even a confidence above 1 from a kind that forgot to clip (or a part
    threshold of 0 in the policy) is not auto-accepted under a card that certified nothing."""
    spec = TriageSpec(1.0) if math.isnan(threshold) else TriageSpec(threshold)
    if math.isnan(threshold):
        object.__setattr__(spec, "threshold", threshold)
    decision = triage("r", confidence, spec, TriagePolicy(part_threshold=part_threshold), part_confidences=parts)
    assert decision.route is Route.HUMAN


def test_the_reviewers_hostile_outputs_are_published_as_1_and_deferred_on_an_uncertified_card() -> None:
    """A review's hostile outputs: detector 1.0005, caption 1.0009, ZIP reader 1.0008 were AUTO."""
    det = card_of("detection", UNCERTIFIED)
    det = ModelCard(**{**det.__dict__, "extra": {**det.extra, "threshold_low": 0.3}})
    scores = np.array([[1.0005, 0.0, 0.0]], np.float32)
    (a,) = lookup("detection").postprocess(det, {"boxes": np.tile(np.array([10, 10, 20, 20], np.float32), (1, 3, 1)),
                                                 "labels": np.zeros((1, 3), np.int64), "scores": scores})
    assert a.confidence == 1.0 and a.output[0]["score"] == 1.0
    cap = card_of("caption", UNCERTIFIED)
    (c,) = lookup("caption").postprocess(cap, {"tokens": np.array([[3, 4, 2, 0]]),
                                               "token_probs": np.full((1, 4), 1.0009, np.float32)})
    assert c.confidence == 1.0
    seq = card_of("sequence", UNCERTIFIED)
    p = np.zeros((1, 3, 4), np.float32); p[0, :, 2] = 1.0008
    (s,) = lookup("sequence").postprocess(seq, {"char_probs": p})
    assert s.confidence == 1.0 and s.details["char_confidences"] == [1.0, 1.0, 1.0]
    for card, answer in ((det, a), (cap, c), (seq, s)):
        task = lookup(card.task)
        assert triage("r", answer.confidence, card.triage, TriagePolicy(),
                      part_confidences=task.gating_confidences(answer)).route is Route.HUMAN


def test_answer_and_part_clip_their_confidences() -> None:
    assert Answer("x", 1.0005).confidence == 1.0 and Answer("x", -0.0005).confidence == 0.0
    assert Part(0, "x", 1.0009).confidence == 1.0
    assert math.isnan(Answer("x", math.nan).confidence)  # NaN stays NaN: triage never accepts it
