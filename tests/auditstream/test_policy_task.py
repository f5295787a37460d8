"""auditstream.tasks.policy: a row of ``action_probs`` that is not a probability distribution
(a negative entry, or a sum off 1 by more than :data:`SUM_TOLERANCE`) is that record's model
failure -- ``postprocess`` answers ``None`` for it, as every kind does for a non-finite row -- and
is never acted on: ``[0, 0]`` and ``[1e-30, 1e-30]`` had entropy confidence 1.0 (auto-accepted)
and logged propensities 0 or 1e-30, which break off-policy evaluation's importance weights.
Every float32 softmax row is a distribution by this test, whatever its logits and up to
thousands of actions, also as ONNX Runtime computes it."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import TensorProto, helper

from auditstream.registry import ModelCard, TensorSpec, TriageSpec
from auditstream.tasks.policy import CONFIDENCE_KINDS, SUM_TOLERANCE, TASK, select_action


def card(confidence_kind: str = "max_prob") -> ModelCard:
    return ModelCard(name="p", version="1", task="policy", inputs=[TensorSpec("obs", "float32", [None, 4])],
                     outputs=[TensorSpec("action_probs", "float32", [None, 2]), TensorSpec("value", "float32", [None])],
                     triage=TriageSpec(0.9, confidence_kind=confidence_kind))


def postprocess(rows, kind: str = "max_prob"):
    probs = np.asarray(rows, np.float32)
    return TASK.postprocess(card(kind), {"action_probs": probs, "value": np.zeros(len(probs), np.float32)})


NOT_A_DISTRIBUTION = {
    "all zero": [0.0, 0.0],
    "all tiny": [1e-30, 1e-30],
    "sums to 0.7": [0.5, 0.2],
    "sums to 2": [1.0, 1.0],
    "negative entry, sums to 1": [1.25, -0.25],
    "unnormalised scores": [3.0, 7.0],
}


@pytest.mark.parametrize("kind", CONFIDENCE_KINDS)
@pytest.mark.parametrize("case", sorted(NOT_A_DISTRIBUTION))
def test_a_row_that_is_not_a_distribution_is_this_records_model_failure(case: str, kind: str) -> None:
    """The reproducer (model_outputs.py part B): [0, 0] got entropy confidence 1.0."""
    good, bad, good_too = postprocess([[0.2, 0.8], NOT_A_DISTRIBUTION[case], [0.6, 0.4]], kind)
    assert bad is None
    assert good is not None and good.output == 1 and good_too is not None and good_too.output == 0


@pytest.mark.parametrize("mode", ["sample", "greedy"])
@pytest.mark.parametrize("case", sorted(NOT_A_DISTRIBUTION))
def test_select_action_refuses_to_act_on_what_is_not_a_distribution(case: str, mode: str) -> None:
    with pytest.raises(ValueError, match="not a probability distribution"):
        select_action(NOT_A_DISTRIBUTION[case], 0.3, mode)


def test_rows_within_the_tolerance_are_answered() -> None:
    off = SUM_TOLERANCE / 2
    a, b = postprocess([[0.3, 0.7 + off], [0.3, 0.7 - off]])
    assert a is not None and b is not None
    (c,) = postprocess([[0.3, 0.7 + 2 * SUM_TOLERANCE]])
    assert c is None


def test_a_zero_probability_action_is_never_drawn_even_at_the_top_of_the_cdf() -> None:
    """A uniform at the very top of [0, 1) (past the cdf's last value by rounding) used to clamp
    to the last action, whatever its probability: a propensity of 0 on the acting action."""
    probs = [0.62768, 0.078073, 0.294248, 0.0]  # a rounded row whose normalised cdf ends at 1 - 2**-53
    action, propensities = select_action(probs, float(np.nextafter(1.0, 0.0)), "sample")
    assert action == 2 and propensities[action] > 0


def softmax32(logits: np.ndarray) -> np.ndarray:
    """Softmax as a float32 graph computes it (shifted by the max, float32 throughout)."""
    z = np.exp(logits - logits.max(axis=-1, keepdims=True), dtype=np.float32)
    return (z / z.sum(axis=-1, keepdims=True, dtype=np.float32)).astype(np.float32)


@settings(max_examples=300, deadline=None)
@given(logits=hnp.arrays(np.float32, st.tuples(st.integers(1, 4), st.integers(2, 4096)),
                         elements=st.floats(-1e4, 1e4, width=32)))
def test_property_every_float32_softmax_row_is_answered(logits: np.ndarray) -> None:
    """The tolerance never refuses a softmax: 1e-3 is far above float32's (A + 3) * 2**-24."""
    probs = softmax32(logits)
    answers = TASK.postprocess(card(), {"action_probs": probs, "value": np.zeros(len(probs), np.float32)})
    assert all(a is not None for a in answers)
    for a in answers:
        action, propensities = select_action(a.details["action_probs"], 0.999999, "sample")  # the rounded row
        assert propensities[action] > 0


def test_onnx_runtime_softmax_rows_are_answered() -> None:
    """The same through ONNX Runtime's own Softmax kernel, wide logits, 2 to 10,000 actions."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None])
    model = helper.make_model(helper.make_graph([helper.make_node("Softmax", ["x"], ["y"], axis=-1)], "s", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for actions in (2, 3, 18, 1000, 10_000):
        for scale in (0.1, 10.0, 1000.0):
            logits = (rng.standard_normal((64, actions)) * scale).astype(np.float32)
            (probs,) = session.run(None, {"x": logits})
            answers = TASK.postprocess(card(), {"action_probs": probs, "value": np.zeros(64, np.float32)})
            assert all(a is not None for a in answers), (actions, scale)


ROW = hnp.arrays(np.float32, st.integers(1, 6), elements=st.one_of(
    st.floats(-2.0, 2.0, width=32), st.sampled_from([0.0, 1e-30, 1e-7, 0.5, 1.0, np.nan, np.inf]),
))


@settings(max_examples=500, deadline=None)
@given(row=ROW, kind=st.sampled_from(CONFIDENCE_KINDS), uniform=st.floats(0.0, 1.0, exclude_max=True))
def test_property_an_answer_is_a_distribution_and_its_action_has_positive_propensity(row, kind, uniform) -> None:
    """Any row: ``None`` exactly when it is not a distribution; otherwise a confidence in [0, 1]
    (to the tolerance) and, drawn or greedy, an acting action whose logged propensity is > 0."""
    (answer,) = postprocess([row], kind)
    p = row.astype(np.float64)
    valid = bool(np.isfinite(p).all() and (p >= 0).all() and abs(p.sum() - 1.0) <= SUM_TOLERANCE)
    assert (answer is not None) == valid
    if answer is None:
        return
    assert -1e-9 <= answer.confidence <= 1.0 + SUM_TOLERANCE
    for mode in ("sample", "greedy"):
        action, propensities = select_action(answer.details["action_probs"], uniform, mode)
        assert 0 <= action < len(row) and propensities[action] > 0


@pytest.mark.parametrize("safe_action,ok", [(None, True), (0, True), (1, True), (2, False), (7, False)])
def test_the_card_check_refuses_a_safe_action_the_policy_does_not_have(safe_action, ok) -> None:
    """The registry checks the type (null or an index >= 0); the kind knows how many actions there are."""
    c = ModelCard(**{**card().__dict__, "triage": TriageSpec(0.9, safe_action=safe_action)})
    if ok:
        TASK.check_card(c)
    else:
        with pytest.raises(ValueError, match=f"triage.safe_action {safe_action} is not one of its 2 actions"):
            TASK.check_card(c)
