"""auditstream.tasks: outputs, confidences and details per task kind (known answers)."""

from __future__ import annotations

import numpy as np
import pytest
from tests.conftest import tiny_card

from auditstream.registry import ModelCard, TensorSpec, TriageSpec
from auditstream.tasks import Answer, lookup


def postprocess(card: ModelCard, outputs: dict[str, np.ndarray]) -> list[Answer | None]:
    return lookup(card.task).postprocess(card, outputs)


def check_card(card: ModelCard) -> None:
    lookup(card.task).check_card(card)


def card(task: str, outputs: list[str], labels: list[str]) -> ModelCard:
    return ModelCard(name="m", version="1", task=task, inputs=[TensorSpec("x", "float32", [None, 4])],
                     outputs=[TensorSpec(o, "float32", [None]) for o in outputs], triage=TriageSpec(0.9), labels=labels)


def test_classification_label_confidence_runner_ups() -> None:
    probs = np.array([[0.1, 0.6, 0.05, 0.2, 0.05]], np.float32)
    (a,) = postprocess(card("classification", ["probs"], list("abcde")), {"probs": probs})
    assert a.output == "b" and a.confidence == pytest.approx(0.6)
    assert [r["label"] for r in a.details["runner_ups"]] == ["d", "a", "c"]
    assert a.details["index"] == 1 and a.details["probs"] == pytest.approx(probs[0].tolist())


def test_sequence_zip_code_min_confidence_and_runner_ups() -> None:
    digits = [str(d) for d in range(10)]
    char_probs = np.full((1, 5, 10), 0.01, np.float32)
    for pos, (d, p) in enumerate(zip([1, 0, 0, 1, 7], [0.9, 0.95, 0.6, 0.99, 0.8])):
        char_probs[0, pos, d] = p
    char_probs[0, 2, 8] = 0.3  # the runner-up of the least sure position
    (a,) = postprocess(card("sequence", ["char_probs"], digits), {"char_probs": char_probs})
    assert a.output == "10017" and a.confidence == pytest.approx(0.6)
    assert a.details["char_confidences"] == pytest.approx([0.9, 0.95, 0.6, 0.99, 0.8])
    assert a.details["runner_ups"][0] == {"text": "10817", "position": 2, "relative_prob": pytest.approx(0.5)}


def test_policy_action_probs_and_value() -> None:
    out = {"action_probs": np.array([[0.2, 0.7, 0.1], [0.5, 0.25, 0.25]], np.float32),
           "value": np.array([1.5, -2.0], np.float32)}
    a, b = postprocess(card("policy", ["action_probs", "value"], []), out)
    assert (a.output, a.confidence, a.details["value"]) == (1, pytest.approx(0.7), 1.5)
    assert b.output == 0 and b.details["action_probs"] == pytest.approx([0.5, 0.25, 0.25])


def test_non_finite_rows_are_none() -> None:
    probs = np.array([[0.5, 0.5], [np.nan, 0.1]], np.float32)
    answers = postprocess(card("classification", ["probs"], []), {"probs": probs})
    assert answers[0] is not None and answers[0].output == 0 and answers[1] is None


@pytest.mark.parametrize("task,outputs,message", [
    ("caption", ["tokens"], "lacks graph outputs"),
    ("detection", ["boxes"], "lacks graph outputs"),
    ("classification", ["logits"], "lacks graph outputs"),
    ("policy", ["action_probs"], "lacks graph outputs"),
])
def test_check_card_refuses_what_it_cannot_interpret(task: str, outputs: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_card(card(task, outputs, []))
    check_card(tiny_card())
