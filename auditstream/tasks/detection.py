"""Detection: boxes with labels on one image (digits on a parcel label).

| graph outputs | output | confidence | parts | details |
|---|---|---|---|---|
| ``boxes`` [B, K, 4] (x0, y0, x1, y1), ``labels`` int64 [B, K], ``scores`` [B, K] | the boxes whose published score is ``>= threshold_low``, best first | the lowest kept score (1.0 with no box) | each kept box, its score the confidence | ``threshold_low``, ``dropped`` (rows below it), ``match_iou`` |

The graph does the decoding (peaks, top-K, boxes), so postprocessing only drops the rows below
the card's low threshold (``extra["threshold_low"]``). Both thresholds compare one score per box,
the one the answer publishes (``base.probability``: clipped to [0, 1], rounded to 6 decimals): a
row is kept when its published score is ``>= threshold_low``, and triage compares the kept boxes'
published scores with the high threshold. The detector's certificate counts the boxes this
function keeps and the scores it publishes (training/detector/train.py ``served``), so a float32
score within 5e-7 of a threshold is on the same side of it in the certificate as in serving. Every kept box gates the item: the card's
triage threshold is the certified high threshold, and the item is auto-accepted only when every
box clears it (``Task.gating_confidences``'s default: each part). The boxes in between go to an
auditor. An answer with no box claims nothing, so it adds no false box to what the high
threshold's certificate bounds, and the objects it misses are what the low threshold's miss-rate
guarantee bounds: its confidence is 1.0 (qc/detection_certify.py, docs/detector.md).

What makes no answer (``None``, the record's ``inference_failed`` dead letter): a score outside
[0, 1] (logits), a non-finite box, a kept box drawn backwards (x0 > x1 or y0 > y1) or with a
label index outside the card's labels, and more kept boxes than ``extra["max_boxes"]`` (K, the
bound on parts per answer that the card's false-discovery certificate and the monitor's live
estimate rely on: an answer past it would be auto-accepted and then left out of the estimate).
:meth:`Detection.check_card` refuses a card whose fixed K exceeds ``max_boxes``.

Answer equality: two answers are the same when their boxes match one to one by label and IoU
``>= match_iou`` (``extra["match_iou"]`` on the card, :data:`DEFAULT_MATCH_IOU` without one;
every answer records it in ``details["match_iou"]``; :meth:`Detection.for_card` and
:meth:`Detection.for_details` give the rule at it, and every caller compares with that rule),
whatever the order and the scores (:meth:`Detection.same_answer`: a largest matching, found
without recursion, label by label, whatever the number of boxes). An audited answer's false
boxes (:meth:`Detection.false_parts`: the live false-discovery rate of accepted boxes,
monitor/tracker.py) are counted as the certificate counts them (qc/detection_certify.py):
:func:`greedy_true`, COCO's greedy matching in descending score -- a largest matching can pair a
box the greedy pass leaves false, and the live estimate would then count fewer false boxes than
the certificate bounds. IoU matching is not transitive, so it cannot be a key:
:meth:`Detection.answer_key` stays a canonical form (labels and boxes to a tenth of a pixel,
sorted); equal keys are the same answer, not conversely.

Equality, keys and false-box counts are total: an answer :func:`readable_boxes` cannot read (a
box of None, a string, NaN or an infinity; an element that is no dict; no list at all), a row
already in a store or a verdict from another client, is the same answer as an identical value
only, and all of its model's boxes count as false against it; nothing raises. What an auditor
may record as a correction is stricter (:func:`answer_problem`, ``store.records.check_verdict_input``):
boxes of four finite numbers drawn forwards, a class index or name, a score in [0, 1].
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Mapping, Sequence

import numpy as np

from auditstream.registry import ModelCard
from auditstream.tasks.base import (MALFORMED_KEY_PREFIX, PROB_TOLERANCE, Answer, Part, Task, answerable_rows,
                                    canonical_json, key_json, label_name, probability, register, rounded)
from auditstream.wire import TaskKind
from auditstream.wire.codec import short_repr

DEFAULT_MATCH_IOU = 0.5
# An answer's details record the card's class names (``details["labels"]``) when it has at most
# this many: what lets the store turn a correction's class names into the model's class indices
# (:meth:`Detection.normalise_answer`) without the card.
MAX_DETAILS_LABELS = 1024


def boxes(output: Any) -> list[dict[str, Any]]:
    """The well-formed boxes of an answer (anything else in the list is ignored)."""
    return [d for d in output if isinstance(d, dict)] if isinstance(output, list) else []


def class_names(labels: Sequence[str]) -> dict[str, int]:
    """Each name that names one class of the card -> its index (a name given to several classes
    names none); the same rule as the COCO export's (monitor/coco_export.py)."""
    count = Counter(labels)
    return {name: i for i, name in enumerate(labels) if count[name] == 1}


def details_labels(details: Any) -> tuple[str, ...]:
    """The card's class names a prediction's ``details`` recorded (postprocess writes them), or
    () where it recorded none or something else (a row from before 2026-12-05, another client)."""
    labels = details.get("labels") if isinstance(details, dict) else None
    if isinstance(labels, list) and labels and all(isinstance(name, str) for name in labels):
        return tuple(labels)
    return ()


def class_of(label: Any, names: Mapping[str, int]) -> Any:
    """``label`` as the model's class index where it is one of ``names`` (a class given by its
    name); anything else unchanged. What the rule compares labels by, so a correction recorded
    with a name before the store normalised them still matches the model's index."""
    return names.get(label, label) if isinstance(label, str) else label


def normalise_labels(output: Any, labels: Sequence[str]) -> Any:
    """``output`` with every box's class given by its index among ``labels`` (the card's): a name
    becomes its index; ``ValueError`` (a message for the person who typed it) for a name that is
    not one of the card's labels, one the card gives to several classes, or an index past them.
    ``labels`` empty (not known): ``output`` unchanged. Anything that is not a list of boxes is
    returned unchanged (:func:`answer_problem` judges its shape)."""
    if not labels or not isinstance(output, list):
        return output
    names, out = class_names(labels), []
    for number, det in enumerate(output, start=1):
        label = det.get("label") if isinstance(det, dict) else None
        if isinstance(label, str):
            if label not in names:
                shown = ", ".join(repr(name) for name in labels[:20]) + (", ..." if len(labels) > 20 else "")
                why = ("the card gives that name to several classes" if label in labels else
                       f"it is not one of the model's class names ({shown})")
                raise ValueError(f"box {number}: class {short_repr(label)} names no class of the model: {why}; give a "
                                 f"class index 0..{len(labels) - 1} or one of its names")
            det = {**det, "label": names[label]}
        elif isinstance(label, int) and not isinstance(label, bool) and label >= len(labels):
            raise ValueError(f"box {number}: class index {label} is past the model's {len(labels)} classes "
                             f"(0..{len(labels) - 1})")
        out.append(det)
    return out


def threshold_low(card: ModelCard) -> float:
    """Rows scoring below this are dropped (the card's ``extra["threshold_low"]``)."""
    return float(card.extra["threshold_low"])


def valid_iou(value: Any) -> float | None:
    """``value`` as a match IoU (a number in (0, 1]), or None."""
    number = _number(value)
    return number if number is not None and 0.0 < number <= 1.0 else None


def match_iou(card: ModelCard | None) -> float:
    """The IoU at which two boxes of one label are the same box: the card's ``extra.match_iou``
    (the IoU its certificate matched boxes at), :data:`DEFAULT_MATCH_IOU` without a card or one.
    A value that is not a number in (0, 1] -- which :meth:`Detection.check_card` refuses at
    start-up -- reads as the default here, so the monitor never stops on a card."""
    if card is None:
        return DEFAULT_MATCH_IOU
    return valid_iou(card.extra.get("match_iou", DEFAULT_MATCH_IOU)) or DEFAULT_MATCH_IOU


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` [m, 4] with every box of ``b`` [k, 4] (x0, y0, x1, y1)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    # two boxes of no area have IoU 0/0: the same box (equal corners) is 1, any other 0
    identical = (a[:, None, :] == b[None, :, :]).all(axis=-1)
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), np.where(identical, 1.0, 0.0))


def _number(value: Any) -> float | None:
    """``value`` as a finite float when it is a real number (a JSON bool is not one), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer past float's range
        return None
    return number if math.isfinite(number) else None


def _coords(box: Any) -> list[float] | None:
    """A box as four finite floats, or None when it is anything else (None, a string, NaN, ...)."""
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        return None
    coords = [_number(v) for v in box]
    return None if any(c is None for c in coords) else coords  # type: ignore[return-value]


def readable_boxes(output: Any) -> tuple[list[dict[str, Any]], np.ndarray] | None:
    """A well-formed answer's boxes and their coordinates [n, 4]: a list whose every element is
    a dict with ``"box"`` four finite numbers; None for any other value (``None``, a string, a
    box of None or NaN, an element that is no dict). What equality and false-part counting can
    compare; anything else is compared by key (:meth:`Detection.answer_key`), never raises."""
    if not isinstance(output, list):
        return None
    rows = []
    for det in output:
        coords = _coords(det.get("box")) if isinstance(det, dict) else None
        if coords is None:
            return None
        rows.append(coords)
    return output, np.array(rows, dtype=np.float64).reshape(len(rows), 4)


def answer_problem(output: Any) -> str | None:
    """Why ``output`` is not a detection answer an auditor may record (a correction), or None: a
    list of ``{"box": [x0, y0, x1, y1], "label": ..., "score": ...}``, each box four finite
    numbers with x0 <= x1 and y0 <= y1, each label a class index (an integer >= 0) or a name (a
    non-empty string), each score, where given, a number in [0, 1]."""
    if not isinstance(output, list):
        return f"a detection answer is a list of boxes, got {short_repr(output)}"
    for number, det in enumerate(output, start=1):
        if not isinstance(det, dict):
            return f"box {number} is {short_repr(det)}, not {{\"box\": [x0, y0, x1, y1], \"label\": ..., \"score\": ...}}"
        coords = _coords(det.get("box"))
        if coords is None:
            return f"box {number}: its box must be four finite numbers [x0, y0, x1, y1], got {short_repr(det.get('box'))}"
        if coords[0] > coords[2] or coords[1] > coords[3]:
            return f"box {number}: {coords} is drawn backwards (need x0 <= x1 and y0 <= y1)"
        label = det.get("label")
        if not ((isinstance(label, int) and not isinstance(label, bool) and label >= 0)
                or (isinstance(label, str) and label)):
            return f"box {number}: its label must be a class index (an integer >= 0) or a name, got {short_repr(label)}"
        if "score" in det:
            score = _number(det["score"])
            if score is None or not 0.0 <= score <= 1.0 + PROB_TOLERANCE:
                return f"box {number}: its score must be a number in [0, 1], got {short_repr(det['score'])}"
    return None


def _matching_size(allowed: np.ndarray) -> int:
    """The size of a largest matching of the bipartite graph ``allowed`` [n, k]: a greedy matching,
    then Kuhn's augmenting paths, one search per left vertex it left unmatched, each with an
    explicit stack (a recursive search went one frame deeper per box: RecursionError past ~1,000)."""
    allowed = np.asarray(allowed, dtype=bool)
    n, k = allowed.shape
    if n == 0 or k == 0:
        return 0
    owner = np.full(k, -1, dtype=np.int64)  # right vertex -> its left vertex
    mate = np.full(n, -1, dtype=np.int64)  # left vertex -> its right vertex
    free = np.ones(k, dtype=bool)
    for i in range(n):  # greedy first: on real answers (a box overlaps a few others) it is the whole matching
        j = int(np.argmax(allowed[i] & free))
        if allowed[i, j] and free[j]:
            owner[j], mate[i], free[j] = i, j, False
    size = int((mate >= 0).sum())
    for i in np.flatnonzero(mate < 0).tolist():  # a left vertex no augmenting path reaches now never gets one
        parent = np.full(k, -1, dtype=np.int64)  # right vertex -> the left vertex the search came from
        seen = np.zeros(k, dtype=bool)
        stack, end = [i], -1
        while stack and end < 0:
            u = stack.pop()
            reached = np.flatnonzero(allowed[u] & ~seen)
            seen[reached], parent[reached] = True, u
            open_ = reached[owner[reached] < 0]
            if open_.size:
                end = int(open_[0])
            stack.extend(owner[reached].tolist())
        while end >= 0:  # flip the path: each right vertex on it takes the left vertex it was reached from
            u = int(parent[end])
            owner[end], mate[u], end = u, end, int(mate[u])
        size += bool(mate[i] >= 0)
    return size


# IoU is computed this many pairs at a time: 5,000 boxes against 5,000 would otherwise need
# several [5000, 5000] float64 temporaries (200 MB each) at once.
_IOU_CHUNK_PAIRS = 1 << 20


def _matched_boxes(ours: list[dict[str, Any]], xa: np.ndarray, theirs: list[dict[str, Any]], xb: np.ndarray,
                   iou: float, names: Mapping[str, int] | None = None) -> int:
    """The most boxes of ``ours`` that a one to one matching by label and IoU ``>= iou`` pairs
    with boxes of ``theirs``. Only boxes of one label can pair, so each label is matched apart
    (a class name among ``names`` is its index: :func:`class_of`)."""
    la, lb = _label_codes(ours, theirs, names=names)
    matched = 0
    for label in np.intersect1d(la, lb).tolist():
        a, b = xa[la == label], xb[lb == label]
        rows = max(1, _IOU_CHUNK_PAIRS // len(b))
        allowed = np.concatenate([iou_matrix(a[s:s + rows], b) >= iou for s in range(0, len(a), rows)])
        matched += _matching_size(allowed)
    return matched


def greedy_true(boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray, true_boxes: np.ndarray,
                true_labels: np.ndarray, iou: float = DEFAULT_MATCH_IOU) -> np.ndarray:
    """Whether each box is true, COCO's way: greedily in descending score (ties in the given
    order), a box takes the not yet taken object of its label with the highest IoU (the first of
    equals), if that IoU is ``>= iou``. A box's status depends only on the boxes that outrank it.
    The one matching of the detector certificate (``qc.detection_certify.match_boxes``) and of an
    audit's false boxes (:meth:`Detection.false_parts`), so the live false-discovery rate counts
    the boxes the certificate counts. Labels are compared with ``==``; each label is matched
    apart, its IoU rows computed in chunks (5,000 boxes on one label never hold [5000, 5000])."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    true_boxes = np.asarray(true_boxes, dtype=np.float64).reshape(-1, 4)
    labels, true_labels = np.asarray(labels).reshape(-1), np.asarray(true_labels).reshape(-1)
    true = np.zeros(len(boxes), dtype=bool)
    if len(boxes) == 0 or len(true_boxes) == 0:
        return true
    order = np.argsort(-np.asarray(scores, dtype=np.float64).reshape(-1), kind="stable")
    codes = np.unique(np.concatenate([labels, true_labels]), return_inverse=True)[1].reshape(-1)
    la, lb = codes[:len(labels)], codes[len(labels):]
    for label in np.intersect1d(la, lb).tolist():
        rows, cols = order[la[order] == label], np.flatnonzero(lb == label)
        taken = np.zeros(len(cols), dtype=bool)
        chunk = max(1, _IOU_CHUNK_PAIRS // len(cols))
        for start in range(0, len(rows), chunk):
            block = iou_matrix(boxes[rows[start:start + chunk]], true_boxes[cols])
            for r, i in enumerate(rows[start:start + chunk].tolist()):
                candidates = np.where(taken, -1.0, block[r])
                j = int(candidates.argmax())
                if candidates[j] >= iou:
                    taken[j], true[i] = True, True
    return true


def _label_codes(*answers: list[dict[str, Any]], names: Mapping[str, int] | None = None) -> list[np.ndarray]:
    """The answers' labels as integers, equal exactly when the labels' keys are (any JSON label;
    a class name among ``names`` is its index first: :func:`class_of`)."""
    codes: dict[str, int] = {}
    names = names or {}
    return [np.array([codes.setdefault(key_json(class_of(d.get("label"), names)), len(codes)) for d in a],
                     dtype=np.int64) for a in answers]


def _score_of(det: dict[str, Any]) -> float:
    """A box's score for the greedy order; one that is not a finite number ranks last."""
    score = _number(det.get("score"))
    return -math.inf if score is None else score


class Detection(Task):
    kind = TaskKind.DETECTION
    output_names = ("boxes", "labels", "scores")
    answers_are_boxes = True  # `auditstream labels export --format coco`
    accepts_parts = True
    # boxes match by IoU: A ~ B and B ~ truth need not give A ~ truth, so agreeing with live is
    # no concordance; the paired gate counts a detector's audited items only
    agreement_is_concordance = False

    def __init__(self, iou: float = DEFAULT_MATCH_IOU, labels: Sequence[str] = ()) -> None:
        self.iou = iou  # what same_answer and false_parts match at when not told (for_card, for_details)
        # the card's class names, where known: a box's class given by its name compares as its index
        self.labels = tuple(labels)
        self.names = class_names(self.labels)

    def __repr__(self) -> str:
        return f"Detection(iou={self.iou}, labels={len(self.labels)})"

    def for_card(self, card: ModelCard | None) -> "Detection":
        """This kind's rule at the card's :func:`match_iou` (the IoU its certificate matched at),
        comparing classes given by name as the card's indices."""
        return _at_iou(match_iou(card), tuple(card.labels) if card is not None else ())

    def for_details(self, details: Any) -> "Detection":
        """This kind's rule at the ``match_iou`` a prediction's details recorded (postprocess
        writes the card's there); the default without a readable one (a row from before); with
        the class names they recorded (:func:`details_labels`), if any."""
        recorded = valid_iou(details.get("match_iou")) if isinstance(details, dict) else None
        return _at_iou(recorded or DEFAULT_MATCH_IOU, details_labels(details))

    def normalise_answer(self, output: Any, details: Any = None) -> Any:
        """A correction (or gold answer) with every class given as the model's index, by the card's
        class names the item's ``details`` recorded (:func:`normalise_labels`: a name that is not one
        of them is refused, ``ValueError``); without recorded names, unchanged."""
        return normalise_labels(output, details_labels(details) or self.labels)

    def check_card(self, card: ModelCard) -> None:
        super().check_card(card)
        low = card.extra.get("threshold_low")
        if not isinstance(low, (int, float)) or isinstance(low, bool) or not 0.0 <= low <= 1.0:
            raise ValueError(f"detection model {card.name}: extra.threshold_low must be a number in [0, 1] "
                             f"(rows scoring below it are dropped), got {low!r}")
        iou = card.extra.get("match_iou", DEFAULT_MATCH_IOU)  # read by float(): a list or null would raise TypeError
        if not isinstance(iou, (int, float)) or isinstance(iou, bool) or not 0.0 < iou <= 1.0:
            raise ValueError(f"detection model {card.name}: extra.match_iou must be a number in (0, 1], got {iou!r}")
        rows = card.extra.get("max_boxes", 0)
        if not isinstance(rows, int) or isinstance(rows, bool) or not 0 <= rows <= 1_000_000:
            raise ValueError(f"detection model {card.name}: extra.max_boxes must be the graph's rows per image, an "
                             f"integer in [0, 1000000] (0: not stated), got {rows!r}")
        self._check_shapes(card, rows)

    @staticmethod
    def _check_shapes(card: ModelCard, max_boxes: int) -> None:
        """boxes [B, K, 4], labels and scores [B, K], one K; a fixed K at most ``max_boxes`` (the
        bound on parts per answer the live false-discovery estimate relies on, docs/detector.md)."""
        shapes = {o.name: o.shape for o in card.outputs if o.name in ("boxes", "labels", "scores")}
        want = {"boxes": ([None, None, 4], "[B, K, 4]"), "labels": ([None, None], "[B, K]"),
                "scores": ([None, None], "[B, K]")}
        for name, shape in shapes.items():
            dims, shown = want[name]
            if len(shape) != len(dims) or any(d is not None and got not in (d, None) for got, d in zip(shape, dims)):
                raise ValueError(f"detection model {card.name}: output {name} has shape {shape}; it must be {shown} "
                                 "(K rows per image, boxes as x0, y0, x1, y1)")
        fixed = {name: shape[1] for name, shape in shapes.items() if shape[1] is not None}
        if len(set(fixed.values())) > 1:
            raise ValueError(f"detection model {card.name}: outputs boxes, labels and scores must have one K (rows "
                             f"per image), the card says {fixed}")
        if fixed and max_boxes and max(fixed.values()) > max_boxes:
            raise ValueError(f"detection model {card.name}: the graph has {max(fixed.values())} rows per image but "
                             f"extra.max_boxes is {max_boxes}: an answer could have more boxes than the card's bound "
                             "(the false-discovery estimate would leave those answers out); set max_boxes to the "
                             "graph's rows")

    def postprocess(self, card: ModelCard, outputs: dict[str, np.ndarray]) -> list[Answer | None]:
        low, iou = threshold_low(card), match_iou(card)  # the IoU travels in details: for_details
        # and the card's class names, so the store can turn a correction's names into indices
        card_labels = {"labels": list(card.labels)} if 0 < len(card.labels) <= MAX_DETAILS_LABELS else {}
        box_rows, label_rows, score_rows = outputs["boxes"], outputs["labels"], outputs["scores"]
        if not (box_rows.ndim == 3 and box_rows.shape[:2] == label_rows.shape == score_rows.shape):
            return [None] * len(score_rows)  # rows that do not pair up: no image has an answer
        # A row is kept when its published score (base.probability: clipped, rounded to 6
        # decimals) clears the low threshold, as the high one compares the published score of
        # every kept box (Task.gating_confidences): one score per box, the one the answer shows,
        # the one the detector's certificate counts (training/detector/train.py: served).
        # Rounding moves a score by at most 5e-7 and clipping only scores outside [0, 1]: only those
        # are looked at one by one (the rest compare alike raw or published; this runs per batch).
        scores = score_rows.astype(np.float64)
        kept_rows = scores >= low
        for i, j in zip(*np.nonzero((np.abs(scores - low) <= 1e-6) | (scores < 0.0) | (scores > 1.0))):
            kept_rows[i, j] = probability(score_rows[i, j]) >= low
        # Checked for the whole batch at once: every score a probability (not a logit) and every
        # box finite; the kept rows (what is published) boxes drawn forwards with labels of the
        # card, and no more of them than max_boxes (the card's false-discovery bound, K).
        answerable = (answerable_rows(probs=score_rows) & np.isfinite(box_rows).all(axis=(1, 2))
                      & answerable_rows(boxes=np.where(kept_rows[..., None], box_rows, 0),
                                        labels=np.where(kept_rows, label_rows, 0), n_labels=len(card.labels) or None))
        most = self.max_parts(card)
        if most is not None:
            answerable &= kept_rows.sum(axis=1) <= most
        answers: list[Answer | None] = []
        for image_boxes, image_labels, image_scores, image_kept, ok in zip(box_rows, label_rows, score_rows, kept_rows,
                                                                             answerable.tolist()):
            if not ok:
                answers.append(None)
                continue
            order = np.argsort(-image_scores, kind="stable")
            kept = [int(i) for i in order if image_kept[i]]
            output = [{"box": [rounded(v) for v in image_boxes[i]], "label": int(image_labels[i]),
                       "score": probability(image_scores[i])} for i in kept]  # in [0, 1] (base.probability)
            parts = tuple(Part(k, det, det["score"]) for k, det in enumerate(output))
            confidence = min((det["score"] for det in output), default=1.0)
            answers.append(Answer(output, confidence, parts,
                                  {"threshold_low": low, "dropped": len(image_scores) - len(kept), "match_iou": iou,
                                   **card_labels}))
        return answers

    def answer_key(self, output: Any) -> str:
        """Labels and boxes to a tenth of a pixel, sorted. Total: an answer :func:`readable_boxes`
        cannot read (a box of None, a string or NaN; an element that is no dict; no list) has
        :data:`~auditstream.tasks.base.MALFORMED_KEY_PREFIX` and its whole value's key, so it is
        the same answer as an identical value only, and nothing raises."""
        if output is None:
            return key_json(None)
        parsed = readable_boxes(output)
        if parsed is None:
            return MALFORMED_KEY_PREFIX + key_json(output)
        dets, xy = parsed
        key = sorted([key_json(class_of(d.get("label"), self.names)), *(round(v, 1) for v in row)]
                     for d, row in zip(dets, xy.tolist()))
        return canonical_json(key)

    def check_answer(self, output: Any) -> str | None:
        return answer_problem(output)

    def shaped_like_its_answer(self, output: Any) -> bool:
        return isinstance(output, list) and any(isinstance(d, dict) and "box" in d for d in output)

    def same_answer(self, a: Any, b: Any, iou: float | None = None) -> bool:
        """Boxes match one to one by label and IoU ``>= iou`` (None: this rule's, the card's
        :func:`match_iou` for a rule from :meth:`for_card` or :meth:`for_details`);
        scores and order do not matter. Equal keys are the same answer; an answer
        :func:`readable_boxes` cannot read is the same as one of equal key only. Never raises."""
        if self.answer_key(a) == self.answer_key(b):
            return True
        pa, pb = readable_boxes(a), readable_boxes(b)
        if pa is None or pb is None or len(pa[0]) != len(pb[0]):
            return False
        return _matched_boxes(pa[0], pa[1], pb[0], pb[1], self.iou if iou is None else iou, self.names) == len(pa[0])

    def max_parts(self, card: ModelCard) -> int | None:
        """The graph's rows (``extra["max_boxes"]``): no answer has more boxes."""
        return int(card.extra.get("max_boxes", 0)) or None

    def count_parts(self, output: Any) -> int:
        return len(boxes(output))

    def false_parts(self, model_output: Any, corrected_output: Any, iou: float | None = None) -> int:
        """The model's boxes that no box of the auditor's answer confirms, matched as the
        certificate matches them (:func:`greedy_true`: in descending score, each box takes the
        free auditor box of its label with the highest IoU ``>= iou``), so the monitor's live
        false-discovery rate counts the false boxes the certificate bounds. Boxes the auditor
        added are misses, not false boxes. An answer :func:`readable_boxes` cannot read
        on either side: every model box (:meth:`count_parts`) counts as false. Never raises."""
        ours = boxes(model_output)
        if not ours:
            return 0
        pa, pb = readable_boxes(model_output), readable_boxes(corrected_output)
        if pa is None or pb is None:
            return len(ours)
        la, lb = _label_codes(pa[0], pb[0], names=self.names)
        scores = np.array([_score_of(d) for d in pa[0]], dtype=np.float64)
        return int((~greedy_true(pa[1], la, scores, pb[1], lb, self.iou if iou is None else iou)).sum())

    def answer_text(self, output: Any, labels: Sequence[str] = ()) -> str:
        """``"2 boxes: 3, 7"``."""
        if not isinstance(output, list):
            return super().answer_text(output, labels)
        names = ", ".join(label_name(d.get("label"), labels) for d in boxes(output))
        return f"{len(output)} box{'es' if len(output) != 1 else ''}" + (f": {names}" if names else "")


TASK = register(Detection())
_BY_IOU: dict[tuple[float, tuple[str, ...]], Detection] = {(DEFAULT_MATCH_IOU, ()): TASK}


def _at_iou(iou: float, labels: tuple[str, ...] = ()) -> Detection:
    """The rule at ``iou`` with the card's class names ``labels`` (one object per pair; the
    registered one at the default without names)."""
    rule = _BY_IOU.get((iou, labels))
    if rule is None:
        rule = Detection(iou, labels)
        if len(_BY_IOU) < 1024:  # cards carry a handful of IoUs; the store's rows could carry any
            _BY_IOU[(iou, labels)] = rule
    return rule
