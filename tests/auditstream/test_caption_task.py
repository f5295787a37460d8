"""The caption kind (auditstream/tasks/caption.py): ids to text, the three confidences with known
answers, truncated and malformed rows, the card checks, and the one answer-equality rule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from auditstream.registry import ModelCard, TensorSpec, TriageSpec
from auditstream.tasks import lookup
from auditstream.tasks.caption import caption_confidence, normalize_caption

VOCABULARY = ["<pad>", "<bos>", "<eos>", ":", ",", "two", "objects", "red", "circle", "blue", "near"]
PAD, EOS = 0, 2
TASK = lookup("caption")


def caption_card(kind: str = "joint_token_prob", labels: list[str] = VOCABULARY, extra: dict | None = None) -> ModelCard:
    return ModelCard(name="cap", version="1", task="caption", inputs=[TensorSpec("image", "uint8", [None, 8, 8, 3])],
                     outputs=[TensorSpec("tokens", "int64", [None, 8]), TensorSpec("token_probs", "float32", [None, 8])],
                     triage=TriageSpec(0.9, confidence_kind=kind), labels=labels,
                     extra={"end_token": "<eos>", "special_tokens": ["<pad>", "<bos>", "<eos>"]} if extra is None else extra)


def outputs(rows: list[list[tuple[int, float]]]) -> dict[str, np.ndarray]:
    ids = np.full((len(rows), 8), PAD, np.int64)
    probs = np.ones((len(rows), 8), np.float32)
    for r, row in enumerate(rows):
        for t, (i, p) in enumerate(row):
            ids[r, t], probs[r, t] = i, p
    return {"tokens": ids, "token_probs": probs}


# two objects : red circle <eos>
SENTENCE = [(5, 0.99), (6, 0.98), (3, 0.97), (7, 0.6), (8, 0.9), (EOS, 0.95)]


@pytest.mark.parametrize(("kind", "expected"), [
    ("joint_token_prob", 0.99 * 0.98 * 0.97 * 0.6 * 0.9 * 0.95),
    ("mean_token_prob", (0.99 + 0.98 + 0.97 + 0.6 + 0.9 + 0.95) / 6),
    ("min_token_prob", 0.6),
])
def test_text_parts_and_each_confidence(kind: str, expected: float) -> None:
    (answer,) = TASK.postprocess(caption_card(kind), outputs([SENTENCE]))
    assert answer.output == "two objects: red circle"
    assert answer.confidence == pytest.approx(expected, abs=1e-6)
    assert [(p.value, p.confidence) for p in answer.parts] == [
        ("two", pytest.approx(0.99)), ("objects", pytest.approx(0.98)), (":", pytest.approx(0.97)),
        ("red", pytest.approx(0.6)), ("circle", pytest.approx(0.9))]
    assert answer.details["tokens"] == ["two", "objects", ":", "red", "circle"]
    assert answer.details["end_confidence"] == pytest.approx(0.95) and answer.details["truncated"] is False
    assert TASK.gating_confidences(answer) is None  # the caption is certified whole, no word gates


def test_a_caption_without_end_token_is_truncated_and_never_sure() -> None:
    (answer,) = TASK.postprocess(caption_card(), outputs([[(7, 0.99)] * 8]))
    assert answer.output == " ".join(["red"] * 8) and answer.confidence == 0.0 and answer.details["truncated"]


def test_malformed_rows_fail_alone() -> None:
    rows = outputs([SENTENCE, SENTENCE, SENTENCE])
    rows["token_probs"][1, 0] = np.nan
    rows["tokens"][2, 1] = len(VOCABULARY)  # an id outside the vocabulary
    good, nan, unknown = TASK.postprocess(caption_card(), rows)
    assert good is not None and nan is None and unknown is None


def test_confidence_kinds_by_hand() -> None:
    assert caption_confidence([0.5, 0.5], "joint_token_prob") == pytest.approx(0.25)
    assert caption_confidence([0.5, 1.0], "mean_token_prob") == pytest.approx(0.75)
    assert caption_confidence([], "min_token_prob") == 0.0
    assert math.isclose(caption_confidence([1e-200, 1e-200], "joint_token_prob"), 0.0, abs_tol=1e-300)
    with pytest.raises(ValueError, match="confidence kind"):
        caption_confidence([0.5], "max_prob")


def test_card_checks() -> None:
    TASK.check_card(caption_card())
    with pytest.raises(ValueError, match="confidence_kind"):
        TASK.check_card(caption_card("max_prob"))
    with pytest.raises(ValueError, match="end token"):
        TASK.check_card(caption_card(labels=VOCABULARY[3:]))


@pytest.mark.parametrize(("a", "b", "same"), [
    ("two objects: red circle", "Two objects : red  circle", True),
    ("two objects: red circle, blue", "two objects:red circle ,blue", True),
    ("two objects: red circle", "two objects: blue circle", False),
    ("red circle", "red circle.", False),  # a mark is a token of its own
])
def test_answer_equality_is_the_normalised_text(a: str, b: str, same: bool) -> None:
    assert TASK.same_answer(a, b) is same
    assert (normalize_caption(a) == normalize_caption(b)) is same


# -- postprocess is total: None per unusable row, never an exception ------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from auditstream.tasks.base import Answer  # noqa: E402


@st.composite
def graph_outputs(draw) -> dict[str, np.ndarray]:
    """Anything a broken graph might return: any rank, any dtype, batch sizes that differ, ids
    in and out of the vocabulary, whole and fractional float ids, probabilities in and out of [0, 1]."""
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
    other = draw(st.one_of(st.just(shape), hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)))
    values = st.one_of(st.integers(-2, len(VOCABULARY) + 1).map(float), st.sampled_from([2.5, -0.5]))
    ids = draw(hnp.arrays(np.float64, shape, elements=values))
    ids = ids.astype(draw(st.sampled_from([np.int64, np.float32, np.float64, np.bool_])))
    probs = draw(hnp.arrays(np.float64, other, elements=st.one_of(st.floats(0, 1),
                                                                  st.sampled_from([1.5, -0.1, 0.0, 1.0, math.nan]))))
    dtype = draw(st.sampled_from([np.float32, np.float64, np.int64]))
    probs = (np.nan_to_num(probs, nan=-1.0) if dtype is np.int64 else probs).astype(dtype)
    return {"tokens": ids, "token_probs": probs}


@settings(max_examples=400, deadline=None)
@given(out=graph_outputs(), kind=st.sampled_from(["joint_token_prob", "mean_token_prob", "min_token_prob"]))
def test_property_postprocess_gives_an_answer_or_none_per_row_and_never_raises(out, kind) -> None:
    """Before: float token ids raised TypeError, batch sizes that differ a broadcast ValueError,
    1-D or 3-D tokens TypeError -- the whole batch then went through the per-row retry."""
    answers = TASK.postprocess(caption_card(kind), out)
    tokens, probs = out["tokens"], out["token_probs"]
    assert isinstance(answers, list) and all(a is None or isinstance(a, Answer) for a in answers)
    if tokens.ndim:
        assert len(answers) == len(tokens)
    readable = (tokens.ndim == 2 and tokens.shape == probs.shape and tokens.dtype.kind in "iuf"
                and probs.dtype.kind in "iuf")
    for row, answer in enumerate(answers):
        ok = (readable and (tokens[row] == np.floor(tokens[row])).all() and (tokens[row] >= 0).all()
              and (tokens[row] < len(VOCABULARY)).all() and (probs[row] >= 0).all() and (probs[row] <= 1).all())
        assert (answer is not None) == bool(ok), (row, tokens, probs)
        if answer is not None:
            assert 0.0 <= answer.confidence <= 1.0


def test_the_reviewers_unusable_outputs_give_none_per_row() -> None:
    """A review's hostile outputs: each of these raised."""
    card = caption_card("mean_token_prob")
    assert TASK.postprocess(card, {"tokens": np.array([[5, 2], [5, 2]]), "token_probs": np.full((3, 2), 0.9)}) == [None] * 2
    assert TASK.postprocess(card, {"tokens": np.array([5, 2]), "token_probs": np.array([0.9, 0.9])}) == [None] * 2
    assert TASK.postprocess(card, {"tokens": np.array([[[5, 2]]]), "token_probs": np.array([[[0.9, 0.9]]])}) == [None]
    (a,) = TASK.postprocess(card, {"tokens": np.array([[5.0, 6.0, 2.0]], np.float32),
                                   "token_probs": np.full((1, 3), 0.9, np.float32)})
    assert a.output == "two objects" and a.confidence == pytest.approx(0.9)
