"""Answer equality is total over any JSON value, for every task kind; a malformed detection
correction is refused when it is written.

Before, ``Detection.answer_key`` did ``round(float(v), 1)`` over ``d.get("box", [])`` and wrote
strict JSON: a correction whose box was None, a string, NaN or an infinity raised TypeError or
ValueError in ``same_answer`` and ``audit_error``; ``check_verdict_input`` recorded such a
correction, and the monitor's verdict tracking (no handler) stopped on it
(found by a review). Now ``answer_key``, ``same_answer``, ``count_parts``,
``false_parts``, ``audit_error`` and ``audit_false_parts`` never raise, and the store refuses a
detection correction that is not a list of well-formed boxes with a message for the auditor.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from auditstream.registry import ModelCard, TensorSpec, TriageSpec
from auditstream.tasks import lookup
from auditstream.tasks.base import TASKS
from auditstream.tasks import detection
from auditstream.wire import Route, TaskKind, Verdict, VerdictKind
from store.records import audit_error, audit_false_parts, check_verdict_input

NUMBERS = st.one_of(st.integers(), st.integers(min_value=10**308, max_value=10**400),
                    st.floats(allow_nan=True, allow_infinity=True))
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=5))
JSON = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                     st.dictionaries(st.text(max_size=5), inner, max_size=4)),
                    max_leaves=12)
# Shaped like a detector's answer, with any value in any field: the paths past the type checks.
COORD = st.one_of(NUMBERS, st.integers(0, 20), SCALARS)
BOX_FIELD = st.one_of(st.lists(st.integers(0, 20), min_size=4, max_size=4), st.lists(COORD, min_size=3, max_size=5),
                      JSON)
DETECTION = st.dictionaries(st.sampled_from(["box", "label", "score"]),
                            st.one_of(BOX_FIELD, SCALARS, st.integers(0, 2)), min_size=0, max_size=3)
ANSWERS = st.one_of(JSON, st.lists(st.one_of(DETECTION, DETECTION, JSON), max_size=4),
                    st.lists(st.builds(lambda x, y, w, h, lab: {"box": [x, y, x + w, y + h], "label": lab, "score": 0.9},
                                       st.integers(0, 4), st.integers(0, 4), st.integers(0, 4), st.integers(0, 4),
                                       st.one_of(st.integers(0, 1), SCALARS)), max_size=4))
KINDS = [kind for kind, _ in TASKS.items()]
AUDITED = [VerdictKind.ACCEPT, VerdictKind.CORRECT, VerdictKind.REJECT]


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.value)
@settings(max_examples=300, deadline=None)
@given(a=ANSWERS, b=ANSWERS)
def test_property_answer_equality_and_audit_counts_never_raise_on_any_json(kind: TaskKind, a, b) -> None:
    rule = lookup(kind)
    key_a, key_b = rule.answer_key(a), rule.answer_key(b)
    assert isinstance(key_a, str) and isinstance(key_b, str)
    same = rule.same_answer(a, b)
    assert isinstance(same, bool)
    assert rule.same_answer(a, a) and rule.same_answer(b, b)  # reflexive, NaN inside or not
    if key_a == key_b:
        assert same  # equal keys are the same answer
    for verdict in AUDITED:
        corrected = b if verdict is VerdictKind.CORRECT else None
        assert isinstance(audit_error(verdict, rule, a, corrected), bool)
        if rule.accepts_parts:
            parts, false = rule.count_parts(a), audit_false_parts(verdict, rule, a, corrected)
            assert isinstance(false, int) and 0 <= false <= parts


@settings(max_examples=400, deadline=None)
@given(output=ANSWERS)
def test_property_a_detection_correction_is_recorded_only_when_every_reader_can_compare_it(output) -> None:
    """What check_verdict_input takes for a detection item is a list of readable boxes drawn
    forwards, each with a class index or name; anything else is refused with a ValueError."""
    if output is None:
        return  # no correction: "a 'correct' verdict needs the corrected output"
    try:
        check_verdict_input(VerdictKind.CORRECT, output, TaskKind.DETECTION)
    except ValueError as e:
        assert "refused, nothing recorded" in str(e)
        return
    parsed = detection.readable_boxes(output)
    assert parsed is not None
    _, xy = parsed
    assert np.isfinite(xy).all() and (xy[:, 0] <= xy[:, 2]).all() and (xy[:, 1] <= xy[:, 3]).all()


@pytest.mark.parametrize("bad", [
    [{"box": None, "label": 1}], [{"box": ["a", 0, 10, 10], "label": 1}], [{"box": [math.nan, 0, 10, 10], "label": 1}],
    [{"box": [math.inf, 0, 10, 10], "label": 1}], [{"box": [0, 0, 10], "label": 1}], [{"box": [10, 0, 0, 10], "label": 1}],
    [{"box": [0, 0, 10, 10], "label": True}], [{"box": [0, 0, 10, 10], "label": None}],
    [{"box": [0, 0, 10, 10], "label": 1, "score": math.nan}], [{"box": [0, 0, 10, 10], "label": 1, "score": 7.5}],
    [{"box": [True, 0, 10, 10], "label": 1}], [{"box": [0, 0, 10**400, 10], "label": 1}], [3], "boxes",
])
def test_a_malformed_detection_correction_is_refused_at_write_time(bad) -> None:
    with pytest.raises(ValueError, match="not a detection answer: .*refused, nothing recorded"):
        check_verdict_input(VerdictKind.CORRECT, bad, TaskKind.DETECTION)


def test_without_the_task_a_correction_shaped_like_boxes_is_checked_as_one() -> None:
    """store.store.record_verdict checks before it reads the item: a correction with a "box" is
    a detector's, whatever the caller passes (the reviewer's repro went through this call)."""
    with pytest.raises(ValueError, match="its box must be four finite numbers"):
        check_verdict_input(VerdictKind.CORRECT, [{"box": None, "label": 1}])
    check_verdict_input(VerdictKind.CORRECT, [{"box": [0, 0, 10, 10], "label": 1, "score": 1.0}])
    check_verdict_input(VerdictKind.CORRECT, [{"box": [0, 0, 10, 10], "label": "7"}], TaskKind.DETECTION)
    check_verdict_input(VerdictKind.CORRECT, [], TaskKind.DETECTION)  # no object in the image
    check_verdict_input(VerdictKind.CORRECT, "two objects", TaskKind.CAPTION)


def test_the_reviewers_malformed_corrections_compare_without_raising() -> None:
    """A review's malformed answers: each raised TypeError or ValueError."""
    det = lookup("detection")
    ok = [{"box": [0, 0, 10, 10], "label": 1, "score": 0.9}]
    for bad in ([{"box": ["a", 0, 10, 10], "label": 1}], [{"box": [math.nan, 0, 10, 10], "label": 1}],
                [{"box": None, "label": 1}], [{"box": [math.inf, 0, 10, 10], "label": 1}]):
        assert not det.same_answer(ok, bad) and det.same_answer(bad, bad)
        assert audit_error(VerdictKind.CORRECT, det, ok, bad) is True
        assert audit_false_parts(VerdictKind.CORRECT, det, ok, bad) == 1  # said wrong, no box confirmed


def test_the_monitor_keeps_tracking_after_a_malformed_correction() -> None:
    """monitor/tracker.py's observe_verdict goes through audit_error / audit_false_parts, with no
    handler: before, the verdict raised there and stopped the monitor."""
    from monitor.tracker import QCConfig, QCTracker

    card = ModelCard(name="det", version="1", task="detection", inputs=[TensorSpec("x", "float32", [None, 4])],
                     outputs=[TensorSpec("boxes", "float32", [None, 2, 4]), TensorSpec("labels", "int64", [None, 2]),
                              TensorSpec("scores", "float32", [None, 2])],
                     triage=TriageSpec(0.9, target_risk=0.05), labels=["0", "1"],
                     extra={"threshold_low": 0.3, "max_boxes": 2})
    tracker = QCTracker(lambda m, v: card, QCConfig(min_inclusion_prob=0.01))
    model_output = [{"box": [0, 0, 10, 10], "label": 1, "score": 0.95}]
    for i, corrected in enumerate(([{"box": None, "label": 1}], [{"box": [math.nan, 0, 1, 1], "label": 1}], "x")):
        tracker.observe_verdict(Verdict(f"v{i}", f"r{i}", "det", "1", "qc-bot", VerdictKind.CORRECT, 1.0 + i,
                                        model_output, corrected, Route.AUTO_QC, 0.5))


def test_every_kind_has_the_whole_task_contract() -> None:
    """A module-level function once landed inside the Task class body and took the methods after
    it (answer_text, max_parts, count_parts, false_parts) out of the contract: the monitor then
    raised AttributeError on a sequence card. Every registered kind has every method of Task."""
    from auditstream.tasks.base import Task

    contract = [name for name, value in vars(Task).items() if callable(value) and not name.startswith("_")]
    assert {"answer_key", "same_answer", "answer_text", "max_parts", "count_parts", "false_parts", "check_answer",
            "for_card", "for_details"} <= set(contract)
    for kind, rule in TASKS.items():
        missing = [name for name in contract if not callable(getattr(rule, name, None))]
        assert not missing, f"{kind.value} lacks {missing}"
