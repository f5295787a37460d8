"""Caption items: the scene with the caption written above it, the caption with its doubtful words
marked, and the caption as editable text.

The prediction's ``details`` (auditstream/tasks/caption.py): ``tokens`` (the caption's words and
marks, in order) and ``token_confidences`` (one probability per token), and ``threshold`` (the
one that routed the item). A word is *doubtful* when its probability is below that threshold;
a deferred caption whose words each clear it (a joint probability below the threshold can be
made of sure words) has its least sure word marked, since that is where its doubt is largest.

The verdict is the corrected caption. Answer equality is the kind's one rule
(:func:`auditstream.tasks.caption.normalize_caption`), so re-spacing or re-casing the model's
caption accepts it. Captions are never audited blind (``CaptionView.supports_blind``): the
auditor edits the model's caption, since a caption written from scratch almost never matches its
fixed grammar word for word. With a vocabulary on the card (its ``labels``), a word outside it is refused:
a verdict becomes a training caption, and the model can only learn the words it has.
"""

from __future__ import annotations

from typing import Any, Sequence

from PIL import Image

from auditstream.tasks.caption import DEFAULT_SPECIAL_TOKENS, normalize_caption
from auditstream.wire import ModelInput, Prediction, Route, TaskKind
from dashboards import images
from dashboards.markup import md_text
from dashboards.tasks.base import AnswerView, TaskView, details_of, number, plain_picture, register, with_changes

MAX_CAPTION_CHARS = 500
MARKS = (",", ";", ":", ".", "!", "?")


def word_confidences(prediction: Prediction) -> list[tuple[str, float]]:
    """(token, probability) pairs of the model's caption, when the details carry them."""
    details = details_of(prediction)
    tokens, confidences = details.get("tokens"), details.get("token_confidences")
    if not isinstance(tokens, list) or not isinstance(confidences, list) or len(tokens) != len(confidences):
        return []
    probs = [number(c) for c in confidences]
    if any(p is None for p in probs) or not all(isinstance(t, str) for t in tokens):
        return []  # malformed: the caption is shown without its marks
    return list(zip(tokens, probs))  # type: ignore[arg-type]


def doubtful_words(prediction: Prediction) -> list[int]:
    """Indices of the tokens to mark (see the module docstring)."""
    pairs = word_confidences(prediction)
    threshold = number(details_of(prediction).get("threshold"))
    if not pairs or threshold is None:
        return []
    doubtful = [i for i, (_, p) in enumerate(pairs) if p < threshold]
    if not doubtful and prediction.route is Route.HUMAN:
        doubtful = [min(range(len(pairs)), key=lambda i: pairs[i][1])]
    return doubtful


def marked_caption(prediction: Prediction) -> str:
    """The caption as Streamlit markdown, doubtful words on a red background with their probability
    (the model's words escaped: dashboards/markup.py)."""
    pairs, doubtful = word_confidences(prediction), set(doubtful_words(prediction))
    if not pairs:
        return md_text(prediction.output or "")
    text = ""
    for i, (token, p) in enumerate(pairs):
        shown = md_text(token) or "␣"
        word = f":red-background[**{shown}** {p:.0%}]" if i in doubtful else shown
        text += word if token in MARKS or not text else f" {word}"  # a mark sticks to the word before it
    return text


def vocabulary_errors(text: str, vocabulary: Sequence[str]) -> list[str]:
    """The words of ``text`` the model's vocabulary lacks (none without a vocabulary)."""
    if not vocabulary:
        return []
    known = set(vocabulary) - set(DEFAULT_SPECIAL_TOKENS)
    spaced = text
    for mark in MARKS:
        spaced = spaced.replace(mark, f" {mark} ")
    return sorted({w for w in spaced.split() if w not in known})


class CaptionView(TaskView):
    kind = TaskKind.CAPTION
    # Never blind: the model writes in a fixed grammar and clause order the auditor cannot see,
    # and only case and spacing are ignored when captions are compared, so nearly every caption
    # written blind would "correct" a right one (docs/dashboard.md, "Blind mode").
    supports_blind = False

    def input_picture(self, prediction: Prediction, value: ModelInput, labels: Sequence[str]) -> Image.Image | None:
        if prediction.output is None:  # blind: the caption must not be shown
            return plain_picture(value)
        try:
            picture = images.to_image(value)
        except images.NotAPicture:  # an undecodable image raises: the workbench says what is wrong
            return None
        return images.caption_over(picture, str(prediction.output))

    def answer_view(self, prediction: Prediction, value: ModelInput, labels: Sequence[str]) -> AnswerView:
        return with_changes(super().answer_view(prediction, value, labels), char_confidences=[])

    def editor_ui(self, prediction: Prediction, value: ModelInput, labels: Sequence[str], blind: bool,
                  key: str) -> tuple[Any, Sequence[str]]:  # fmt: skip
        import streamlit as st

        if not blind:  # the marks would tell the answer
            doubtful = doubtful_words(prediction)
            st.markdown("**Doubtful words** (red, with the model's probability): "
                        + ("none" if not doubtful else f"{len(doubtful)}"), help="Words below the threshold that "
                        "routed this item; a deferred caption without one has its least sure word marked.")
            st.markdown(marked_caption(prediction))
        start = None if blind else prediction.output
        raw = st.text_area("Caption", value="" if start is None else str(start), key=key, height=110,
                           help="Write the caption the scene should have, in the model's words; Ctrl+Enter "
                                "submits.")  # fmt: skip
        return raw, labels

    def parse_answer(self, raw: Any, choices: Sequence[str] = (), as_label: bool = False) -> Any:
        text = normalize_caption(str(raw or ""))
        if not text:
            raise ValueError("write the caption the image should have (or reject the item)")
        if len(text) > MAX_CAPTION_CHARS:
            raise ValueError(f"a caption of {len(text)} characters is longer than {MAX_CAPTION_CHARS}")
        unknown = vocabulary_errors(text, choices)
        if unknown:
            known = sorted(set(choices) - set(DEFAULT_SPECIAL_TOKENS))
            raise ValueError(f"the model does not know the word{'s' if len(unknown) > 1 else ''} "
                             f"{', '.join(repr(w) for w in unknown)}; use its words: {' '.join(known)}")
        return text


VIEW = register(CaptionView())
