"""Detection items: the image with the model's boxes drawn on it, the boxes with their scores,
and a box table editor. The output is ``[{"box": [x0, y0, x1, y1], "label", "score"}, ...]``.
"""

from __future__ import annotations

from typing import Any, Sequence

from PIL import Image

from auditstream.tasks.base import label_name
from auditstream.tasks.detection import boxes
from auditstream.wire import ModelInput, Prediction, TaskKind
from dashboards import images
from dashboards.tasks.base import AnswerView, TaskView, plain_picture, register, with_changes

DETECTION_COLUMNS = ("label", "score", "x0", "y0", "x1", "y1")


def boxes_as_rows(output: Any, labels: Sequence[str] = ()) -> list[dict[str, Any]]:
    """A detection output as rows of the box table editor (labels by name where the card has them)."""
    rows = []
    for det in boxes(output):
        if len(det.get("box", [])) != 4:
            continue
        label = det.get("label")
        if isinstance(label, int) and 0 <= label < len(labels):
            label = labels[label]
        x0, y0, x1, y1 = (float(v) for v in det["box"])
        rows.append({"label": str(label), "score": float(det.get("score", 1.0)), "x0": x0, "y0": y0, "x1": x1, "y1": y1})
    return rows


def parse_boxes(rows: Any, labels: Sequence[str]) -> list[dict[str, Any]]:
    """Rows of the box table (dicts with label, score, x0..y1) as a detection output."""
    out = []
    for i, row in enumerate(rows or []):
        if all(row.get(c) in (None, "") for c in DETECTION_COLUMNS):
            continue  # an empty row the table editor added
        try:
            box = [float(row[c]) for c in ("x0", "y0", "x1", "y1")]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"box {i + 1}: x0, y0, x1, y1 must all be numbers, got {row}") from None
        if not (box[0] < box[2] and box[1] < box[3]):
            raise ValueError(f"box {i + 1}: need x0 < x1 and y0 < y1, got {box}")
        label = row.get("label")
        if labels and label in labels:
            label = list(labels).index(label)
        elif isinstance(label, str) and label.strip().lstrip("-").isdigit():
            label = int(label)
        if label in (None, ""):
            raise ValueError(f"box {i + 1} needs a label")
        score = row.get("score")
        out.append({"box": box, "label": label, "score": 1.0 if score in (None, "") else float(score)})
    return out


class DetectionView(TaskView):
    kind = TaskKind.DETECTION

    def input_picture(self, prediction: Prediction, value: ModelInput, labels: Sequence[str]) -> Image.Image | None:
        if not isinstance(prediction.output, list):  # blind, or no answer: the plain image
            return plain_picture(value)
        try:
            picture = images.to_image(value)
        except ValueError:
            return None
        return images.draw_boxes(picture, [d for d in boxes(prediction.output) if "box" in d], labels)

    def answer_view(self, prediction: Prediction, value: ModelInput, labels: Sequence[str]) -> AnswerView:
        view = super().answer_view(prediction, value, labels)
        if not isinstance(prediction.output, list):
            return view
        return with_changes(view, runner_ups=[
            (f"{i + 1}: {label_name(d.get('label'), labels)}", float(d.get("score", 0.0)))
            for i, d in enumerate(boxes(prediction.output))
        ])

    def editor_ui(self, prediction: Prediction, value: ModelInput, labels: Sequence[str], blind: bool,
                  key: str) -> tuple[Any, Sequence[str]]:  # fmt: skip
        import pandas as pd
        import streamlit as st

        rows = boxes_as_rows([] if blind or prediction.output is None else prediction.output, labels)
        frame = pd.DataFrame(rows, columns=list(DETECTION_COLUMNS))
        edited = st.data_editor(frame, num_rows="dynamic", key=key, hide_index=True,
                                column_config={"label": st.column_config.TextColumn(required=True)})  # fmt: skip
        return edited.to_dict("records"), labels

    def parse_answer(self, raw: Any, choices: Sequence[str] = (), as_label: bool = False) -> Any:
        return parse_boxes(raw, choices)


VIEW = register(DetectionView())
