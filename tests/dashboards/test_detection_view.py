"""The detection kind in the workbench: box status (auto-accepted or to check), the box table's
rows and its parsing with errors an auditor can act on, the picture, and the whole flow through
AppTest against a temp SQLite store (correct: relabel, move, delete, add; accept as is; blind).

The item is what serving sends for the digit detector (auditstream/tasks/detection.py and
serving/consumer.py): a 64x64 float32 parcel label, boxes best first, confidence the lowest
kept score, details with the threshold that routed it.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
from tests.dashboards.conftest import elements, log_in, prediction, start_app, texts

from auditstream.tasks.detection import TASK
from auditstream.wire import AuditItem, Route, VerdictKind
from dashboards import editors, render, workbench
from dashboards import tasks as views
from dashboards.tasks.detection import (
    ACCEPTED, CHECK, STATUS_COLOURS, BoxTable, box_statuses, boxes_as_rows, parse_boxes, status_summary,
)

LABELS = [str(d) for d in range(10)]
T_HIGH = 0.4025  # docs/detector.md: the certified high threshold of the measured run
# Best first, as postprocess orders them: two auto-accepted boxes, then two to check.
MODEL_BOXES = [
    {"box": [4.0, 5.0, 18.0, 22.0], "label": 3, "score": 0.97},
    {"box": [30.0, 8.0, 44.0, 26.0], "label": 7, "score": 0.91},
    {"box": [6.0, 36.0, 20.0, 54.0], "label": 1, "score": 0.38},
    {"box": [40.0, 40.0, 54.0, 58.0], "label": 8, "score": 0.25},
]
RED, BLUE = (230, 25, 75), (67, 99, 216)


def parcel() -> np.ndarray:
    """A light label with a dark stroke in each box, float32 0..1 like the detector's input."""
    image = np.full((64, 64), 0.85, dtype=np.float32)
    for x0, y0, x1, y1 in (b["box"] for b in MODEL_BOXES):
        image[int(y0) + 3:int(y1) - 3, int(x0) + 6:int(x0) + 8] = 0.1
    return image


def detection_item(request_id: str = "det-parcel", output=None, details=None,
                   route: Route = Route.HUMAN) -> AuditItem:  # fmt: skip
    output = MODEL_BOXES if output is None else output
    confidence = min((b["score"] for b in output), default=1.0)
    details = {"threshold": T_HIGH, "threshold_low": 0.194, "dropped": 12} if details is None else details
    return AuditItem(prediction(request_id, "detector", "detection", output, confidence, details, route=route),
                     parcel())  # fmt: skip


def publish_detector_card(models_dir: Path) -> None:
    """The detector's card as training writes it (labels "0".."9", t_high, threshold_low, match_iou)."""
    from auditstream.registry import ModelCard, ModelRegistry, TensorSpec, TriageSpec

    card = ModelCard(name="detector", version="1", task="detection",
                     inputs=[TensorSpec("image", "float32", [None, 64, 64])],
                     outputs=[TensorSpec("boxes", "float32", [None, 16, 4]),
                              TensorSpec("labels", "int64", [None, 16]), TensorSpec("scores", "float32", [None, 16])],
                     triage=TriageSpec(threshold=T_HIGH), labels=LABELS,
                     extra={"threshold_low": 0.194, "threshold_high": T_HIGH, "match_iou": 0.5})  # fmt: skip
    ModelRegistry(models_dir).publish(card, b"not an onnx file: the dashboard reads cards only")


def rows() -> list[dict]:
    item = detection_item()
    return boxes_as_rows(item.prediction.output, LABELS, (64, 64), box_statuses(item.prediction))


def row_of(table: list[dict], number: int) -> dict:
    return next(r for r in table if r["#"] == number)


# --------------------------------------------------------------------------------------------
# status, rows, parsing (pure)


def test_status_is_the_score_against_the_threshold_that_routed_the_item():
    item = detection_item()
    assert box_statuses(item.prediction) == [ACCEPTED, ACCEPTED, CHECK, CHECK]
    at_threshold = detection_item(output=[{**MODEL_BOXES[0], "score": T_HIGH}])
    assert box_statuses(at_threshold.prediction) == [ACCEPTED]  # ">= t_high" is auto-accepted


def test_servings_per_box_routes_win_over_the_scores():
    # A part threshold above the card's (policy.part_threshold) sent the 0.91 box to the auditor too.
    routes = {"threshold": T_HIGH, "part_routes": ["AUTO", "HUMAN", "HUMAN", "HUMAN"]}
    assert box_statuses(detection_item(details=routes).prediction) == [ACCEPTED, CHECK, CHECK, CHECK]
    wrong_length = {"threshold": T_HIGH, "part_routes": ["AUTO", "HUMAN"]}
    assert box_statuses(detection_item(details=wrong_length).prediction) == [ACCEPTED, ACCEPTED, CHECK, CHECK]


def test_without_a_threshold_every_box_is_to_check():
    assert box_statuses(detection_item(details={}).prediction) == [CHECK] * 4


def test_rows_list_the_boxes_to_check_first_with_their_picture_numbers():
    table = rows()
    assert [(r["#"], r["status"], r["label"]) for r in table] == [(3, CHECK, "1"), (4, CHECK, "8"),
                                                                   (1, ACCEPTED, "3"), (2, ACCEPTED, "7")]
    assert [row_of(table, 3)[c] for c in ("x0", "y0", "x1", "y1", "score")] == [6.0, 36.0, 20.0, 54.0, 0.38]


def test_rows_clip_boxes_to_the_picture():
    # The graph does not clip: a digit at the border gets a box a little outside the label.
    item = detection_item(output=[{"box": [-0.6, 50.0, 12.0, 64.4], "label": 2, "score": 0.3}])
    [row] = boxes_as_rows(item.prediction.output, LABELS, (64, 64))
    assert [row[c] for c in ("x0", "y0", "x1", "y1")] == [0.0, 50.0, 12.0, 64.0]
    [box] = parse_boxes([row], LABELS, (64, 64))  # so accepting it as is is a valid answer
    assert TASK.same_answer(item.prediction.output, [box])


def test_unchanged_rows_are_the_models_answer_and_accept():
    answer = parse_boxes(rows(), LABELS, (64, 64))
    assert answer == MODEL_BOXES  # the model's order, labels back to class indices, scores kept
    assert editors.verdict_for("detection", MODEL_BOXES, answer) == (VerdictKind.ACCEPT, None)


def test_relabel_move_delete_and_add_make_a_correction():
    table = rows()
    row_of(table, 3)["label"] = "7"  # relabel
    row_of(table, 4).update(x0=10.0, x1=24.0)  # move (IoU 0 with where it was)
    table = [r for r in table if r["#"] != 1]  # delete
    table.append({"#": None, "status": None, "label": "5", "score": float("nan"),  # add (a new table row)
                  "x0": 46.0, "y0": 2.0, "x1": 60.0, "y1": 20.0})
    answer = parse_boxes(table, LABELS, (64, 64))
    assert answer == [MODEL_BOXES[1], {**MODEL_BOXES[2], "label": 7},
                      {**MODEL_BOXES[3], "box": [10.0, 40.0, 24.0, 58.0]},
                      {"box": [46.0, 2.0, 60.0, 20.0], "label": 5, "score": 1.0}]  # fmt: skip
    assert editors.verdict_for("detection", MODEL_BOXES, answer) == (VerdictKind.CORRECT, answer)


def test_empty_rows_the_table_added_are_ignored():
    blank = {"#": None, "status": None, "label": None, "score": math.nan, "x0": math.nan, "y0": None, "x1": "",
             "y1": math.nan}  # fmt: skip
    assert parse_boxes([*rows(), blank], LABELS, (64, 64)) == MODEL_BOXES


@pytest.mark.parametrize(("change", "message"), [
    ({"x1": 70.0}, "box 3: x1 = 70 is outside the picture (x runs from 0 to 64)"),
    ({"y0": -2.0}, "box 3: y0 = -2 is outside the picture (y runs from 0 to 64)"),
    ({"x0": 20.0}, "box 3: its left edge x0 = 20 must be left of its right edge x1 = 20 (x0 < x1)"),
    ({"y0": 55.0}, "box 3: its top edge y0 = 55 must be above its bottom edge y1 = 54 (y0 < y1)"),
    ({"x0": math.nan}, "box 3: x0 must be a number (pixels from the picture's top left corner)"),
    ({"label": "car"}, "box 3: label 'car' is not one of the model's labels (0, 1, 2, 3, 4, 5, 6, 7, 8, 9)"),
    ({"label": None}, "box 3: pick its label"),
])
def test_a_bad_box_is_named_with_what_to_fix(change, message):
    table = rows()
    row_of(table, 3).update(change)
    with pytest.raises(ValueError) as e:
        parse_boxes(table, LABELS, (64, 64))
    assert str(e.value) == f"Fix {message}."


def test_every_bad_box_is_listed_at_once():
    table = [*rows(), {"label": None, "x0": 1.0, "y0": 1.0, "x1": 5.0, "y1": 5.0}]
    row_of(table, 4)["x1"] = 30.0
    with pytest.raises(ValueError) as e:
        parse_boxes(table, LABELS, (64, 64))
    assert str(e.value).splitlines() == [
        "Fix these boxes, then submit again:",
        "- box 4: its left edge x0 = 40 must be left of its right edge x1 = 30 (x0 < x1)",
        "- the new box in row 5: pick its label",
    ]


def test_without_card_labels_a_number_is_a_class_index_and_a_name_stays():
    table = [{"label": "3", "x0": 1, "y0": 1, "x1": 5, "y1": 5}, {"label": "car", "x0": 2, "y0": 2, "x1": 9, "y1": 9}]
    assert [b["label"] for b in parse_boxes(table, [])] == [3, "car"]


def test_the_view_parses_what_its_editor_returns():
    view = views.lookup("detection")
    too_far = [{**rows()[0], "x1": 100.0}]
    with pytest.raises(ValueError, match="outside the picture"):
        view.parse_answer(BoxTable(too_far, (64, 64)), LABELS)
    unchecked = view.parse_answer(too_far, LABELS)  # rows without the picture's size: no bounds to check
    assert unchecked == [{**MODEL_BOXES[2], "box": [6.0, 36.0, 100.0, 54.0]}]


def test_summary_says_which_boxes_to_check():
    assert status_summary(detection_item().prediction).startswith(
        "**To check** (red): boxes 3 and 4 (score below the certified threshold 0.4025). "
        "**Auto-accepted** (blue): 2 boxes, shown as context")
    routes = {"threshold": T_HIGH, "part_routes": ["AUTO", "HUMAN", "HUMAN", "HUMAN"]}  # a part threshold 0.95
    assert status_summary(detection_item(details=routes).prediction).startswith(
        "**To check** (red): boxes 2, 3 and 4. **Auto-accepted** (blue): 1 box,")  # no "below 0.40": untrue of box 2
    qc = detection_item(output=MODEL_BOXES[:2], route=Route.AUTO_QC)
    assert status_summary(qc.prediction) == "All 2 boxes were auto-accepted (blue): check each one."
    assert "found no box" in status_summary(detection_item(output=[]).prediction)


# --------------------------------------------------------------------------------------------
# the picture


def test_picture_colours_each_box_by_status_and_has_a_legend():
    item = detection_item()
    picture = render.input_picture(item.prediction, item.input, LABELS)
    assert STATUS_COLOURS == {CHECK: "#e6194b", ACCEPTED: "#4363d8"}
    scale = picture.width / 64
    assert scale >= 8  # the detector's 64x64 labels are drawn large enough to read the tags
    assert picture.height > picture.width  # the legend band under the square picture
    for det, colour in zip(MODEL_BOXES, (BLUE, BLUE, RED, RED)):
        x0, y0, x1, y1 = (v * scale for v in det["box"])
        assert picture.getpixel((int(x0) + 1, int((y0 + y1) / 2))) == colour, det  # its left edge
    band = np.asarray(picture.convert("RGB"))[picture.width:]
    for colour in (RED, BLUE):  # the legend's swatches
        assert (band == colour).all(axis=-1).sum() >= 100
    blind = render.input_picture(render.without_answer(item.prediction), item.input, LABELS)
    pixels = np.asarray(blind.convert("RGB"))
    assert not any((pixels == c).all(axis=-1).any() for c in (RED, BLUE))  # no box, no legend


# --------------------------------------------------------------------------------------------
# the workbench (AppTest)


def claim_detection(store, store_url, tmp_path, item: AuditItem, blind_qc: bool = True):
    publish_detector_card(tmp_path / "models")
    store.ingest(item, time.time())
    at = log_in(start_app(store_url, tmp_path, blind_qc=blind_qc), "alice")
    at.button(key="next").click()
    at = at.run()
    assert not at.exception
    return at, f"answer-{at.session_state[workbench.VERDICT_ID]}"


def submit(at, key: str, edits: dict):
    """Submit the form with the box table edited as the browser would send it (AppTest cannot
    type into a data editor; it takes the editor's edit state)."""
    at.session_state[key] = {"edited_rows": {}, "added_rows": [], "deleted_rows": [], **edits}
    at.button[0].click()  # "Submit answer"
    return at.run()


def test_correct_boxes_in_the_workbench(store, store_url, tmp_path):
    at, key = claim_detection(store, store_url, tmp_path, detection_item())
    [image] = elements(at, "image")
    assert image.proto.imgs[0].caption == "tensor [64, 64] float32"
    shown = texts(at)
    assert "**To check** (red): boxes 3 and 4" in shown and "Ctrl+Enter submits" in shown
    table = at.data_editor(key=key).value
    assert list(table["#"]) == [3, 4, 1, 2] and list(table["status"]) == [CHECK, CHECK, ACCEPTED, ACCEPTED]
    assert list(table["label"]) == ["1", "8", "3", "7"]  # by the card's label names
    # A new box drawn past the right edge: refused with what to fix, nothing recorded, edits kept.
    new_box = {"label": "5", "x0": 46.0, "y0": 2.0, "x1": 70.0, "y1": 20.0}
    at = submit(at, key, {"added_rows": [new_box]})
    assert "Fix the new box in row 5: x1 = 70 is outside the picture (x runs from 0 to 64)." in texts(at)
    assert store.verdicts() == []
    assert at.session_state[key]["added_rows"] == [new_box]
    # Relabel box 3 (row 0), move box 4 (row 1), delete box 1 (row 2), add the missed box.
    at = submit(at, key, {"edited_rows": {0: {"label": "7"}, 1: {"x0": 10.0, "x1": 24.0}}, "deleted_rows": [2],
                          "added_rows": [{**new_box, "x1": 60.0}]})  # fmt: skip
    [verdict] = store.verdicts()
    assert (verdict.auditor, verdict.kind) == ("alice", VerdictKind.CORRECT)
    assert verdict.corrected_output == [
        {"box": [30.0, 8.0, 44.0, 26.0], "label": 7, "score": 0.91},
        {"box": [6.0, 36.0, 20.0, 54.0], "label": 7, "score": 0.38},
        {"box": [10.0, 40.0, 24.0, 58.0], "label": 8, "score": 0.25},
        {"box": [46.0, 2.0, 60.0, 20.0], "label": 5, "score": 1.0},
    ]
    assert "corrected → 4 boxes: 7, 7, 8, 5" in texts(at)


def test_accept_the_boxes_as_they_are(store, store_url, tmp_path):
    at, key = claim_detection(store, store_url, tmp_path, detection_item())
    at = submit(at, key, {})
    [verdict] = store.verdicts()
    assert (verdict.kind, verdict.corrected_output) == (VerdictKind.ACCEPT, None)
    assert "accepted" in texts(at)


def test_blind_qc_sample_starts_with_an_empty_table(store, store_url, tmp_path):
    qc = detection_item("det-qc", output=MODEL_BOXES[:2], route=Route.AUTO_QC)
    at, key = claim_detection(store, store_url, tmp_path, qc)
    shown = texts(at)
    assert "Blind: answer first" in shown and "check each one" not in shown and "3, 7" not in shown
    assert at.data_editor(key=key).value.empty
    # The auditor draws the two digits a little differently (IoU >= 0.5, same labels): agreement.
    drawn = [{"label": "7", "x0": 31.0, "y0": 8.0, "x1": 44.0, "y1": 25.0},
             {"label": "3", "x0": 4.0, "y0": 6.0, "x1": 18.0, "y1": 22.0}]  # fmt: skip
    at = submit(at, key, {"added_rows": drawn})
    [verdict] = store.verdicts()
    assert verdict.kind is VerdictKind.ACCEPT
    assert "you agreed with the model's 2 boxes: 3, 7" in texts(at)


def test_the_blind_picture_is_as_large_as_the_open_one():
    """It was plain_picture's 256 px (DISPLAY_MIN_SIDE), half the open picture's 512."""
    item = detection_item()
    picture = render.input_picture(item.prediction, item.input, LABELS)
    blind = render.input_picture(render.without_answer(item.prediction), item.input, LABELS)
    assert blind.width == picture.width >= 512


def test_the_legend_writes_the_threshold_as_it_is_used(monkeypatch):
    """0.435 was written "score >= 0.43" (two decimals), as if a 0.432 box would have passed."""
    from dashboards import images

    legends = []
    real = images.draw_boxes
    monkeypatch.setattr(images, "draw_boxes", lambda *a, **k: legends.append(k.get("legend")) or real(*a, **k))
    item = detection_item(output=[{**MODEL_BOXES[0], "score": 0.91}, {**MODEL_BOXES[2], "score": 0.432}],
                          details={"threshold": 0.435})
    render.input_picture(item.prediction, item.input, LABELS)
    [legend] = legends
    assert legend[1][1] == "auto-accepted (score >= 0.435): 1" and legend[0][1] == "to check: 1"


def test_summary_prints_the_threshold_exactly_and_scores_with_three_decimals():
    from dashboards.tasks import detection as det_view

    p = prediction("det-9", "detector", "detection",
                   [{"box": [4, 6, 30, 40], "label": 1, "score": 0.97}, {"box": [30, 6, 60, 40], "label": 3, "score": 0.432}],
                   0.432, {"threshold": 0.435})  # fmt: skip
    summary = det_view.status_summary(p)
    assert "threshold 0.435)" in summary and "0.43)" not in summary  # 0.432 must not read as passing
    source = Path(det_view.__file__).read_text()
    assert 'format="%.3f"' in source and 'format="%.2f"' not in source  # the table's score column
