"""Caption items: the scene with the caption written under it, the runner-up captions, and a
text area. The prediction's ``details``: ``runner_ups`` like a sequence's, optionally
``char_confidences``.
"""

from __future__ import annotations

from typing import Any, Sequence

from PIL import Image

from auditstream.wire import ModelInput, Prediction, TaskKind
from dashboards import images
from dashboards.tasks.base import AnswerView, TaskView, plain_picture, register, text_answer_view

MAX_CAPTION_CHARS = 500


class CaptionView(TaskView):
    kind = TaskKind.CAPTION

    def input_picture(self, prediction: Prediction, value: ModelInput, labels: Sequence[str]) -> Image.Image | None:
        if prediction.output is None:  # blind: the caption must not be shown
            return plain_picture(value)
        try:
            picture = images.to_image(value)
        except ValueError:
            return None
        return images.caption_over(picture, str(prediction.output))

    def answer_view(self, prediction: Prediction, value: ModelInput, labels: Sequence[str]) -> AnswerView:
        return text_answer_view(super().answer_view(prediction, value, labels), prediction)

    def editor_ui(self, prediction: Prediction, value: ModelInput, labels: Sequence[str], blind: bool,
                  key: str) -> tuple[Any, Sequence[str]]:  # fmt: skip
        import streamlit as st

        start = None if blind else prediction.output
        raw = st.text_area("Caption", value="" if start is None else str(start), key=key, height=90,
                           help="Write the caption the image should have; Ctrl+Enter submits.")  # fmt: skip
        return raw, ()

    def parse_answer(self, raw: Any, choices: Sequence[str] = (), as_label: bool = False) -> Any:
        text = " ".join(str(raw or "").split())
        if not text:
            raise ValueError("write the caption the image should have (or reject the item)")
        if len(text) > MAX_CAPTION_CHARS:
            raise ValueError(f"a caption of {len(text)} characters is longer than {MAX_CAPTION_CHARS}")
        return text


VIEW = register(CaptionView())
