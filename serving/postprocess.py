"""Model outputs → (output, confidence, details) per task kind, as the model card declares it.

| task | graph outputs | output | confidence | details |
|---|---|---|---|---|
| classification | ``probs`` [B, C], calibrated | label name (index if no labels) | max prob | index, top-3 runner-ups |
| sequence | ``char_probs`` [B, L, C] | string (e.g. a 5-digit ZIP) | min over characters of the max prob | per-character confidences, runner-up strings |
| policy | ``action_probs`` [B, A], ``value`` [B] | action index | max prob | full probability vector, value |

Numbers are rounded to 6 decimals: a redelivered request is computed in another batch, and
rounding keeps its prediction record byte-identical to the first in all but pathological cases.
A row with a non-finite output is reported as ``None`` (its record goes to the dead-letter topic
with reason ``inference_failed``) rather than aborting the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from auditstream.registry import ModelCard

DECIMALS = 6
SUPPORTED_TASKS = ("classification", "sequence", "policy")
OUTPUT_NAMES = {"classification": ("probs",), "sequence": ("char_probs",), "policy": ("action_probs", "value")}


@dataclass(frozen=True)
class Answer:
    output: Any
    confidence: float
    details: dict[str, Any] = field(default_factory=dict)


def _r(x: float) -> float:
    return round(float(x), DECIMALS)


def _label(card: ModelCard, index: int) -> Any:
    return card.labels[index] if index < len(card.labels) else index


def check_card(card: ModelCard) -> None:
    """Refuse at start-up a card whose task or outputs this module cannot interpret."""
    if card.task not in SUPPORTED_TASKS:
        raise ValueError(f"task {card.task!r} of model {card.name} is not served yet; supported: {SUPPORTED_TASKS}")
    have = {o.name for o in card.outputs}
    missing = [n for n in OUTPUT_NAMES[card.task] if n not in have]
    if missing:
        raise ValueError(f"model {card.name} ({card.task}) lacks graph outputs {missing}; card lists {sorted(have)}")


def classification(card: ModelCard, probs: np.ndarray) -> list[Answer | None]:
    order = np.argsort(-probs, axis=1, kind="stable")
    answers: list[Answer | None] = []
    for row, idx in zip(probs, order):
        if not np.isfinite(row).all():
            answers.append(None)
            continue
        top = int(idx[0])
        runner_ups = [{"index": int(i), "label": _label(card, int(i)), "prob": _r(row[i])} for i in idx[1:4]]
        answers.append(Answer(_label(card, top), _r(row[top]), {"index": top, "runner_ups": runner_ups}))
    return answers


def sequence(card: ModelCard, char_probs: np.ndarray, n_runner_ups: int = 3) -> list[Answer | None]:
    answers: list[Answer | None] = []
    alphabet = card.labels or [str(i) for i in range(char_probs.shape[-1])]
    for row in char_probs:  # [L, C]
        if not np.isfinite(row).all():
            answers.append(None)
            continue
        order = np.argsort(-row, axis=1, kind="stable")
        best, second = order[:, 0], order[:, 1]
        conf = row[np.arange(len(row)), best]
        text = "".join(str(alphabet[i]) for i in best)
        # Runner-ups: swap in the second choice at the least sure positions, one at a time.
        runner_ups = []
        for pos in np.argsort(conf, kind="stable")[:n_runner_ups]:
            alt = list(text)
            alt[pos] = str(alphabet[second[pos]])
            ratio = row[pos, second[pos]] / max(conf[pos], 1e-12)
            runner_ups.append({"text": "".join(alt), "position": int(pos), "relative_prob": _r(ratio)})
        answers.append(Answer(text, _r(conf.min()), {"char_confidences": [_r(c) for c in conf], "runner_ups": runner_ups}))
    return answers


def policy(card: ModelCard, action_probs: np.ndarray, value: np.ndarray) -> list[Answer | None]:
    value = value.reshape(len(action_probs), -1)[:, 0]
    answers: list[Answer | None] = []
    for row, v in zip(action_probs, value):
        if not (np.isfinite(row).all() and np.isfinite(v)):
            answers.append(None)
            continue
        action = int(np.argmax(row))
        answers.append(Answer(action, _r(row[action]), {"action_probs": [_r(p) for p in row], "value": _r(v)}))
    return answers


def postprocess(card: ModelCard, outputs: dict[str, np.ndarray]) -> list[Answer | None]:
    """One answer per batch row (None where the model produced non-finite numbers)."""
    if card.task == "classification":
        return classification(card, outputs["probs"])
    if card.task == "sequence":
        return sequence(card, outputs["char_probs"])
    if card.task == "policy":
        return policy(card, outputs["action_probs"], outputs["value"])
    raise ValueError(f"task {card.task!r} not supported; supported: {SUPPORTED_TASKS}")
