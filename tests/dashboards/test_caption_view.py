"""The caption kind in the workbench: which words are marked doubtful, the caption editor's
parsing (one normalisation rule, the model's vocabulary), the picture, and the whole flow through
AppTest against a temp SQLite store (correct, refuse an unknown word, accept a re-spaced caption,
QC samples never blind).

The item is what serving sends for the captioner (auditstream/tasks/caption.py): a 64x64 RGB
scene, the caption, its joint probability, and details with the tokens, their probabilities and
the threshold that routed it.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from tests.dashboards.conftest import elements, log_in, prediction, start_app, texts

from auditstream.wire import AuditItem, Route, VerdictKind
from dashboards import editors, render, workbench
from dashboards import tasks as views
from dashboards.tasks.caption import doubtful_words, marked_caption
from training.captioner.data import VOCABULARY, Scene, render as render_scene

THRESHOLD = 0.93
SCENE = Scene(("red", "blue"), ("circle", "square"), np.array([[10.0, 10.0], [50.0, 50.0]]))
TRUE_CAPTION = SCENE.caption()  # two objects: red circle top left near blue far blue, blue square ...
MODEL_CAPTION = TRUE_CAPTION.replace("blue square", "blue circle")


def caption_item(request_id: str = "cap-scene", route: Route = Route.HUMAN, weak: float = 0.55) -> AuditItem:
    tokens = MODEL_CAPTION.replace(":", " :").replace(",", " ,").split()
    probs = [0.999] * len(tokens)
    probs[tokens.index("circle", 5)] = weak  # the blue object's shape: the model doubts it
    confidence = float(np.prod(probs))
    details = {"tokens": tokens, "token_confidences": probs, "end_confidence": 0.999, "truncated": False,
               "confidence_kind": "joint_token_prob", "threshold": THRESHOLD}
    return AuditItem(prediction(request_id, "captioner", "caption", MODEL_CAPTION, confidence, details, route=route),
                     render_scene(SCENE))


def publish_captioner_card(models_dir: Path) -> None:
    """The captioner's card as training writes it (the vocabulary as labels)."""
    from auditstream.registry import ModelCard, ModelRegistry, TensorSpec, TriageSpec

    card = ModelCard(name="captioner", version="1", task="caption",
                     inputs=[TensorSpec("image", "uint8", [None, 64, 64, 3])],
                     outputs=[TensorSpec("tokens", "int64", [None, 57]), TensorSpec("token_probs", "float32", [None, 57])],
                     triage=TriageSpec(threshold=THRESHOLD, confidence_kind="joint_token_prob"), labels=list(VOCABULARY),
                     extra={"end_token": "<eos>", "special_tokens": ["<pad>", "<bos>", "<eos>"]})  # fmt: skip
    ModelRegistry(models_dir).publish(card, b"not an onnx file: the dashboard reads cards only")


# --------------------------------------------------------------------------------------------
# doubtful words and parsing (pure)


def test_words_below_the_threshold_are_doubtful():
    item = caption_item()
    tokens = item.prediction.details["tokens"]
    assert [tokens[i] for i in doubtful_words(item.prediction)] == ["circle"]
    assert ":red-background[**circle** 55%]" in marked_caption(item.prediction)
    # A deferred caption made of sure words: its least sure word is marked all the same.
    sure_words = caption_item(weak=0.95)
    assert [tokens[i] for i in doubtful_words(sure_words.prediction)] == ["circle"]
    # A QC sample of an auto-accepted caption with every word sure: nothing to mark.
    assert doubtful_words(caption_item(route=Route.AUTO_QC, weak=0.95).prediction) == []


def test_the_editor_normalises_and_keeps_to_the_vocabulary():
    view = views.lookup("caption")
    assert view.parse_answer("  Two Objects :red circle ,  blue ", VOCABULARY) == "two objects: red circle, blue"
    with pytest.raises(ValueError, match="does not know the word 'purple'; use its words: "):
        view.parse_answer("two objects: purple circle", VOCABULARY)
    assert view.parse_answer("a purple circle") == "a purple circle"  # no vocabulary on the card: any words
    with pytest.raises(ValueError, match="write the caption"):
        view.parse_answer(" \n ", VOCABULARY)
    assert editors.verdict_for("caption", MODEL_CAPTION, MODEL_CAPTION.upper()) == (VerdictKind.ACCEPT, None)


def test_picture_is_the_scene_with_the_caption_over_it():
    item = caption_item()
    picture = render.input_picture(item.prediction, item.input)
    assert picture.width >= 256 and picture.height > picture.width  # scene enlarged, caption band above
    band = np.asarray(picture.convert("RGB"))[:20]
    assert (band == (31, 36, 48)).all(axis=-1).mean() > 0.5
    blind = render.input_picture(render.without_answer(item.prediction), item.input)
    assert blind.height == blind.width  # no caption band


# --------------------------------------------------------------------------------------------
# the workbench (AppTest)


def claim_caption(store, store_url, tmp_path, item: AuditItem):
    publish_captioner_card(tmp_path / "models")
    store.ingest(item, time.time())
    at = log_in(start_app(store_url, tmp_path), "alice")
    at.button(key="next").click()
    at = at.run()
    assert not at.exception
    return at, f"answer-{at.session_state[workbench.VERDICT_ID]}"


def test_correct_a_caption_in_the_workbench(store, store_url, tmp_path):
    at, key = claim_caption(store, store_url, tmp_path, caption_item())
    [image] = elements(at, "image")
    assert image.proto.imgs[0].caption == "tensor [64, 64, 3] uint8"
    shown = texts(at)
    assert "**Doubtful words** (red, with the model's probability): 1" in shown
    assert ":red-background[**circle** 55%]" in shown
    editor = at.text_area(key=key)
    assert editor.value == MODEL_CAPTION
    editor.input(MODEL_CAPTION.replace("blue circle", "blue hexagon"))
    at.button[0].click()  # "Submit answer"
    at = at.run()
    assert "does not know the word 'hexagon'" in texts(at) and store.verdicts() == []
    assert "blue hexagon" in at.text_area(key=key).value  # nothing lost
    at.text_area(key=key).input(MODEL_CAPTION.replace("blue circle", "Blue  Square"))
    at.button[0].click()
    at = at.run()
    [verdict] = store.verdicts()
    assert (verdict.auditor, verdict.kind, verdict.corrected_output) == ("alice", VerdictKind.CORRECT, TRUE_CAPTION)


def test_accept_a_respaced_caption(store, store_url, tmp_path):
    at, key = claim_caption(store, store_url, tmp_path, caption_item())
    at.text_area(key=key).input(MODEL_CAPTION.replace(": ", " : ").upper())
    at.button[0].click()
    at = at.run()
    [verdict] = store.verdicts()
    assert (verdict.kind, verdict.corrected_output) == (VerdictKind.ACCEPT, None)


def test_caption_qc_samples_are_never_blind(store, store_url, tmp_path):
    """With --blind-qc on, a captioner QC sample still shows the model's caption to edit: written
    blind, a correct caption in other words (another clause order) would be recorded as a
    correction, a model error that is not one (docs/dashboard.md, "Blind mode")."""
    assert views.lookup("caption").supports_blind is False and views.lookup("sequence").supports_blind
    at, key = claim_caption(store, store_url, tmp_path, caption_item("cap-qc", route=Route.AUTO_QC, weak=0.95))
    shown = texts(at)
    assert "QC sample" in shown and "Blind: answer first" not in shown
    assert "Doubtful words" in shown
    assert at.text_area(key=key).value == MODEL_CAPTION  # the model's caption, not an empty box
    [image] = elements(at, "image")
    assert image.proto.imgs[0].caption == "tensor [64, 64, 3] uint8"
    at.button[0].click()  # the caption is right: submitted as it stands
    at = at.run()
    [verdict] = store.verdicts()
    assert (verdict.kind, verdict.corrected_output) == (VerdictKind.ACCEPT, None)
    assert "you agreed with" not in texts(at)  # not a blind audit
