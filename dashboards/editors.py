"""The rule that turns an auditor's edited answer into a verdict.

An editor (one per task kind, :mod:`dashboards.tasks`) starts from the model's answer (or empty,
in blind mode) and the auditor edits it in place: submitting it unchanged *accepts* the model's
answer, submitting a different valid answer *corrects* it. This is the postal keying flow — type
the ZIP, press Enter — and it means blind and open audits go through the same form.
``parse_answer`` validates what was typed and says what is wrong in words an auditor can act on;
"unchanged" is the task kind's one answer equality (:mod:`auditstream.tasks`), the same that
scores gold items and reviewer agreement.
"""

from __future__ import annotations

from typing import Any, Sequence

from auditstream import tasks
from auditstream.wire import TaskKind, VerdictKind
from dashboards import tasks as views
from store import records


def parse_answer(task: TaskKind | str, raw: Any, choices: Sequence[str] = (), as_label: bool = False) -> Any:
    """The auditor's raw editor value as a model output of this task kind.

    ``choices`` are the class / action names shown in the picker; the answer is the index, or
    the name with ``as_label`` (a classifier whose card has labels answers with the label name).
    Raises ``ValueError`` with a message for the auditor when the value is not a valid answer.
    """
    return views.lookup(task).parse_answer(raw, choices, as_label)


def same_answer(task: TaskKind | str, a: Any, b: Any, details: Any = None) -> bool:
    """Whether two outputs mean the same answer, by the task kind's answer equality at the
    parameters the prediction's ``details`` recorded (a detector's ``match_iou``)."""
    return tasks.rule_for(task, details=details).same_answer(a, b)


def verdict_for(task: TaskKind | str, model_output: Any, answer: Any, details: Any = None) -> tuple[VerdictKind, Any]:
    """The verdict an answer makes, judged at the prediction's recorded parameters as the store
    and the monitor judge it (:func:`store.records.verdict_for`)."""
    return records.verdict_for(tasks.rule_for(task, details=details), model_output, answer)
