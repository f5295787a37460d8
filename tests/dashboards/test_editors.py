"""Answer parsing and the accept/correct rule (pure)."""

from __future__ import annotations

import pytest

from auditstream.wire import VerdictKind
from dashboards import editors
from dashboards.tasks.base import choice_index
from dashboards.tasks.detection import boxes_as_rows


@pytest.mark.parametrize(
    ("raw", "ok"),
    [("02139", "02139"), (" 0213 9", "02139"), ("2139", None), ("021390", None), ("0213a", None), ("", None), (None, None)],
)
def test_zip_is_exactly_five_digits(raw, ok):
    if ok is None:
        with pytest.raises(ValueError, match="exactly 5 digits"):
            editors.parse_answer("sequence", raw)
    else:
        assert editors.parse_answer("sequence", raw) == ok


def test_pickers_return_the_models_form():
    choices = ["cat", "dog", "eel"]
    assert editors.parse_answer("classification", 1, choices) == 1
    assert editors.parse_answer("classification", 1, choices, as_label=True) == "dog"
    assert editors.parse_answer("policy", "eel", choices) == 2
    for bad in (None, 3, "cow"):
        with pytest.raises(ValueError):
            editors.parse_answer("classification", bad, choices)
    assert choice_index("dog", choices) == 1 and choice_index(2, choices) == 2
    assert choice_index("cow", choices) is None


def test_caption_and_boxes():
    assert editors.parse_answer("caption", "  a   dog \n on grass ") == "a dog on grass"
    with pytest.raises(ValueError):
        editors.parse_answer("caption", "   ")
    rows = [{"label": "car", "score": 0.9, "x0": 1, "y0": 2, "x1": 5, "y1": 6},
            {"label": None, "score": None, "x0": None, "y0": None, "x1": None, "y1": None}]  # fmt: skip
    assert editors.parse_answer("detection", rows, ["person", "car"]) == [{"box": [1.0, 2.0, 5.0, 6.0], "label": 1, "score": 0.9}]
    with pytest.raises(ValueError, match="x0 < x1"):
        editors.parse_answer("detection", [{"label": "car", "x0": 5, "y0": 2, "x1": 1, "y1": 6}])
    output = [{"box": [1, 2, 5, 6], "label": 1, "score": 0.9}]
    assert boxes_as_rows(output, ["person", "car"])[0]["label"] == "car"


def test_unchanged_answer_accepts_changed_answer_corrects():
    assert editors.verdict_for("sequence", "02139", "02139") == (VerdictKind.ACCEPT, None)
    assert editors.verdict_for("sequence", "02139", "02739") == (VerdictKind.CORRECT, "02739")
    boxes = [{"box": [1, 2, 5, 6], "label": 1, "score": 0.9}]
    same = [{"box": [1.0, 2.0, 5.0, 6.0], "label": 1, "score": 1.0}]  # the score is the model's, not a label
    assert editors.verdict_for("detection", boxes, same)[0] is VerdictKind.ACCEPT
