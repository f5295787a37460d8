"""Classification items: the input (an 8x8 digit drawn as ink), the label with its runner-ups,
and a class picker. The prediction's ``details``: ``index``, ``runner_ups`` ([{"index", "label",
"prob"}, ...]) as :mod:`auditstream.tasks.classification` writes them, or a full ``probs`` vector.
Malformed details are read as far as they make sense (an entry that is not one is left out), and
the class picker offers the card's classes, else at most :data:`~dashboards.tasks.base.MAX_CHOICES`.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from PIL import Image

from auditstream.tasks.base import label_name
from auditstream.wire import ImageInput, ModelInput, Prediction, TaskKind
from dashboards import images
from dashboards.tasks.base import (
    MAX_CHOICES, RUNNER_UPS_SHOWN, AnswerView, TaskView, choice_editor_ui, choice_index, details_of, index_of, number,
    out_of_range_note, parse_choice, plain_picture, probs_of, register, with_changes,
)


def class_labels(prediction: Prediction, labels: Sequence[str]) -> list[str]:
    """The classes a corrector may pick from: the card's labels, else 0..n-1 as text, n from the
    item's probabilities or indices but at most :data:`MAX_CHOICES` (an index is the item's word,
    not the model's: a malformed one must not build a 20-million-choice picker)."""
    if labels:
        return list(labels)
    details = details_of(prediction)
    probs = probs_of(details, "probs")
    if probs:
        return [str(i) for i in range(min(len(probs), MAX_CHOICES))]
    entries = details.get("runner_ups")
    indices = [e.get("index") for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []
    seen = [i for i in (*indices, details.get("index"), prediction.output) if index_of(i) is not None]
    return [str(i) for i in range(min(MAX_CHOICES, max(10, max(seen, default=0) + 1)))]  # digits: the project's classifier


def runner_ups(prediction: Prediction, labels: Sequence[str]) -> list[tuple[str, float]]:
    pairs: list[tuple[Any, float]] = []
    details = details_of(prediction)
    entries = details.get("runner_ups")
    for entry in entries if isinstance(entries, list) else []:  # malformed entries are left out
        if isinstance(entry, dict):
            name, prob = entry.get("label", entry.get("index")), number(entry.get("prob", 0.0))
        elif isinstance(entry, (list, tuple)) and len(entry) == 2:
            name, prob = entry[0], number(entry[1])
        else:
            continue
        if isinstance(name, (str, int)) and not isinstance(name, bool) and prob is not None:
            pairs.append((name, prob))
    if not pairs:
        probs = probs_of(details, "probs") or []
        pairs = sorted(enumerate(probs), key=lambda p: -p[1])
    others = [(label_name(c, labels)[:200], p) for c, p in pairs if c != prediction.output]
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
        import streamlit as st

        choices = class_labels(prediction, labels)
        index = None if blind else choice_index(prediction.output, choices)
        note = None if blind else out_of_range_note(prediction.output, choices, "classes")
        if note:
            st.warning(note)
        return choice_editor_ui("Class", choices, index, key), choices

    def parse_answer(self, raw: Any, choices: Sequence[str] = (), as_label: bool = False) -> Any:
        return parse_choice(raw, choices, as_label, "classes")


VIEW = register(ClassificationView())
