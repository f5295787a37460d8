"""Sequence: a fixed-length string read from one input (the ``zip-reader``: 5 digits).

| graph outputs | output | confidence | parts | details |
|---|---|---|---|---|
| ``char_probs`` [B, L, C] | the string | min over characters of the max prob | each character | per-character confidences, runner-up strings |

One unreadable character makes the whole string unreadable, so every character gates the item
(the default of :meth:`~auditstream.tasks.base.Task.gating_confidences`).

The answer has one character per position, so each label of the card (the alphabet) must be
exactly one character (:meth:`Sequence.check_card`): ``"10"`` or ``""`` would make a string of
another length, with parts and runner-ups at the wrong positions. A class past the alphabet (a
dynamic class axis) is its index when that is one digit; a row whose best or second choice is a
class with no character, or with a probability outside [0, 1], is no answer (``None``).
"""

from __future__ import annotations

import numpy as np

from auditstream.registry import ModelCard
from auditstream.tasks.base import Answer, Part, Task, answerable_rows, probability, register, rounded
from auditstream.wire import TaskKind

RUNNER_UPS = 3


class Sequence(Task):
    kind = TaskKind.SEQUENCE
    output_names = ("char_probs",)

    def check_card(self, card: ModelCard) -> None:
        super().check_card(card)
        spec = next(o for o in card.outputs if o.name == "char_probs")
        classes = spec.shape[-1] if spec.shape else None
        if card.labels and isinstance(classes, int) and len(card.labels) < classes:
            raise ValueError(f"sequence model {card.name}: its labels (the alphabet) have {len(card.labels)} "
                             f"characters but char_probs has {classes} classes; the card and the model disagree")
        if isinstance(classes, int) and classes < 2:
            raise ValueError(f"sequence model {card.name}: char_probs has {classes} class per position; a reader "
                             "chooses among at least 2")
        # The answer is one character per position: a longer or empty label shifts every later one.
        for i, label in enumerate(card.labels):
            if len(label) != 1:
                raise ValueError(f"sequence model {card.name}: labels[{i}] = {label[:20]!r} is "
                                 f"{len(label)} characters; each label of a sequence model (its alphabet) must be "
                                 "exactly one character")

    def postprocess(self, card: ModelCard, outputs: dict[str, np.ndarray]) -> list[Answer | None]:
        char_probs = outputs["char_probs"]
        if char_probs.ndim != 3 or char_probs.shape[1] < 1 or char_probs.shape[2] < 2:  # no position, or no 2nd choice
            return [None] * len(char_probs)
        answers: list[Answer | None] = []
        # A dynamic class axis is not checked at start-up: a class past the card's alphabet is its
        # index, while that is one character (one digit); past that, the class has no character.
        alphabet: list[str | None] = list(card.labels)
        alphabet += [str(i) if i < 10 else None for i in range(len(alphabet), char_probs.shape[-1])]
        unnamed = None in alphabet
        for row, ok in zip(char_probs, answerable_rows(probs=char_probs).tolist()):  # [L, C]
            if not ok:
                answers.append(None)
                continue
            order = np.argsort(-row, axis=1, kind="stable")
            best, second = order[:, 0], order[:, 1]
            if unnamed and any(alphabet[i] is None for i in (*best, *second)):
                answers.append(None)  # a class the card has no character for
                continue
            conf = np.clip(row[np.arange(len(row)), best], 0.0, 1.0)  # answerable up to PROB_TOLERANCE past 1
            text = "".join(str(alphabet[i]) for i in best)
            # Runner-ups: swap in the second choice at the least sure positions, one at a time.
            runner_ups = []
            for pos in np.argsort(conf, kind="stable")[:RUNNER_UPS]:
                alt = list(text)
                alt[pos] = str(alphabet[second[pos]])
                ratio = row[pos, second[pos]] / max(conf[pos], 1e-12)
                runner_ups.append({"text": "".join(alt), "position": int(pos), "relative_prob": rounded(ratio)})
            char_confidences = [probability(c) for c in conf]
            parts = tuple(Part(i, ch, c) for i, (ch, c) in enumerate(zip(text, char_confidences)))
            answers.append(Answer(text, rounded(conf.min()), parts,
                                  {"char_confidences": char_confidences, "runner_ups": runner_ups}))
        return answers


TASK = register(Sequence())
