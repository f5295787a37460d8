"""Sequence: a fixed-length string read from one input (the ``zip-reader``: 5 digits).

| graph outputs | output | confidence | parts | details |
|---|---|---|---|---|
| ``char_probs`` [B, L, C] | the string | min over characters of the max prob | each character | per-character confidences, runner-up strings |

One unreadable character makes the whole string unreadable, so every character gates the item
(the default of :meth:`~auditstream.tasks.base.Task.gating_confidences`).
"""

from __future__ import annotations

import numpy as np

from auditstream.registry import ModelCard
from auditstream.tasks.base import Answer, Part, Task, register, rounded
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

    def postprocess(self, card: ModelCard, outputs: dict[str, np.ndarray]) -> list[Answer | None]:
        char_probs = outputs["char_probs"]
        answers: list[Answer | None] = []
        # A dynamic class axis is not checked at start-up: a class past the card's alphabet is its index.
        alphabet = card.labels or []
        alphabet = alphabet + [str(i) for i in range(len(alphabet), char_probs.shape[-1])]
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
            for pos in np.argsort(conf, kind="stable")[:RUNNER_UPS]:
                alt = list(text)
                alt[pos] = str(alphabet[second[pos]])
                ratio = row[pos, second[pos]] / max(conf[pos], 1e-12)
                runner_ups.append({"text": "".join(alt), "position": int(pos), "relative_prob": rounded(ratio)})
            char_confidences = [rounded(c) for c in conf]
            parts = tuple(Part(i, ch, c) for i, (ch, c) in enumerate(zip(text, char_confidences)))
            answers.append(Answer(text, rounded(conf.min()), parts,
                                  {"char_confidences": char_confidences, "runner_ups": runner_ups}))
        return answers


TASK = register(Sequence())
