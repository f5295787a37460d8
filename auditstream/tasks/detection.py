"""Detection: boxes with labels on one image (digits on a parcel label).

An answer is a list of ``{"box": [x0, y0, x1, y1], "label", "score"}``; each box is a part.
Two answers are the same when they have the same boxes by label and position (to a tenth of a
pixel), whatever the order and the scores. Serving a detector is the detection family's work
(its graph outputs, peak extraction and per-box triage); until then a detection card is valid
and the serving consumer refuses it at start-up.
"""

from __future__ import annotations

from typing import Any, Sequence

from auditstream.tasks.base import Task, canonical_json, label_name, register
from auditstream.wire import TaskKind


def boxes(output: Any) -> list[dict[str, Any]]:
    """The well-formed boxes of an answer (anything else in the list is ignored)."""
    return [d for d in output if isinstance(d, dict)] if isinstance(output, list) else []


class Detection(Task):
    kind = TaskKind.DETECTION
    served = False

    def answer_key(self, output: Any) -> str:
        if output is None:
            return canonical_json(None)
        key = sorted((canonical_json(d.get("label")), *(round(float(v), 1) for v in d.get("box", [])))
                     for d in boxes(output))
        return canonical_json(key)

    def answer_text(self, output: Any, labels: Sequence[str] = ()) -> str:
        """``"2 boxes: 3, 7"``."""
        if not isinstance(output, list):
            return super().answer_text(output, labels)
        names = ", ".join(label_name(d.get("label"), labels) for d in boxes(output))
        return f"{len(output)} box{'es' if len(output) != 1 else ''}" + (f": {names}" if names else "")


TASK = register(Detection())
