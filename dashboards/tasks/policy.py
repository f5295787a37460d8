"""Policy items: the observation drawn as the environment would (CartPole's cart, LunarLander's
lander, or the frame itself), every action with its probability and the state's value, and an
action picker. The prediction's ``details``: ``action_probs`` (or ``probs``) over all actions,
``value``. Without the card's action names the picker offers at most
:data:`~dashboards.tasks.base.MAX_CHOICES` actions, however large an item's action index.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from PIL import Image

from auditstream import tasks
from auditstream.wire import ImageInput, ModelInput, Prediction, TaskKind
from dashboards import images
from dashboards.tasks.base import (
    MAX_CHOICES, RUNNER_UPS_SHOWN, AnswerView, TaskView, choice_editor_ui, choice_index, details_of, index_of, number,
    out_of_range_note, parse_choice, probs_of, register, with_changes,
)

# Default action names when a policy's model card carries no labels (gymnasium's meanings).
DEFAULT_ACTIONS = {
    4: ["push left", "push right"],  # CartPole: 4-dim observation
    8: ["do nothing", "fire left engine", "fire main engine", "fire right engine"],  # LunarLander
}


def action_labels(prediction: Prediction, value: ModelInput, labels: Sequence[str]) -> list[str]:
    """Names of a policy's actions: the card's labels, else gymnasium's for a known env, else
    "action i" for as many as the item's probabilities or answer say, at most :data:`MAX_CHOICES`."""
    if labels:  # the card knows the model's actions; an answer outside them is shown as such
        return list(labels)
    probs = probs_of(details_of(prediction), "action_probs", "probs")
    output = index_of(prediction.output)
    n = min(MAX_CHOICES, len(probs) if probs else (output + 1 if output is not None else 0))
    size = 0 if isinstance(value, ImageInput) else int(np.asarray(value).size)
    defaults = DEFAULT_ACTIONS.get(size, [])
    return defaults if len(defaults) >= n else [f"action {i}" for i in range(n)]


class PolicyView(TaskView):
    kind = TaskKind.POLICY

    def input_picture(self, prediction: Prediction, value: ModelInput, labels: Sequence[str]) -> Image.Image | None:
        if isinstance(value, ImageInput):
            return images.for_display(images.to_image(value))
        return images.policy_frame(value)

    def answer_view(self, prediction: Prediction, value: ModelInput, labels: Sequence[str]) -> AnswerView:
        names = action_labels(prediction, value, labels)
        probs = (probs_of(details_of(prediction), "action_probs", "probs") or [])[:MAX_CHOICES]
        actions = [
            {"action": names[i] if i < len(names) else f"action {i}", "index": i, "probability": float(p),
             "chosen": i == prediction.output}
            for i, p in enumerate(probs)
        ]
        ranked = sorted((a for a in actions if not a["chosen"]), key=lambda a: -a["probability"])
        value_estimate = number(details_of(prediction).get("value"))
        return with_changes(
            super().answer_view(prediction, value, labels),
            answer=tasks.lookup(self.kind).answer_text(prediction.output, names),
            actions=actions,
            runner_ups=[(a["action"], a["probability"]) for a in ranked[:RUNNER_UPS_SHOWN]],
            value=value_estimate,
        )

    def editor_ui(self, prediction: Prediction, value: ModelInput, labels: Sequence[str], blind: bool,
                  key: str) -> tuple[Any, Sequence[str]]:  # fmt: skip
        import streamlit as st

        choices = action_labels(prediction, value, labels)
        index = None if blind else choice_index(prediction.output, choices)
        note = None if blind else out_of_range_note(prediction.output, choices, "actions")
        if note:
            st.warning(note)
        probs = None if blind else probs_of(details_of(prediction), "action_probs")
        return choice_editor_ui("Action to take", choices, index, key, probs), choices

    def parse_answer(self, raw: Any, choices: Sequence[str] = (), as_label: bool = False) -> Any:
        return parse_choice(raw, choices, as_label, "actions")


VIEW = register(PolicyView())
