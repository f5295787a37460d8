"""Fuzz: whatever JSON a shipped card's fields hold -- the ones each task kind reads at start-up
(``extra.match_iou``, ``extra.special_tokens``, ``preprocessing.frame_stack``, ...) included --
reading the card and the kind's start-up check either accept it or raise ``ValueError`` (which
``serve`` turns into ModelRefused, one line, exit code 2); never TypeError, KeyError, ... ."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from auditstream import tasks
from auditstream.model_card import ModelCard

SHIPPED = {p.parent.name: json.loads(p.read_text()) for p in
           sorted((Path(__file__).resolve().parents[2] / "stack" / "demo_models").glob("*/card.json"))}

# The fields a kind or the serving path reads beyond the card's typed ones.
READ_AT_START = ["extra.match_iou", "extra.max_boxes", "extra.threshold_low", "extra.end_token",
                 "extra.special_tokens", "extra.action_selection", "preprocessing.frame_stack", "labels",
                 "triage.confidence_kind", "triage.safe_action", "triage.threshold", "inputs.0.shape",
                 "outputs.0.shape", "outputs.0.name", "extra.delta_spending", "version", "task"]

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
                    st.sampled_from(["<eos>", "<pad>", "greedy", "sample", "joint_token_prob", "1"]))
JSON = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                    max_leaves=10)


def set_path(obj: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    *parents, last = path.split(".")
    target: Any = obj
    for key in parents:
        target = target[int(key)] if isinstance(target, list) else target.setdefault(key, {})
    if isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    return obj


def start_up(obj: dict[str, Any]) -> None:
    """What ``serve`` does with a card before any record: read it, let its kind check it."""
    card = ModelCard.from_dict(obj)
    tasks.lookup(card.task).check_card(card)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_every_shipped_card_passes_its_kinds_start_up_check(name: str) -> None:
    start_up(SHIPPED[name])


@settings(max_examples=400, deadline=None)
@given(name=st.sampled_from(sorted(SHIPPED)), path=st.sampled_from(READ_AT_START), value=JSON)
def test_property_any_json_in_a_field_read_at_start_up_is_accepted_or_a_value_error(name: str, path: str,
                                                                                   value: Any) -> None:
    try:
        start_up(set_path(SHIPPED[name], path, value))
    except ValueError:
        pass


@pytest.mark.parametrize("path, value", [
    ("extra.match_iou", [0.5]), ("extra.match_iou", None), ("extra.match_iou", "0.5"),
    ("extra.max_boxes", "16"), ("extra.max_boxes", None), ("extra.max_boxes", -1), ("extra.max_boxes", 1e300),
])
def test_detection_extras_of_the_wrong_type_are_refused(path: str, value: Any) -> None:
    """float([0.5]) and int(None) raised TypeError at start-up (match_iou) or at the first
    audit (max_boxes); "16" read as 16 by int() and "0.5" by float() passed."""
    with pytest.raises(ValueError, match=path.split(".")[1]):
        start_up(set_path(SHIPPED["detector"], path, value))


@pytest.mark.parametrize("path, value", [("extra.special_tokens", 3), ("extra.special_tokens", "<pad>"),
                                         ("extra.special_tokens", [None]), ("extra.end_token", 0)])
def test_caption_extras_of_the_wrong_type_are_refused(path: str, value: Any) -> None:
    """special_tokens = 3 passed start-up and raised TypeError in every batch's postprocess."""
    with pytest.raises(ValueError, match=path.split(".")[1]):
        start_up(set_path(SHIPPED["captioner"], path, value))


def test_a_sequence_card_with_fewer_labels_than_classes_is_refused_at_start_up() -> None:
    """An alphabet of 9 characters on a 10-class zip reader raised IndexError on every record
    that read a 9 (each a dead letter, then a failure streak); now refused before serving."""
    with pytest.raises(ValueError, match="alphabet\\) have 9 characters but char_probs has 10 classes"):
        start_up(set_path(SHIPPED["zip-reader"], "labels", [str(i) for i in range(9)]))


def test_a_sequence_class_past_the_alphabet_of_a_dynamic_axis_is_its_index() -> None:
    import numpy as np

    card = ModelCard.from_dict(set_path(set_path(SHIPPED["zip-reader"], "outputs.0.shape", [None, 5, None]),
                                        "labels", ["a", "b"]))
    tasks.lookup(card.task).check_card(card)
    probs = np.full((1, 5, 4), 0.1, np.float32)
    probs[0, :, 3] = 0.7
    (answer,) = tasks.lookup(card.task).postprocess(card, {"char_probs": probs})
    assert answer.output == "33333"
