"""Model outputs → (output, confidence, details) per task kind, as the model card declares it.

| task | graph outputs | output | confidence | details |
|---|---|---|---|---|
| classification | ``probs`` [B, C], calibrated | label name (index if no labels) | max prob | index, top-3 runner-ups |
| sequence | ``char_probs`` [B, L, C] | string (e.g. a 5-digit ZIP) | min over characters of the max prob | per-character confidences, runner-up strings |
| policy | ``action_probs`` [B, A], ``value`` [B] | greedy action index | by ``triage.confidence_kind`` | full probability vector, value |

A policy's confidence is chosen by its card's ``triage.confidence_kind`` (:data:`POLICY_CONFIDENCE`):
``max_prob`` (default), ``prob_gap`` (best minus second-best probability) or ``entropy``
(``1 - H(p) / log A``: 1 for a certain policy, 0 for a uniform one), so uncertainty routing is
``monitor.triage`` comparing that number with the card's threshold. The action that acts comes
from :func:`select_action`: a draw from the probabilities (``sample``, the default: the logged
probabilities are then the true behaviour propensities) or the argmax (``greedy``), by the card's
``extra.action_selection``.

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
from monitor.triage import hash_uniform

DECIMALS = 6
SUPPORTED_TASKS = ("classification", "sequence", "policy")
OUTPUT_NAMES = {"classification": ("probs",), "sequence": ("char_probs",), "policy": ("action_probs", "value")}
POLICY_CONFIDENCE = ("max_prob", "prob_gap", "entropy")
ACTION_SELECTION = ("sample", "greedy")


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
    if card.task == "policy":
        if card.triage.confidence_kind not in POLICY_CONFIDENCE:
            raise ValueError(f"policy {card.name}: triage.confidence_kind {card.triage.confidence_kind!r} not one of "
                             f"{POLICY_CONFIDENCE}")
        if action_selection(card) not in ACTION_SELECTION:
            raise ValueError(f"policy {card.name}: extra.action_selection {action_selection(card)!r} not one of "
                             f"{ACTION_SELECTION}")


def action_selection(card: ModelCard) -> str:
    return str(card.extra.get("action_selection", "sample"))


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


def policy_confidence(probs: np.ndarray, kind: str = "max_prob") -> float:
    """How sure a policy is of its action, in [0, 1] (see the module docstring)."""
    if kind == "max_prob":
        return float(probs.max())
    if kind == "prob_gap":
        top = np.sort(probs)[::-1]
        return float(top[0] - (top[1] if len(top) > 1 else 0.0))
    if kind == "entropy":
        if len(probs) < 2:
            return 1.0
        p = probs[probs > 0]
        return float(1.0 - (-(p * np.log(p)).sum()) / np.log(len(probs)))
    raise ValueError(f"confidence kind {kind!r} not one of {POLICY_CONFIDENCE}")


def policy(card: ModelCard, action_probs: np.ndarray, value: np.ndarray) -> list[Answer | None]:
    value = value.reshape(len(action_probs), -1)[:, 0]
    answers: list[Answer | None] = []
    for row, v in zip(action_probs, value):
        if not (np.isfinite(row).all() and np.isfinite(v)):
            answers.append(None)
            continue
        action = int(np.argmax(row))
        confidence = policy_confidence(row.astype(np.float64), card.triage.confidence_kind)
        answers.append(Answer(action, _r(confidence), {"action_probs": [_r(p) for p in row], "value": _r(v)}))
    return answers


def select_action(action_probs: list[float], request_id: str, mode: str = "sample") -> tuple[int, list[float]]:
    """(action to apply, the propensities it was drawn with).

    ``sample``: the inverse CDF of the probabilities at :func:`~monitor.triage.hash_uniform` of
    the request id (salt ``action``), so a redelivered request picks the same action and the
    propensities are the probabilities themselves. ``greedy``: the argmax, propensities one-hot
    (what a deterministic behaviour policy really did; off-policy evaluation needs the truth).
    """
    probs = np.asarray(action_probs, dtype=np.float64)
    if mode == "greedy":
        action = int(np.argmax(probs))
        return action, [1.0 if a == action else 0.0 for a in range(len(probs))]
    if mode != "sample":
        raise ValueError(f"action selection {mode!r} not one of {ACTION_SELECTION}")
    cdf = np.cumsum(probs / probs.sum())
    action = int(min(np.searchsorted(cdf, hash_uniform(request_id, "action"), side="right"), len(probs) - 1))
    return action, [float(p) for p in action_probs]


def postprocess(card: ModelCard, outputs: dict[str, np.ndarray]) -> list[Answer | None]:
    """One answer per batch row (None where the model produced non-finite numbers)."""
    if card.task == "classification":
        return classification(card, outputs["probs"])
    if card.task == "sequence":
        return sequence(card, outputs["char_probs"])
    if card.task == "policy":
        return policy(card, outputs["action_probs"], outputs["value"])
    raise ValueError(f"task {card.task!r} not supported; supported: {SUPPORTED_TASKS}")
