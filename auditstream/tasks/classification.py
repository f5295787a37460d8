"""Classification: one label per input (the ``digits`` model).

| graph outputs | output | confidence | parts | details |
|---|---|---|---|---|
| ``probs`` [B, C], calibrated | label name (index if the card has no labels) | max prob | none: the answer is one piece | index, top-3 runner-ups, the full ``probs`` vector |
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from auditstream.registry import ModelCard
from auditstream.tasks.base import Answer, Task, indexed_answer_text, register, rounded
from auditstream.wire import TaskKind


def _label(card: ModelCard, index: int) -> Any:
    return card.labels[index] if index < len(card.labels) else index


class Classification(Task):
    kind = TaskKind.CLASSIFICATION
    output_names = ("probs",)

    def postprocess(self, card: ModelCard, outputs: dict[str, np.ndarray]) -> list[Answer | None]:
        probs = outputs["probs"]
        order = np.argsort(-probs, axis=1, kind="stable")
        answers: list[Answer | None] = []
        for row, idx in zip(probs, order):
            if not np.isfinite(row).all():
                answers.append(None)
                continue
            top = int(idx[0])
            runner_ups = [{"index": int(i), "label": _label(card, int(i)), "prob": rounded(row[i])} for i in idx[1:4]]
            answers.append(Answer(_label(card, top), rounded(row[top]),
                                  details={"index": top, "runner_ups": runner_ups, "probs": [rounded(p) for p in row]}))
        return answers

    def answer_text(self, output: Any, labels: Sequence[str] = ()) -> str:
        return indexed_answer_text(output, labels)


TASK = register(Classification())
