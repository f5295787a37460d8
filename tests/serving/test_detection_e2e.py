"""A detector served for real (issue 10): requests through the embedded broker to ``serve``, per-box
routes in the predictions, the uncertain labels in the audit store by way of the monitor, an
auditor's corrected boxes as a verdict, and the verdict and the human decision back on Kafka.

The model is a hand-built ONNX graph with the detector's serving contract (``image`` [B, 64, 64]
-> ``boxes`` [B, 16, 4], ``labels`` int64 [B, 16], ``scores`` [B, 16]): fixed boxes, and each
row's score read from the image's first pixel row, so a test chooses every box's score."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tests.serving.served_kind import served_with_monitor

from auditstream.registry import ModelCard, TensorSpec, TriageSpec
from auditstream.settings import Settings
from auditstream.wire import Route

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
K, SIDE, LOW, HIGH = 16, 64, 0.3, 0.8
BOXES = np.array([[4 * k, 2, 4 * k + 3, 10] for k in range(K)], dtype=np.float32)


def detector_onnx() -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, SIDE, SIDE])
    outputs = [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [None, K, 4]),
               helper.make_tensor_value_info("labels", TensorProto.INT64, [None, K]),
               helper.make_tensor_value_info("scores", TensorProto.FLOAT, [None, K])]
    inits = [numpy_helper.from_array(BOXES[None], "box_rows"),
             numpy_helper.from_array((np.arange(K, dtype=np.int64) % 10)[None], "label_rows"),
             numpy_helper.from_array(np.array([0], np.int64), "zero"), numpy_helper.from_array(np.array([1], np.int64), "one"),
             numpy_helper.from_array(np.array([K], np.int64), "k"), numpy_helper.from_array(np.array([4], np.int64), "four"),
             numpy_helper.from_array(np.array([1], np.int64), "axis1")]
    nodes = [
        helper.make_node("Shape", ["image"], ["shape"]),
        helper.make_node("Slice", ["shape", "zero", "one"], ["batch"]),
        helper.make_node("Concat", ["batch", "k", "four"], ["box_shape"], axis=0),
        helper.make_node("Concat", ["batch", "k"], ["row_shape"], axis=0),
        helper.make_node("Expand", ["box_rows", "box_shape"], ["boxes"]),
        helper.make_node("Expand", ["label_rows", "row_shape"], ["labels"]),
        helper.make_node("Gather", ["image", "zero"], ["first_row_3d"], axis=1),  # [B, 1, 64]
        helper.make_node("Squeeze", ["first_row_3d", "axis1"], ["first_row"]),
        helper.make_node("Slice", ["first_row", "zero", "k", "axis1"], ["scores"]),
    ]
    graph = helper.make_graph(nodes, "score-from-pixels", [image], outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="auditstream-tests")
    model.ir_version = 8
    return model.SerializeToString()


def detector_card(name: str = "parcel") -> ModelCard:
    return ModelCard(
        name=name, version="0", task="detection",
        inputs=[TensorSpec("image", "float32", [None, SIDE, SIDE])],
        outputs=[TensorSpec("boxes", "float32", [None, K, 4]), TensorSpec("labels", "int64", [None, K]),
                 TensorSpec("scores", "float32", [None, K])],
        triage=TriageSpec(threshold=HIGH, confidence_kind="min_box_score"), labels=[str(d) for d in range(10)],
        preprocessing={"note": "scores are the first pixel row"}, metrics={},
        extra={"threshold_low": LOW, "match_iou": 0.5},
    )


def label_with(scores: list[float]) -> np.ndarray:
    image = np.full((SIDE, SIDE), 0.9, np.float32)
    image[0, :K] = 0.0
    image[0, :len(scores)] = scores
    return image


def test_a_detector_label_goes_from_request_to_verdict(broker: Settings, tmp_path: Path) -> None:
    sure, mixed, empty = label_with([0.95, 0.9]), label_with([0.97, 0.5, 0.1]), label_with([0.2])
    with served_with_monitor(broker, tmp_path, detector_card(), detector_onnx()) as served:
        predictions = served.answer({"sure": sure, "mixed": mixed, "empty": empty})
        # every box on its own evidence; the label is auto-accepted only if all of them are
        assert predictions["sure"].route is Route.AUTO and predictions["sure"].details["part_routes"] == ["AUTO"] * 2
        mixed_p = predictions["mixed"]
        assert mixed_p.route is Route.HUMAN and [d["score"] for d in mixed_p.output] == pytest.approx([0.97, 0.5])
        assert mixed_p.details["part_routes"] == ["AUTO", "HUMAN"] and mixed_p.details["dropped"] == K - 2
        assert mixed_p.output[0]["box"] == [0.0, 2.0, 3.0, 10.0] and mixed_p.output[1]["label"] == 1
        assert predictions["empty"].output == [] and predictions["empty"].route is Route.AUTO  # claims nothing

        corrected = [mixed_p.output[0], {"box": [4.0, 2.0, 7.5, 10.0], "label": 7, "score": 1.0}]  # relabel, resize
        verdicts, decisions = served.correct_deferred("mixed", corrected, decisions=3)
    assert [(v.request_id, v.kind.value) for v in verdicts] == [("mixed", "correct")]
    human = [d for d in decisions if d.request_id == "mixed"]
    assert len(human) == 1 and human[0].source == "human" and human[0].output == corrected
    assert {d.request_id for d in decisions if d.source == "model"} == {"sure", "empty"}
