"""How an audit item is shown: the input as a person would want to see it, and beside it the
model's answer, its confidence and the runner-up answers.

What differs between task kinds is looked up in :mod:`dashboards.tasks` (one module per kind);
the functions here are the pages' entry points and the Streamlit layout they share. The first
half is pure (item -> picture, texts and small tables) and tested without Streamlit; the
``render_*`` functions at the bottom only lay those out.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
from PIL import Image

from auditstream import tasks
from auditstream.wire import ImageInput, ModelInput, Prediction, TaskKind
from dashboards import tasks as views
from dashboards.markup import md_text
from dashboards.tasks import AnswerView

__all__ = ["AnswerView", "answer_text", "answer_view", "input_picture", "without_answer"]


def answer_text(task: TaskKind | str, output: Any, labels: Sequence[str] = ()) -> str:
    """An output as one line of text (``"3 (cat)"``, ``"02139"``, ``"2 boxes: car, person"``)."""
    return tasks.lookup(task).answer_text(output, labels)


def answer_view(prediction: Prediction, value: ModelInput, labels: Sequence[str] = ()) -> AnswerView:
    """The model's answer, confidence and runner-ups for the panel beside the input."""
    return views.lookup(prediction.task).answer_view(prediction, value, labels)


def input_picture(prediction: Prediction, value: ModelInput, labels: Sequence[str] = ()) -> Image.Image | None:
    """The input as a picture for its task kind, or ``None`` when it has no visual form."""
    return views.lookup(prediction.task).input_picture(prediction, value, labels)


def without_answer(prediction: Prediction) -> Prediction:
    """The prediction with its answer removed, for blind audits (boxes and captions are drawn
    from the answer, so they must not be drawn either)."""
    return dataclasses.replace(prediction, output=None, details={})


# --------------------------------------------------------------------------------------------
# Streamlit layout


def render_input(prediction: Prediction, value: ModelInput, labels: Sequence[str], blind: bool) -> None:
    """The input picture; in blind mode, pictures that would reveal the answer are drawn without it."""
    import streamlit as st

    picture = input_picture(without_answer(prediction) if blind else prediction, value, labels)
    if picture is None:
        st.info(f"This {prediction.task} input has no picture; its raw values:")
        st.code(np.array2string(np.asarray(value), precision=3, threshold=200))
        return
    st.image(picture, caption=_input_caption(prediction, value), output_format="PNG")  # crisp pixels, no JPEG blur


def human_duration(seconds: float) -> str:
    """A waiting time as a person reads it: '42 s', '12 min', '3.5 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _input_caption(prediction: Prediction, value: ModelInput) -> str:
    if isinstance(value, ImageInput):
        return f"{value.format.upper()} image, {len(value.data):,} bytes"
    return f"tensor {list(np.asarray(value).shape)} {np.asarray(value).dtype}"


def confidence_badges(chars: list[tuple[str, float]]) -> str:
    """Per-character confidences as one line of coloured badges (where to look first)."""
    def colour(p: float) -> str:
        return "green" if p >= 0.9 else "orange" if p >= 0.7 else "red"

    return " ".join(f":{colour(p)}-badge[**{md_text(c) if c.strip() else '␣'}** {p:.0%}]" for c, p in chars)


def render_answer(view: AnswerView) -> None:
    """The model's answer with its confidence (and per-character confidences): what the auditor
    needs before answering, kept short so the form stays in view."""
    import streamlit as st

    st.metric("Model's answer", md_text(view.answer), help="What the model would have published")  # markdown
    st.progress(min(max(view.confidence, 0.0), 1.0), text=f"confidence {view.confidence:.1%}")
    if view.char_confidences:
        st.markdown(confidence_badges(view.char_confidences), help="Confidence per character")


def render_alternatives(view: AnswerView) -> None:
    """The alternatives the model considered: every action with its probability, or the runner-ups."""
    import pandas as pd
    import streamlit as st

    if view.actions:
        st.caption("Action probabilities" + (f" · state value {view.value:+.2f}" if view.value is not None else ""))
        st.dataframe(
            pd.DataFrame(view.actions)[["action", "probability", "chosen"]],
            column_config={"probability": st.column_config.ProgressColumn(min_value=0.0, max_value=1.0, format="%.3f")},
            hide_index=True,
        )
    elif view.runner_ups:
        st.caption("Runner-up answers")
        st.dataframe(
            pd.DataFrame(view.runner_ups, columns=["answer", "score"]),
            column_config={"score": st.column_config.ProgressColumn(min_value=0.0, max_value=1.0, format="%.3f")},
            hide_index=True,
        )
