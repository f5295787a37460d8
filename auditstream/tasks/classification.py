"""Classification: one label per input (the ``digits`` model).

| graph outputs | output | confidence | parts | details |
|---|---|---|---|---|
| ``probs`` [B, C], calibrated | label name (index if the card has no labels) | max prob | none: the answer is one piece | index, top-3 runner-ups, the full ``probs`` vector |

A row with a number outside [0, 1] (a graph exported without its softmax answers logits) is no
answer (:func:`~auditstream.tasks.base.answerable_rows`), as a non-finite row.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from auditstream.registry import ModelCard
from auditstream.tasks.base import Answer, Task, answerable_rows, indexed_answer_text, register, rounded
from auditstream.wire import TaskKind


def _label(card: ModelCard, index: int) -> Any:
    return card.labels[index] if index < len(card.labels) else index


class Classification(Task):
    kind = TaskKind.CLASSIFICATION
    output_names = ("probs",)

    def postprocess(self, card: ModelCard, outputs: dict[str, np.ndarray]) -> list[Answer | None]:
        probs = outputs["probs"]
        order = np.argsort(-probs, axis=1, kind="stable")
        answerable = answerable_rows(probs=probs)  # finite and in [0, 1]: logits are no answer
        answers: list[Answer | None] = []
        # Python floats and ints once per batch (tolist) instead of numpy scalars per element:
        # the same values (float32 -> float is exact), a third of the time per record.
        # Answerable up to PROB_TOLERANCE past 1; published in [0, 1] (base.probability), clipped
        # once per batch here: the same values, without two Python calls per class.
        for row, idx, ok in zip(np.clip(probs, 0.0, 1.0).tolist(), order.tolist(), answerable.tolist()):
            if not ok:
                answers.append(None)
                continue
            top = idx[0]
            runner_ups = [{"index": i, "label": _label(card, i), "prob": rounded(row[i])} for i in idx[1:4]]
            answers.append(Answer(_label(card, top), rounded(row[top]),
                                  details={"index": top, "runner_ups": runner_ups, "probs": [rounded(p) for p in row]}))
        return answers

    def answer_text(self, output: Any, labels: Sequence[str] = ()) -> str:
        return indexed_answer_text(output, labels)


TASK = register(Classification())
