"""The auditor's answer editors, one per task kind, and the rule that turns an answer into a
verdict.

An editor starts from the model's answer (or empty, in blind mode) and the auditor edits it in
place: submitting it unchanged *accepts* the model's answer, submitting a different valid answer
*corrects* it. This is the postal keying flow — type the ZIP, press Enter — and it means blind and
open audits go through the same form. ``parse_answer`` validates what was typed and says what is
wrong in words an auditor can act on.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from auditstream.wire import VerdictKind
from monitor.store.records import dumps

ZIP_PATTERN = re.compile(r"^[0-9]{5}$")
MAX_CAPTION_CHARS = 500
DETECTION_COLUMNS = ("label", "score", "x0", "y0", "x1", "y1")


def parse_answer(task: str, raw: Any, choices: Sequence[str] = (), as_label: bool = False) -> Any:
    """The auditor's raw editor value as a model output of this task kind.

    ``choices`` are the class / action names shown in the picker; the answer is the index, or
    the name with ``as_label`` (a classifier whose card has labels answers with the label name).
    Raises ``ValueError`` with a message for the auditor when the value is not a valid answer.
    """
    if task == "sequence":
        text = "" if raw is None else str(raw).strip().replace(" ", "")
        if not ZIP_PATTERN.match(text):
            raise ValueError(f"a ZIP code is exactly 5 digits; {text!r} has {len(text)} characters"
                             + ("" if text.isdigit() or not text else " and not only digits"))
        return text
    if task in ("classification", "policy"):
        if raw is None:
            raise ValueError(f"pick one of the {len(choices)} {'classes' if task == 'classification' else 'actions'}")
        if isinstance(raw, int) and not isinstance(raw, bool):
            index = raw
        elif raw in choices:
            index = list(choices).index(raw)
        else:
            raise ValueError(f"{raw!r} is not one of {list(choices)}")
        if not 0 <= index < len(choices):
            raise ValueError(f"choice {index} is outside 0..{len(choices) - 1}")
        return choices[index] if as_label else index
    if task == "caption":
        text = " ".join(str(raw or "").split())
        if not text:
            raise ValueError("write the caption the image should have (or reject the item)")
        if len(text) > MAX_CAPTION_CHARS:
            raise ValueError(f"a caption of {len(text)} characters is longer than {MAX_CAPTION_CHARS}")
        return text
    if task == "detection":
        return _parse_boxes(raw, choices)
    raise ValueError(f"no editor for task kind {task!r}")


def _parse_boxes(rows: Any, labels: Sequence[str]) -> list[dict[str, Any]]:
    """Rows of the box table (dicts with label, score, x0..y1) as a detection output."""
    out = []
    for i, row in enumerate(rows or []):
        if all(row.get(c) in (None, "") for c in DETECTION_COLUMNS):
            continue  # an empty row the table editor added
        try:
            box = [float(row[c]) for c in ("x0", "y0", "x1", "y1")]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"box {i + 1}: x0, y0, x1, y1 must all be numbers, got {row}") from None
        if not (box[0] < box[2] and box[1] < box[3]):
            raise ValueError(f"box {i + 1}: need x0 < x1 and y0 < y1, got {box}")
        label = row.get("label")
        if labels and label in labels:
            label = list(labels).index(label)
        elif isinstance(label, str) and label.strip().lstrip("-").isdigit():
            label = int(label)
        if label in (None, ""):
            raise ValueError(f"box {i + 1} needs a label")
        score = row.get("score")
        out.append({"box": box, "label": label, "score": 1.0 if score in (None, "") else float(score)})
    return out


def boxes_as_rows(output: Any, labels: Sequence[str] = ()) -> list[dict[str, Any]]:
    """A detection output as rows of the box table editor (labels by name where the card has them)."""
    rows = []
    for det in output if isinstance(output, list) else []:
        if not isinstance(det, dict) or len(det.get("box", [])) != 4:
            continue
        label = det.get("label")
        if isinstance(label, int) and 0 <= label < len(labels):
            label = labels[label]
        x0, y0, x1, y1 = (float(v) for v in det["box"])
        rows.append({"label": str(label), "score": float(det.get("score", 1.0)), "x0": x0, "y0": y0, "x1": x1, "y1": y1})
    return rows


def choice_index(output: Any, choices: Sequence[str]) -> int | None:
    """Where a model output (an index or a label name) sits among the picker's choices."""
    if isinstance(output, int) and not isinstance(output, bool):
        return output if 0 <= output < len(choices) else None
    return list(choices).index(output) if output in choices else None


def same_answer(task: str, a: Any, b: Any) -> bool:
    """Whether two outputs mean the same answer (boxes compared by label and position only)."""
    if task == "detection":
        def key(output: Any) -> list[Any]:
            return sorted(
                (dumps(d.get("label")), *(round(float(v), 1) for v in d.get("box", [])))
                for d in output or [] if isinstance(d, dict)
            )
        return key(a) == key(b)
    return dumps(a) == dumps(b)


def verdict_for(task: str, model_output: Any, answer: Any) -> tuple[VerdictKind, Any]:
    """The verdict an answer makes: accept when it equals the model's, else correct with it."""
    if same_answer(task, model_output, answer):
        return VerdictKind.ACCEPT, None
    return VerdictKind.CORRECT, answer
