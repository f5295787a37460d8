"""A captioner served for real (issue 11): scenes through the embedded broker to ``serve``, the
caption with its confidence and word confidences in the predictions, the doubtful caption in the
audit store by way of the monitor, an auditor's corrected caption as a verdict, and the verdict
and the human decision back on Kafka.

The model is a hand-built ONNX graph with the captioner's serving contract (``image`` uint8
[B, 8, 8, 3] -> ``tokens`` int64 [B, 8], ``token_probs`` float32 [B, 8]): the token ids are the
image's first pixel row (red channel) and their probabilities its second row / 255, so a test
chooses every word and its probability."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tests.serving.served_kind import served_with_monitor

from auditstream.registry import ModelCard, TensorSpec, TriageSpec
from auditstream.settings import Settings
from auditstream.wire import Route

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
SIDE, STEPS, THRESHOLD = 8, 8, 0.8
VOCABULARY = ["<pad>", "<bos>", "<eos>", ":", ",", "two", "objects", "red", "circle", "blue", "square"]
EOS = VOCABULARY.index("<eos>")


def captioner_onnx() -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    image = helper.make_tensor_value_info("image", TensorProto.UINT8, [None, SIDE, SIDE, 3])
    outputs = [helper.make_tensor_value_info("tokens", TensorProto.INT64, [None, STEPS]),
               helper.make_tensor_value_info("token_probs", TensorProto.FLOAT, [None, STEPS])]
    inits = [numpy_helper.from_array(np.array(0, np.int64), "zero"), numpy_helper.from_array(np.array(1, np.int64), "one"),
             numpy_helper.from_array(np.array(255.0, np.float32), "scale")]
    nodes = [
        helper.make_node("Gather", ["image", "zero"], ["row0"], axis=1),  # [B, 8, 3]
        helper.make_node("Gather", ["row0", "zero"], ["ids_u8"], axis=2),  # [B, 8]
        helper.make_node("Cast", ["ids_u8"], ["tokens"], to=TensorProto.INT64),
        helper.make_node("Gather", ["image", "one"], ["row1"], axis=1),
        helper.make_node("Gather", ["row1", "zero"], ["p_u8"], axis=2),
        helper.make_node("Cast", ["p_u8"], ["p_float"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["p_float", "scale"], ["token_probs"]),
    ]
    graph = helper.make_graph(nodes, "caption-from-pixels", [image], outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="auditstream-tests")
    model.ir_version = 8
    return model.SerializeToString()


def fixed_caption_onnx(side: int, words: list[str], prob: float) -> bytes:
    """A stand-in with the captioner's contract at ``side`` x ``side`` that answers every scene with
    the same caption, each word at ``prob`` (for the demo test)."""
    from onnx import TensorProto, helper, numpy_helper

    ids = np.full((1, STEPS), VOCABULARY.index("<pad>"), np.int64)
    ids[0, :len(words) + 1] = [VOCABULARY.index(w) for w in words] + [EOS]
    image = helper.make_tensor_value_info("image", TensorProto.UINT8, [None, side, side, 3])
    outputs = [helper.make_tensor_value_info("tokens", TensorProto.INT64, [None, STEPS]),
               helper.make_tensor_value_info("token_probs", TensorProto.FLOAT, [None, STEPS])]
    inits = [numpy_helper.from_array(ids, "ids"), numpy_helper.from_array(np.full((1, STEPS), prob, np.float32), "p"),
             numpy_helper.from_array(np.array([0], np.int64), "zero"), numpy_helper.from_array(np.array([1], np.int64), "one"),
             numpy_helper.from_array(np.array([STEPS], np.int64), "steps")]
    nodes = [helper.make_node("Shape", ["image"], ["shape"]),
             helper.make_node("Slice", ["shape", "zero", "one"], ["batch"]),
             helper.make_node("Concat", ["batch", "steps"], ["row_shape"], axis=0),
             helper.make_node("Expand", ["ids", "row_shape"], ["tokens"]),
             helper.make_node("Expand", ["p", "row_shape"], ["token_probs"])]
    graph = helper.make_graph(nodes, "fixed-caption", [image], outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="auditstream-tests")
    model.ir_version = 8
    return model.SerializeToString()


def captioner_card(name: str = "scenes", side: int = SIDE) -> ModelCard:
    return ModelCard(
        name=name, version="0", task="caption",
        inputs=[TensorSpec("image", "uint8", [None, side, side, 3])],
        outputs=[TensorSpec("tokens", "int64", [None, STEPS]), TensorSpec("token_probs", "float32", [None, STEPS])],
        triage=TriageSpec(threshold=THRESHOLD, confidence_kind="joint_token_prob"), labels=VOCABULARY,
        preprocessing={"note": "tokens are the first pixel row, probabilities the second"}, metrics={},
        extra={"end_token": "<eos>", "special_tokens": ["<pad>", "<bos>", "<eos>"]},
    )


def scene_with(words: list[str], probs: list[float]) -> np.ndarray:
    """An 'image' whose first rows spell the caption (and <eos>) with these probabilities (x 255)."""
    image = np.zeros((SIDE, SIDE, 3), np.uint8)
    ids = [VOCABULARY.index(w) for w in words] + [EOS]
    image[0, :len(ids), 0] = ids
    image[1, :, 0] = 255  # <pad> after <eos> with probability 1
    image[1, :len(probs), 0] = np.round(np.array(probs) * 255).astype(np.uint8)
    return image


def test_a_caption_goes_from_request_to_verdict(broker: Settings, tmp_path: Path) -> None:
    words = ["two", "objects", ":", "red", "circle", ",", "blue", "square"][:STEPS - 1]
    sure = scene_with(words, [1.0] * 7 + [0.99])  # joint 0.99: auto-accepted
    doubt = scene_with(words, [1.0, 1.0, 1.0, 1.0, 0.6, 1.0, 1.0, 1.0])  # "circle" at 0.6: deferred
    with served_with_monitor(broker, tmp_path, captioner_card(), captioner_onnx()) as served:
        predictions = served.answer({"sure": sure, "doubt": doubt})
        caption = "two objects: red circle, blue"
        assert predictions["sure"].route is Route.AUTO and predictions["sure"].output == caption
        doubtful = predictions["doubt"]
        assert doubtful.route is Route.HUMAN and doubtful.output == caption
        assert doubtful.confidence == pytest.approx(0.6, abs=0.005)
        assert doubtful.details["tokens"] == ["two", "objects", ":", "red", "circle", ",", "blue"]
        assert doubtful.details["token_confidences"][4] == pytest.approx(0.6, abs=0.005)
        assert "part_routes" not in doubtful.details  # the caption is triaged whole

        corrected = "two objects: red square, blue"
        verdicts, decisions = served.correct_deferred("doubt", corrected, decisions=2)
    assert [(v.request_id, v.kind.value) for v in verdicts] == [("doubt", "correct")]
    human = [d for d in decisions if d.request_id == "doubt"]
    assert len(human) == 1 and human[0].source == "human" and human[0].output == corrected
    assert {d.request_id for d in decisions if d.source == "model"} == {"sure"}
