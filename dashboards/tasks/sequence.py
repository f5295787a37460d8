"""Sequence items (ZIP codes): the envelope, the string with a badge per character's confidence
and the runner-up strings, and a 5-digit text field. The prediction's ``details``:
``char_confidences`` (one per character), ``runner_ups`` ([{"text", "position",
"relative_prob"}, ...]: the answer with its least sure character swapped).
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from auditstream.wire import ModelInput, Prediction, TaskKind
from dashboards.tasks.base import AnswerView, TaskView, register, text_answer_view

ZIP_PATTERN = re.compile(r"^[0-9]{5}$")


class SequenceView(TaskView):
    kind = TaskKind.SEQUENCE

    def answer_view(self, prediction: Prediction, value: ModelInput, labels: Sequence[str]) -> AnswerView:
        return text_answer_view(super().answer_view(prediction, value, labels), prediction)

    def editor_ui(self, prediction: Prediction, value: ModelInput, labels: Sequence[str], blind: bool,
                  key: str) -> tuple[Any, Sequence[str]]:  # fmt: skip
        import streamlit as st

        start = None if blind else prediction.output
        raw = st.text_input(
            "ZIP code (5 digits)", value="" if start is None else str(start), max_chars=5, key=key,
            validate=(r"^[0-9]{5}$", "A ZIP code is exactly 5 digits."),
            help="Type the ZIP code you read on the envelope and press Enter.",
        )  # fmt: skip
        return raw, ()

    def parse_answer(self, raw: Any, choices: Sequence[str] = (), as_label: bool = False) -> Any:
        text = "" if raw is None else str(raw).strip().replace(" ", "")
        if not ZIP_PATTERN.fullmatch(text):
            raise ValueError(f"a ZIP code is exactly 5 digits; {text!r} has {len(text)} characters"
                             + ("" if text.isdigit() or not text else " and not only digits"))
        return text


VIEW = register(SequenceView())
