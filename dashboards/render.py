"""How each task kind's audit item is shown: the input as a person would want to see it, and
beside it the model's answer, its confidence and the runner-up answers.

The first half is pure (item -> picture, texts and small tables) and tested without Streamlit;
the ``render_*`` functions at the bottom only lay those out. The prediction's ``details`` are
read tolerantly, since each model family reports its partial outputs under its own keys:

- classification: output is the label name (the index when the card has no labels);
  ``index``, ``runner_ups`` ([{"index", "label", "prob"}, ...]) as serving/postprocess.py writes
  them, or a full ``probs`` vector
- sequence (ZIP): ``char_confidences`` (one per character), ``runner_ups`` ([{"text",
  "position", "relative_prob"}, ...]: the answer with its least sure character swapped)
- detection: output is ``[{"box": [x0, y0, x1, y1], "label", "score"}, ...]``
- policy: ``action_probs`` (or ``probs``) over all actions, ``value``
- caption: output is the caption text; ``runner_ups`` like a sequence
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from PIL import Image

from auditstream.wire import ImageInput, ModelInput, Prediction
from dashboards import images

# Default action names when a policy's model card carries no labels (gymnasium's meanings).
DEFAULT_ACTIONS = {
    4: ["push left", "push right"],  # CartPole: 4-dim observation
    8: ["do nothing", "fire left engine", "fire main engine", "fire right engine"],  # LunarLander
}
RUNNER_UPS_SHOWN = 4


@dataclass(frozen=True)
class AnswerView:
    """What the right-hand panel shows about the model's answer."""

    answer: str
    confidence: float
    runner_ups: list[tuple[str, float]] = field(default_factory=list)
    char_confidences: list[tuple[str, float]] = field(default_factory=list)
    actions: list[dict[str, Any]] = field(default_factory=list)  # policy: every action, chosen marked
    value: float | None = None  # policy: the critic's estimate of the state's value


def action_labels(prediction: Prediction, value: ModelInput, labels: Sequence[str]) -> list[str]:
    """Names of a policy's actions: the card's labels, else gymnasium's for a known env."""
    probs = _probs(prediction.details, "action_probs", "probs")
    n = len(probs) if probs else (int(prediction.output) + 1 if isinstance(prediction.output, int) else 0)
    if labels and len(labels) >= n:
        return list(labels)
    size = 0 if isinstance(value, ImageInput) else int(np.asarray(value).size)
    defaults = DEFAULT_ACTIONS.get(size, [])
    return defaults if len(defaults) >= n else [f"action {i}" for i in range(n)]


def class_labels(prediction: Prediction, labels: Sequence[str]) -> list[str]:
    """The classes a corrector may pick from: the card's labels, else 0..n-1 as text."""
    if labels:
        return list(labels)
    probs = _probs(prediction.details, "probs")
    if probs:
        return [str(i) for i in range(len(probs))]
    indices = [e.get("index") for e in prediction.details.get("runner_ups") or [] if isinstance(e, dict)]
    seen = [i for i in (*indices, prediction.details.get("index"), prediction.output) if isinstance(i, int)]
    return [str(i) for i in range(max(10, max(seen, default=0) + 1))]  # digits: the project's classifier


def answer_text(task: str, output: Any, labels: Sequence[str] = ()) -> str:
    """An output as one line of text (``"3 (cat)"``, ``"02139"``, ``"2 boxes: car, person"``)."""
    if output is None:
        return "(no answer)"
    if task in ("classification", "policy") and isinstance(output, int) and not isinstance(output, bool):
        name = images.label_name(output, labels)
        return name if name == str(output) else f"{name} ({output})"
    if task == "detection" and isinstance(output, list):
        names = ", ".join(images.label_name(d.get("label"), labels) for d in output if isinstance(d, dict))
        return f"{len(output)} box{'es' if len(output) != 1 else ''}" + (f": {names}" if names else "")
    return str(output)


def answer_view(prediction: Prediction, value: ModelInput, labels: Sequence[str] = ()) -> AnswerView:
    """The model's answer, confidence and runner-ups for the panel beside the input."""
    task, details = prediction.task, prediction.details
    view = AnswerView(answer_text(task, prediction.output, labels), float(prediction.confidence))
    if task == "classification":
        return _with(view, runner_ups=_classification_runner_ups(prediction, labels))
    if task in ("sequence", "caption"):
        text = str(prediction.output or "")
        confs = details.get("char_confidences") or []
        chars = list(zip(text, (float(c) for c in confs))) if len(confs) == len(text) else []
        return _with(view, runner_ups=_text_runner_ups(details), char_confidences=chars)
    if task == "policy":
        names = action_labels(prediction, value, labels)
        probs = _probs(details, "action_probs", "probs") or []
        actions = [
            {"action": names[i] if i < len(names) else f"action {i}", "index": i, "probability": float(p),
             "chosen": i == prediction.output}
            for i, p in enumerate(probs)
        ]
        ranked = sorted((a for a in actions if not a["chosen"]), key=lambda a: -a["probability"])
        value_estimate = details.get("value")
        return _with(
            view,
            answer=answer_text(task, prediction.output, names),
            actions=actions,
            runner_ups=[(a["action"], a["probability"]) for a in ranked[:RUNNER_UPS_SHOWN]],
            value=None if value_estimate is None else float(value_estimate),
        )
    if task == "detection" and isinstance(prediction.output, list):
        return _with(view, runner_ups=[
            (f"{i + 1}: {images.label_name(d.get('label'), labels)}", float(d.get("score", 0.0)))
            for i, d in enumerate(prediction.output) if isinstance(d, dict)
        ])
    return view


def input_picture(prediction: Prediction, value: ModelInput, labels: Sequence[str] = ()) -> Image.Image | None:
    """The input as a picture for its task kind, or ``None`` when it has no visual form."""
    task = prediction.task
    if task == "policy":
        if isinstance(value, ImageInput):
            return images.for_display(images.to_image(value))
        return images.policy_frame(value)
    if task == "classification" and not isinstance(value, ImageInput):
        array = np.asarray(value, dtype=np.float64)
        if array.size == 64:  # sklearn digits: 8x8 pixels of ink 0..16
            picture = images.to_image(array.reshape(8, 8), value_range=(0.0, 16.0), ink=True)
            return images.with_border(images.for_display(picture))
    try:
        picture = images.to_image(value)
    except ValueError:
        return None
    if task == "detection" and isinstance(prediction.output, list):
        return images.draw_boxes(picture, [d for d in prediction.output if isinstance(d, dict) and "box" in d], labels)
    if task == "caption" and prediction.output is not None:
        return images.caption_over(picture, str(prediction.output))
    return images.with_border(images.for_display(picture))


def without_answer(prediction: Prediction) -> Prediction:
    """The prediction with its answer removed, for blind audits (boxes and captions are drawn
    from the answer, so they must not be drawn either)."""
    return dataclasses.replace(prediction, output=None, details={})


def _with(view: AnswerView, **changes: Any) -> AnswerView:
    return AnswerView(**{**view.__dict__, **changes})


def _probs(details: dict[str, Any], *keys: str) -> list[float] | None:
    for key in keys:
        values = details.get(key)
        if isinstance(values, list) and values and all(isinstance(v, (int, float)) for v in values):
            return [float(v) for v in values]
    return None


def _classification_runner_ups(prediction: Prediction, labels: Sequence[str]) -> list[tuple[str, float]]:
    pairs: list[tuple[Any, float]] = []
    for entry in prediction.details.get("runner_ups") or []:
        if isinstance(entry, dict):
            pairs.append((entry.get("label", entry.get("index")), float(entry.get("prob", 0.0))))
        elif isinstance(entry, (list, tuple)) and len(entry) == 2:
            pairs.append((entry[0], float(entry[1])))
    if not pairs:
        probs = _probs(prediction.details, "probs") or []
        pairs = sorted(enumerate(probs), key=lambda p: -p[1])
    others = [(images.label_name(c, labels), p) for c, p in pairs if c != prediction.output]
    return others[:RUNNER_UPS_SHOWN]


def _text_runner_ups(details: dict[str, Any]) -> list[tuple[str, float]]:
    out = []
    for entry in details.get("runner_ups") or []:
        if isinstance(entry, dict):
            score = entry.get("relative_prob", entry.get("confidence", entry.get("prob", 0.0)))
            out.append((str(entry.get("text")), float(score)))
        elif isinstance(entry, (list, tuple)) and len(entry) == 2:
            out.append((str(entry[0]), float(entry[1])))
    return out[:RUNNER_UPS_SHOWN]


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

    return " ".join(f":{colour(p)}-badge[**{c if c.strip() else '␣'}** {p:.0%}]" for c, p in chars)


def render_answer(view: AnswerView) -> None:
    """The model's answer with its confidence (and per-character confidences): what the auditor
    needs before answering, kept short so the form stays in view."""
    import streamlit as st

    st.metric("Model's answer", view.answer, help="What the model would have published")
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
