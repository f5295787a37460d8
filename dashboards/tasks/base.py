"""The dashboard's task-kind contract: how one kind's audit item is shown and edited.

A :class:`TaskView` draws the input as a person wants to see it (:meth:`TaskView.input_picture`),
says what the model answered with its confidence and alternatives (:meth:`TaskView.answer_view`),
offers the answer editor (:meth:`TaskView.editor_ui`) and turns what the auditor entered into an
answer of the kind (:meth:`TaskView.parse_answer`, a ``ValueError`` in words an auditor can act
on). Answer equality and text are not here: they are the kind's pure part
(:mod:`auditstream.tasks`), shared with gold scoring and agreement in the store.

Pure except ``editor_ui``, which imports Streamlit when called. The prediction's ``details`` are
read tolerantly: each model family reports its partial outputs under its own keys.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

from PIL import Image

from auditstream import tasks
from auditstream.tasks.base import KindRegistry
from auditstream.wire import ModelInput, Prediction, TaskKind
from dashboards import images
from dashboards.markup import md_text

RUNNER_UPS_SHOWN = 4
# Most choices a class or action picker offers when the model card does not say how many there
# are: an item's own index (a hostile or broken one says 20,000,000) must not size the widget.
MAX_CHOICES = 1000


@dataclass(frozen=True)
class AnswerView:
    """What the right-hand panel shows about the model's answer."""

    answer: str
    confidence: float
    runner_ups: list[tuple[str, float]] = field(default_factory=list)
    char_confidences: list[tuple[str, float]] = field(default_factory=list)
    actions: list[dict[str, Any]] = field(default_factory=list)  # policy: every action, chosen marked
    value: float | None = None  # policy: the critic's estimate of the state's value


class TaskView:
    """The contract; subclasses set ``kind`` and override what differs."""

    kind: ClassVar[TaskKind]
    # Whether a QC sample of this kind may be audited blind (``--blind-qc``). A kind whose answers
    # an auditor cannot reproduce without seeing them (a caption in the model's fixed grammar and
    # clause order) sets it False: blind, every paraphrase would count as a model error.
    supports_blind: ClassVar[bool] = True

    def input_picture(self, prediction: Prediction, value: ModelInput, labels: Sequence[str]) -> Image.Image | None:
        """The input as a picture, or ``None`` when it has no visual form."""
        return plain_picture(value)

    def answer_view(self, prediction: Prediction, value: ModelInput, labels: Sequence[str]) -> AnswerView:
        return AnswerView(tasks.lookup(self.kind).answer_text(prediction.output, labels), float(prediction.confidence))

    def editor_ui(self, prediction: Prediction, value: ModelInput, labels: Sequence[str], blind: bool,
                  key: str) -> tuple[Any, Sequence[str]]:  # fmt: skip
        """The answer editor, pre-filled with the model's answer unless ``blind``.
        Returns (raw editor value, the choices of a picker)."""
        import streamlit as st

        st.warning(f"No editor for task kind {self.kind.value!r}: accept, reject or skip.")
        return prediction.output, ()

    def parse_answer(self, raw: Any, choices: Sequence[str] = (), as_label: bool = False) -> Any:
        """The auditor's raw editor value as an answer of this kind (``ValueError`` if it is not one)."""
        raise ValueError(f"no editor for task kind {self.kind.value!r}")


VIEWS = KindRegistry[TaskView]("view")


def register(view: TaskView) -> TaskView:
    return VIEWS.register(view.kind, view)


def lookup(kind: TaskKind | str) -> TaskView:
    """The kind's view; an unknown kind raises :class:`~auditstream.errors.UnknownTaskKind`."""
    return VIEWS.lookup(kind)


# --------------------------------------------------------------------------------------------
# helpers the kinds share


def plain_picture(value: ModelInput) -> Image.Image | None:
    try:
        picture = images.to_image(value)
    except images.NotAPicture:  # a tensor without a picture form; an undecodable image raises on
        return None
    return images.with_border(images.for_display(picture))


def with_changes(view: AnswerView, **changes: Any) -> AnswerView:
    return dataclasses.replace(view, **changes)


def details_of(prediction: Prediction) -> dict[str, Any]:
    """The prediction's details, or ``{}`` when they are not a JSON object (a malformed item)."""
    return prediction.details if isinstance(prediction.details, dict) else {}


def number(value: Any) -> float | None:
    """``value`` as a finite float, or None (bools, text, NaN and infinities are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        result = float(value)
    except OverflowError:  # an int too large for a float
        return None
    return result if math.isfinite(result) else None


def index_of(value: Any) -> int | None:
    """``value`` as a class or action index (a non-negative int, not a bool), or None."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def probs_of(details: dict[str, Any], *keys: str) -> list[float] | None:
    """The first of ``keys`` in ``details`` that holds a list of finite numbers."""
    details = details if isinstance(details, dict) else {}
    for key in keys:
        values = details.get(key)
        if isinstance(values, list) and values:
            numbers = [number(v) for v in values]
            if all(n is not None for n in numbers):
                return numbers  # type: ignore[return-value]
    return None


def text_runner_ups(details: dict[str, Any]) -> list[tuple[str, float]]:
    """Runner-up strings (``{"text", "relative_prob"}`` entries or ``[text, score]`` pairs)."""
    out = []
    entries = details.get("runner_ups") if isinstance(details, dict) else None
    for entry in entries if isinstance(entries, list) else []:  # malformed entries are left out
        if isinstance(entry, dict):
            text, score = entry.get("text"), number(entry.get("relative_prob", entry.get("confidence", entry.get("prob", 0.0))))
        elif isinstance(entry, (list, tuple)) and len(entry) == 2:
            text, score = entry[0], number(entry[1])
        else:
            continue
        if isinstance(text, (str, int)) and not isinstance(text, bool) and score is not None:
            out.append((str(text)[:200], score))
        if len(out) == RUNNER_UPS_SHOWN:
            break
    return out


def char_confidences(text: str, details: dict[str, Any]) -> list[tuple[str, float]]:
    """(character, confidence) pairs when the details have one confidence per character."""
    confs = probs_of(details, "char_confidences") or []
    return list(zip(text, confs)) if len(confs) == len(text) else []


def text_answer_view(view: AnswerView, prediction: Prediction) -> AnswerView:
    """A text answer's panel: its runner-up texts and, where given, per-character confidences."""
    text = str(prediction.output or "")
    return with_changes(view, runner_ups=text_runner_ups(details_of(prediction)),
                        char_confidences=char_confidences(text, details_of(prediction)))


def choice_index(output: Any, choices: Sequence[str]) -> int | None:
    """Where a model output (an index or a label name) sits among the picker's choices."""
    if isinstance(output, int) and not isinstance(output, bool):
        return output if 0 <= output < len(choices) else None
    if not isinstance(output, str):  # a list or dict is no choice (and may not even be hashable)
        return None
    return list(choices).index(output) if output in choices else None


def out_of_range_note(output: Any, choices: Sequence[str], noun: str) -> str | None:
    """What to tell the auditor when the model's answer is none of the picker's choices."""
    if output is None or choice_index(output, choices) is not None:
        return None
    shown = md_text(repr(output) if len(repr(output)) <= 60 else repr(output)[:57] + "...")  # drawn as markdown
    return (f"The model's answer {shown} is not one of the {len(choices)} {noun} offered here (0..{len(choices) - 1}); "
            f"the item may be malformed. Pick the right one, or reject the item if none fits.")


def parse_choice(raw: Any, choices: Sequence[str], as_label: bool, noun: str) -> Any:
    """A picked choice as an index (or its name with ``as_label``); ``noun``: what is picked."""
    if raw is None:
        raise ValueError(f"pick one of the {len(choices)} {noun}")
    if isinstance(raw, int) and not isinstance(raw, bool):
        index = raw
    elif raw in choices:
        index = list(choices).index(raw)
    else:
        raise ValueError(f"{raw!r} is not one of {list(choices)}")
    if not 0 <= index < len(choices):
        raise ValueError(f"choice {index} is outside 0..{len(choices) - 1}")
    return choices[index] if as_label else index


def choice_editor_ui(label: str, choices: Sequence[str], index: int | None, key: str,
                     probs: Any = None) -> int | None:  # fmt: skip
    """A radio (few choices, with probabilities as captions when given) or a select box."""
    import streamlit as st

    widget = st.radio if len(choices) <= 12 else st.selectbox
    kwargs: dict[str, Any] = {"horizontal": True} if widget is st.radio else {}
    if widget is st.radio and isinstance(probs, list) and len(probs) == len(choices):
        kwargs["captions"] = [f"p = {p:.2f}" for p in probs]
    return widget(label, list(range(len(choices))), index=index,
                  format_func=lambda i: choices[i] if choices[i] == str(i) else f"{i}: {choices[i]}",
                  key=key, help="Arrow keys move the choice; Tab then Enter submits.", **kwargs)  # fmt: skip
