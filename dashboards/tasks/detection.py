"""Detection items: the image with the model's boxes, each numbered and coloured by what triage
did with it, and a box table that the auditor edits into the verdict.

An item reaches an auditor when some box scores below the certified high threshold (the card's
``triage.threshold``; serving records the one that routed the item in
``Prediction.details["threshold"]``). The boxes that cleared it were auto-accepted: they are
drawn and listed too, as context, and can be corrected like the others. In the table, relabel =
pick another label, move / resize = edit x0, y0, x1, y1, delete = delete the row, add = a new
row. The answer, the model's and the auditor's, is ``[{"box": [x0, y0, x1, y1], "label": int,
"score": float}, ...]`` in the input's pixels; ``auditstream labels export --format coco`` turns
the verdicts into a COCO data set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from PIL import Image

from auditstream.tasks.base import label_name
from auditstream.tasks.detection import boxes
from auditstream.wire import ImageInput, ModelInput, Prediction, Route, TaskKind
from dashboards import images
from dashboards.tasks.base import TaskView, details_of, number as finite_number, register

ACCEPTED, CHECK = "accepted", "check"
# Red (check) against blue (accepted): a pair that colour-blind eyes tell apart too. Red is what
# the table's status "check" and the legend call "to check".
STATUS_COLOURS = {CHECK: "#e6194b", ACCEPTED: "#4363d8"}
# A 64x64 parcel label with up to 16 boxes: at 8x the tags of neighbouring digits stay readable.
DETECTION_MIN_SIDE = 512
COORDS = ("x0", "y0", "x1", "y1")
# Score last: on a narrow screen the table scrolls sideways, and the editable cells stay in view.
COLUMNS = ("#", "status", "label", *COORDS, "score")
READ_ONLY = ("#", "status", "score")  # what the model said; the auditor edits label and box
Size = tuple[int, int]  # (width, height) of the input picture


@dataclass(frozen=True)
class BoxTable:
    """What the box editor returns: its rows and the size of the picture the boxes lie on."""

    rows: list[dict[str, Any]]
    size: Size | None = None


def card_threshold(prediction: Prediction) -> float | None:
    """The threshold that routed this item (the card's certified t_high, or the monitor's tightening)."""
    return finite_number(details_of(prediction).get("threshold"))


def box_statuses(prediction: Prediction) -> list[str]:
    """``accepted`` or ``check`` for each box of the model's answer, in its order.

    Serving's per-box routes (``details["part_routes"]``) where it records them: they are what
    triage did, also under a part threshold set apart from the card's. Else the box's score
    against the threshold that routed the item. With neither, every box is to check: nothing
    says that it was certified.
    """
    dets = boxes(prediction.output)
    routes = details_of(prediction).get("part_routes")
    if isinstance(routes, list) and len(routes) == len(dets) and all(isinstance(r, str) and r in (Route.AUTO.value, Route.HUMAN.value)
                                                                     for r in routes):  # fmt: skip
        return [ACCEPTED if r == Route.AUTO.value else CHECK for r in routes]
    threshold = card_threshold(prediction)
    return [ACCEPTED if threshold is not None and (_number(d.get("score")) or 0.0) >= threshold else CHECK
            for d in dets]  # fmt: skip


def numbered_boxes(output: Any, statuses: Sequence[str] | None = None) -> list[tuple[int, dict[str, Any], str]]:
    """(number, box, status) of each well-formed box. The number is the box's place in the
    model's answer (best score first), the same in the picture, the table and error messages.
    ``statuses``: one per box (:func:`box_statuses`); without them every box is to check."""
    dets = boxes(output)
    statuses = list(statuses) if statuses is not None else [CHECK] * len(dets)
    return [(i + 1, det, status) for i, (det, status) in enumerate(zip(dets, statuses))
            if _coords(det.get("box")) is not None]  # fmt: skip


def status_summary(prediction: Prediction) -> str:
    """One line on what needs the auditor: which boxes to check, how many were auto-accepted."""
    numbered = numbered_boxes(prediction.output, box_statuses(prediction))
    if not numbered:
        return "The model found no box. Add any digit it missed, or submit as is if there is none."
    check = [n for n, _, s in numbered if s == CHECK]
    accepted = len(numbered) - len(check)
    threshold = threshold_rule(prediction, numbered)
    rule = f" (score below the certified threshold {float(threshold)!r})" if threshold is not None else ""
    if not check:  # a QC sample of an auto-accepted answer: every box is the question
        return f"All {accepted} box{'es were' if accepted != 1 else ' was'} auto-accepted (blue): check each one."
    text = f"**To check** (red): box{'es' if len(check) != 1 else ''} {_numbers(check)}{rule}."
    if accepted:
        text += (f" **Auto-accepted** (blue): {accepted} box{'es' if accepted != 1 else ''}, shown as context;"
                 " correct them too if they are wrong.")  # fmt: skip
    return text


def threshold_rule(prediction: Prediction, numbered: list[tuple[int, dict[str, Any], str]]) -> float | None:
    """The threshold that splits the boxes as their statuses say (so "score >= t" may be
    written beside them), or None: unknown, or serving routed boxes by another part threshold."""
    threshold = card_threshold(prediction)
    if threshold is None:
        return None
    holds = all(((_number(d.get("score")) or 0.0) >= threshold) == (s == ACCEPTED) for _, d, s in numbered)
    return threshold if holds else None


def image_size(value: ModelInput) -> Size | None:
    """(width, height) of the input picture in the pixels the boxes are given in (an image's
    header is enough: its pixels are decoded once, for the picture, if at all)."""
    try:
        return images.image_size(value) if isinstance(value, ImageInput) else images.to_image(value).size
    except ValueError:
        return None


def boxes_as_rows(output: Any, labels: Sequence[str] = (), size: Size | None = None,
                  statuses: Sequence[str] | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """The model's boxes as rows of the box table, labels by name where the card has them
    (``statuses`` as for :func:`numbered_boxes`).

    Rows to check come first, then the auto-accepted ones, each group by number: the rows that
    need the auditor are in view without scrolling, and the number column ties every row to its
    box in the picture. Coordinates are clipped to the picture (``size``): the graph does not
    clip its boxes, and a box sticking a pixel out must not stop the auditor accepting it.
    """
    rows = []
    for number, det, status in numbered_boxes(output, statuses):
        x0, y0, x1, y1 = _coords(det["box"])  # type: ignore[misc]  # numbered_boxes keeps well-formed boxes
        if size is not None:
            x0, x1 = (min(max(v, 0.0), float(size[0])) for v in (x0, x1))
            y0, y1 = (min(max(v, 0.0), float(size[1])) for v in (y0, y1))
        rows.append({"#": number, "status": status, "label": label_name(det.get("label"), labels),
                     "score": _number(det.get("score")), "x0": x0, "y0": y0, "x1": x1, "y1": y1})
    return sorted(rows, key=lambda r: (r["status"] != CHECK, r["#"]))


def parse_boxes(rows: Any, labels: Sequence[str], size: Size | None = None) -> list[dict[str, Any]]:
    """Rows of the box table as a detection answer, or a ``ValueError`` naming every box to fix.

    A row is a box when it has a label and four coordinates with x0 < x1 and y0 < y1, inside the
    picture (``size``); its label must be one of the card's ``labels`` (stored as the index).
    Without card labels a whole number is a class index and other text stays as given (a model
    that answers with names). A row keeps its score (the table's score column is read-only: the
    model's score for its box); a box the auditor added scores 1.0. The answer lists the model's
    boxes in their order, then the added ones.
    """
    kept: list[tuple[tuple[int, int], dict[str, Any]]] = []
    errors = []
    for position, row in enumerate(rows or [], start=1):
        if all(_blank(row.get(c)) for c in ("label", *COORDS)):
            continue  # an empty row the table editor added
        number = _whole(row.get("#"))
        where = f"box {number}" if number is not None else f"the new box in row {position}"
        problems: list[str] = []
        box = _box(row, size, problems)
        label = _label(row.get("label"), labels, problems)
        if problems:
            errors.append(f"{where}: " + "; ".join(problems))
            continue
        score = _number(row.get("score"))
        kept.append(((number is None, number or position), {"box": box, "label": label,
                                                             "score": 1.0 if score is None else score}))
    if len(errors) == 1:
        raise ValueError(f"Fix {errors[0]}.")
    if errors:
        raise ValueError("Fix these boxes, then submit again:\n" + "\n".join(f"- {e}" for e in errors))
    return [det for _, det in sorted(kept, key=lambda k: k[0])]


class DetectionView(TaskView):
    kind = TaskKind.DETECTION

    def input_picture(self, prediction: Prediction, value: ModelInput, labels: Sequence[str]) -> Image.Image | None:
        try:
            picture = images.to_image(value)
        except images.NotAPicture:  # an undecodable image raises: the workbench says what is wrong
            return None
        if not isinstance(prediction.output, list):  # blind, or no answer: the plain image, as large
            return images.draw_boxes(picture, [], min_side=DETECTION_MIN_SIDE)  # as the open one's
        # The boxes to check are drawn last, so their outlines and tags lie on top of the others'.
        numbered = numbered_boxes(prediction.output, box_statuses(prediction))
        numbered = sorted(numbered, key=lambda b: (b[2] == CHECK, b[0]))
        counts = {s: sum(1 for _, _, status in numbered if status == s) for s in (CHECK, ACCEPTED)}
        threshold = threshold_rule(prediction, numbered)
        # The threshold as it is used, not rounded: 0.435 written "0.43" reads as if 0.432 passed.
        accepted = f"auto-accepted (score >= {float(threshold)!r})" if threshold is not None else "auto-accepted"
        legend = [(STATUS_COLOURS[CHECK], f"to check: {counts[CHECK]}"),
                  (STATUS_COLOURS[ACCEPTED], f"{accepted}: {counts[ACCEPTED]}")]  # fmt: skip
        return images.draw_boxes(picture, [d for _, d, _ in numbered], labels,
                                 colours=[STATUS_COLOURS[s] for _, _, s in numbered],
                                 numbers=[n for n, _, _ in numbered], legend=legend,
                                 min_side=DETECTION_MIN_SIDE)  # fmt: skip

    def editor_ui(self, prediction: Prediction, value: ModelInput, labels: Sequence[str], blind: bool,
                  key: str) -> tuple[Any, Sequence[str]]:  # fmt: skip
        import pandas as pd
        import streamlit as st

        size = image_size(value)
        if not blind:  # the summary would tell the answer
            st.markdown(status_summary(prediction))
        extent = f" of the {size[0]}×{size[1]} picture" if size else ""
        # The form's shortcuts work on a selected cell too (dashboards/table_shortcuts.py), not
        # inside an open cell editor: Enter saves the cell first.
        st.caption(f"Relabel: pick another label. Move or resize: edit x0, y0 (top left) and x1, y1 (bottom "
                   f"right), in pixels{extent}. Delete: tick the row on its left, press Delete. A missed box: "
                   "the empty last row. Keys: arrows move, Enter edits and saves a cell; Ctrl+Enter submits, "
                   "Alt+X rejects, Alt+S skips (in a cell you are typing in, Enter first).")  # fmt: skip
        rows = [] if blind else boxes_as_rows(prediction.output, labels, size, box_statuses(prediction))
        # Nullable dtypes: a row the auditor adds has empty "#" and score cells, which pandas
        # refuses to put into plain int / float columns of an empty (blind) table.
        dtypes = {"#": "Int64", "status": "object", "label": "object", "score": "Float64",
                  **dict.fromkeys(COORDS, "Float64")}  # fmt: skip
        frame = pd.DataFrame(rows, columns=list(COLUMNS)).astype(dtypes)
        width, height = size if size else (None, None)
        edges = {"x0": ("left edge", width), "y0": ("top edge", height), "x1": ("right edge", width),
                 "y1": ("bottom edge", height)}  # fmt: skip
        column = st.column_config
        config: dict[str, Any] = {
            "#": column.NumberColumn("#", help="The box's number in the picture", format="%d", width=40),
            "status": column.TextColumn("status", width=80, help="check: scored below the certified threshold, "
                                        "needs your look; accepted: auto-accepted, shown as context"),  # fmt: skip
            "label": (column.SelectboxColumn("label", options=list(labels), required=True, width=64) if labels
                      else column.TextColumn("label", required=True, width=64)),  # fmt: skip
            **{c: column.NumberColumn(c, help=f"The box's {what}, in pixels", min_value=0.0, max_value=limit,
                                      format="%.1f", required=True, width=56)
               for c, (what, limit) in edges.items()},
            "score": column.NumberColumn("score", help="The model's score for its box", format="%.3f", width=60),
        }  # fmt: skip
        edited = st.data_editor(frame, num_rows="dynamic", key=key, hide_index=True, disabled=list(READ_ONLY),
                                column_config=config, width="stretch")  # fmt: skip
        return BoxTable(edited.to_dict("records"), size), labels

    def parse_answer(self, raw: Any, choices: Sequence[str] = (), as_label: bool = False) -> Any:
        if isinstance(raw, BoxTable):
            return parse_boxes(raw.rows, choices, raw.size)
        return parse_boxes(raw, choices)


# --------------------------------------------------------------------------------------------
# cell values (the table gives numpy / pandas scalars, NaN or <NA> for an empty cell)


def _blank(value: Any) -> bool:
    if value is None or (isinstance(value, str) and not value.strip()):
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return type(value).__name__ in ("NAType", "NaTType")


def _number(value: Any) -> float | None:
    """A finite number, or None."""
    if _blank(value) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int too large for a float
        return None
    return number if math.isfinite(number) else None


def _whole(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None and number == int(number) else None


def _coords(box: Any) -> list[float] | None:
    """A box as four finite numbers, or None."""
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        return None
    coords = [_number(v) for v in box]
    return None if any(v is None for v in coords) else coords  # type: ignore[return-value]


def _numbers(numbers: Sequence[int]) -> str:
    return ", ".join(str(n) for n in numbers[:-1]) + (" and " if len(numbers) > 1 else "") + str(numbers[-1])


def _box(row: dict[str, Any], size: Size | None, problems: list[str]) -> list[float] | None:
    """The row's [x0, y0, x1, y1], appending what is wrong with it to ``problems``."""
    values = {c: _number(row.get(c)) for c in COORDS}
    missing = [c for c, v in values.items() if v is None]
    if missing:
        problems.append(f"{', '.join(missing)} must be {'a number' if len(missing) == 1 else 'numbers'} "
                        "(pixels from the picture's top left corner)")  # fmt: skip
        return None
    x0, y0, x1, y1 = (values[c] for c in COORDS)
    if size is not None:
        for c, limit in (("x0", size[0]), ("x1", size[0]), ("y0", size[1]), ("y1", size[1])):
            if not 0.0 <= values[c] <= limit:  # type: ignore[operator]
                axis = "x" if c[0] == "x" else "y"
                problems.append(f"{c} = {values[c]:g} is outside the picture ({axis} runs from 0 to {limit})")
    if not x0 < x1:  # type: ignore[operator]
        problems.append(f"its left edge x0 = {x0:g} must be left of its right edge x1 = {x1:g} (x0 < x1)")
    if not y0 < y1:  # type: ignore[operator]
        problems.append(f"its top edge y0 = {y0:g} must be above its bottom edge y1 = {y1:g} (y0 < y1)")
    return [x0, y0, x1, y1]  # type: ignore[list-item]


def _label(value: Any, labels: Sequence[str], problems: list[str]) -> Any:
    """The row's label as the card's class index (or as given without card labels)."""
    if _blank(value):
        problems.append("pick its label")
        return None
    if labels:
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(labels):
            return value
        if str(value) in labels:
            return list(labels).index(str(value))
        problems.append(f"label {value!r} is not one of the model's labels ({', '.join(map(str, labels))})")
        return None
    text = str(value).strip()
    return int(text) if text.isdigit() else text


VIEW = register(DetectionView())
