"""Classification items: the input (an 8x8 digit drawn as ink), the label with its runner-ups,
and a class picker. The prediction's ``details``: ``index``, ``runner_ups`` ([{"index", "label",
"prob"}, ...]) as :mod:`auditstream.tasks.classification` writes them, or a full ``probs`` vector.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from PIL import Image

from auditstream.tasks.base import label_name
from auditstream.wire import ImageInput, ModelInput, Prediction, TaskKind
from dashboards import images
from dashboards.tasks.base import (
    RUNNER_UPS_SHOWN, AnswerView, TaskView, choice_editor_ui, choice_index, parse_choice, plain_picture, probs_of,
    register, with_changes,
)


def class_labels(prediction: Prediction, labels: Sequence[str]) -> list[str]:
    """The classes a corrector may pick from: the card's labels, else 0..n-1 as text."""
    if labels:
        return list(labels)
    probs = probs_of(prediction.details, "probs")
    if probs:
        return [str(i) for i in range(len(probs))]
    indices = [e.get("index") for e in prediction.details.get("runner_ups") or [] if isinstance(e, dict)]
    seen = [i for i in (*indices, prediction.details.get("index"), prediction.output) if isinstance(i, int)]
    return [str(i) for i in range(max(10, max(seen, default=0) + 1))]  # digits: the project's classifier


def runner_ups(prediction: Prediction, labels: Sequence[str]) -> list[tuple[str, float]]:
    pairs: list[tuple[Any, float]] = []
    for entry in prediction.details.get("runner_ups") or []:
        if isinstance(entry, dict):
            pairs.append((entry.get("label", entry.get("index")), float(entry.get("prob", 0.0))))
        elif isinstance(entry, (list, tuple)) and len(entry) == 2:
            pairs.append((entry[0], float(entry[1])))
    if not pairs:
        probs = probs_of(prediction.details, "probs") or []
        pairs = sorted(enumerate(probs), key=lambda p: -p[1])
    others = [(label_name(c, labels), p) for c, p in pairs if c != prediction.output]
    return others[:RUNNER_UPS_SHOWN]


class ClassificationView(TaskView):
    kind = TaskKind.CLASSIFICATION

    def input_picture(self, prediction: Prediction, value: ModelInput, labels: Sequence[str]) -> Image.Image | None:
        if not isinstance(value, ImageInput):
            array = np.asarray(value, dtype=np.float64)
            if array.size == 64:  # sklearn digits: 8x8 pixels of ink 0..16
                picture = images.to_image(array.reshape(8, 8), value_range=(0.0, 16.0), ink=True)
                return images.with_border(images.for_display(picture))
        return plain_picture(value)

    def answer_view(self, prediction: Prediction, value: ModelInput, labels: Sequence[str]) -> AnswerView:
        return with_changes(super().answer_view(prediction, value, labels), runner_ups=runner_ups(prediction, labels))

    def editor_ui(self, prediction: Prediction, value: ModelInput, labels: Sequence[str], blind: bool,
                  key: str) -> tuple[Any, Sequence[str]]:  # fmt: skip
        choices = class_labels(prediction, labels)
        index = None if blind else choice_index(prediction.output, choices)
        return choice_editor_ui("Class", choices, index, key), choices

    def parse_answer(self, raw: Any, choices: Sequence[str] = (), as_label: bool = False) -> Any:
        return parse_choice(raw, choices, as_label, "classes")


VIEW = register(ClassificationView())
