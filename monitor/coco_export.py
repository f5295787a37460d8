"""Detection verdicts as a COCO data set a detector can retrain on:
``auditstream labels export --format coco --model NAME --out DIR/annotations.json``.

One COCO image per audited request, its annotations the auditor's boxes:

- ``accept`` and ``correct`` verdicts give the boxes the auditor confirmed or drew (``bbox`` is
  ``[x, y, w, h]`` in pixels from the answer's ``[x0, y0, x1, y1]``, ``area`` = w·h,
  ``iscrowd`` 0, ``category_id`` the class index, as in the detector's own data set; a box whose
  label is a class *name*, which the store takes in a correction, gets the index of that name
  among the card's labels);
- ``reject`` verdicts ("no valid answer exists": an unreadable label) are left out;
- an item reviewed twice keeps its last decisive verdict (highest review round, then the latest);
- gold items only when asked for (``--include-gold``): a gold image has ``is_gold`` true and its
  annotations are the gold item's known answer as stored with it (``add_gold``), never an
  auditor's verdict (the auditors' answers on gold are what is being checked); its
  ``verdict_kind`` is null, its route and inclusion probability are the ones the gold item was
  added with (it is no traffic: leave gold images out of estimates). A gold item whose known
  answer is "should be rejected" is left out, as a reject is. Every other image has ``is_gold``
  false.

Image ids are stable per request: the same request (and gold or not) gets the same id in every
export, whatever else the export holds, so annotations, results and notes keyed by image id stay
valid across re-exports. The id is the first 53 bits of a SHA-256 of the request id
(:func:`image_id`; >= 1, exact in a double and an int64, as COCO tools use them); two requests
whose hashes meet (about one chance in 10^5 for a million images) are told apart by hashing the
later one (in request id order) again with a counter, and the export checks that every id is
unique. Annotation ids count from 1 in the file's order and are not stable.

The pixels go beside the annotation file in a folder named after it, ``<out stem>_images/``
(``annotations.json`` -> ``annotations_images/``), each file named by its image id: the
request's own PNG or JPEG bytes, or for a tensor input an 8-bit PNG to look at plus the exact
array as ``.npy`` (``tensor_file`` on the image entry), which is what training reads. Two exports
into one folder under different names keep their own pixels. Each image entry also keeps the
request id, model version, route, inclusion probability (weight QC-sampled examples by
``1 / inclusion_prob`` for unbiased estimates), ``is_gold``, and the request's side of the audit
store's train/certify split, ``audit_split`` and ``audit_split_key``, as the labels export
carries them (docs/learning-loop.md, "Data hygiene"): the export holds both sides, and a detector
trained on it must keep to the train side and say so on its card (``info["audit_split_rule"]``),
or certify and promote would judge it on the verdicts it learnt from. Categories are every label on
the model's card, id = class index, as the detector's own ``to_coco`` lists them; without the
card, the class indices seen, named by their index.

:func:`export_coco` writes the pixels into ``<out stem>_images.tmp/`` and the JSON into
``<out>.tmp``, then, in this order: (1) renames an earlier ``<out stem>_images/`` to
``<out stem>_images.old/``, (2) renames ``.tmp/`` to ``<out stem>_images/``, (3) renames
``<out>.tmp`` over ``<out>``, (4) deletes ``.old/``. An error on the way (a row generator that
fails, a full disk) undoes the renames done so far, so the earlier export stays whole. A crash
(the process killed) before (1) leaves the earlier export whole (and the ``.tmp`` files, which
the next export deletes); between (1) and (2) the earlier JSON with its pixel folder renamed to
``.old/`` (the next export renames it back before anything else); between (2) and (3) the
earlier JSON beside the new pixels, which, ids being stable, are the same requests' pictures
under the same names (only a request no longer exported lacks its files); after (3) the new
export whole (and ``.old/``, deleted by the next export). Short of two requests' 53-bit hashes
meeting, no state has a JSON naming another request's pixels. Nothing is fsynced: after a power
loss the file system decides. One export per output file at a time.

A row the data set cannot hold is skipped, logged with its request id and counted by reason in
``info["skipped"]``: an input that is no picture (an image that does not decode, a tensor
without two dimensions, ``input_not_a_picture``), a malformed box (not a class index >= 0 or a
name with four finite corners, x0 <= x1 and y0 <= y1, or an answer that is not a list:
``box_malformed``), a class the card does not have (a name not among its labels or shared by
several, an index past them, or any name when the card is not known: ``label_not_on_card``), a
box mostly (over half its area) outside its image (``box_outside_image``), one whose width,
height or area is not a finite number (``box_not_finite``), or a gold row whose known answer
was not given (``gold_answer_unknown``). Boxes that reach a little past the image's edge are
clipped to it and counted in ``info["clipped_boxes"]``; a box of no width or height (which the
detection task accepts) is left out, its image kept, and counted in ``info["flat_boxes"]``. The
file is strict JSON (``allow_nan=False``).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from auditstream.wire import ImageInput, decode_input

log = logging.getLogger(__name__)
DECISIVE_WITH_BOXES = ("accept", "correct")
ID_BITS = 53  # image ids below 2**53: exact as a JSON number in any reader, and an int64
GoldAnswers = Mapping[tuple[str, str], Any]  # (request id, model version) -> a gold item's known answer


class _Unusable(ValueError):
    """A row the data set cannot hold; the message says why (``reason``: its count's key)."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        super().__init__(detail)


AUDIT_SPLIT_RULE = ("audit_split is the request's value on the audit store's train/certify split (its key: "
                    "audit_split_key): a model trained on these images must use only those with audit_split >= a "
                    "certify share s, and its card must record data_hygiene {certify_share: s, split_key_id}, so that "
                    "certify --from-audits and promote judge it on the rest only")


def images_folder(out: Path) -> Path:
    """Where :func:`export_coco` puts the pixels of the annotation file ``out``:
    ``<out stem>_images/`` beside it."""
    out = Path(out)
    return out.with_name(f"{out.stem}_images")


def image_id(request_id: str, is_gold: bool = False, attempt: int = 0) -> int:
    """The stable COCO image id of a request (a gold item's apart from traffic with the same
    request id): the first 53 bits of a SHA-256, >= 1. ``attempt`` > 0: the next candidate, when
    an earlier one is another request's."""
    text = ("gold\0" if is_gold else "traffic\0") + request_id + (f"\0{attempt}" if attempt else "")
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
    return (int.from_bytes(digest[:8], "big") >> (64 - ID_BITS)) or 1


def coco_from_labels(rows: Iterable[dict[str, Any]], images_dir: Path, labels: Sequence[str] = (),
                     gold_answers: GoldAnswers | None = None, folder_name: str | None = None) -> dict[str, Any]:
    """The COCO dict for label rows (as :meth:`store.AuditStore.labels` yields them); writes the
    pixels into ``images_dir``, which ``file_name`` calls ``folder_name`` (default: its own name;
    :func:`export_coco` writes into a temporary folder renamed later). ``labels``: the card's
    (categories, class names); ``gold_answers``: the known answers of the gold items among
    ``rows`` (:meth:`store.AuditStore.gold_answers`), by (request id, model version)."""
    latest: dict[tuple[bool, str], dict[str, Any]] = {}
    for row in rows:
        if row["verdict_kind"] not in DECISIVE_WITH_BOXES + ("reject",):
            continue
        key = (bool(row.get("is_gold", False)), row["request_id"])
        seen = latest.get(key)
        if seen is None or (row["review_round"], row["decided_at_s"]) >= (seen["review_round"], seen["decided_at_s"]):
            latest[key] = row
    folder_name = images_dir.name if folder_name is None else folder_name
    names = _class_names(labels)
    images_dir.mkdir(parents=True, exist_ok=True)
    images, annotations, classes, skipped, clipped, flat = [], [], set(), Counter(), 0, 0
    taken: dict[int, tuple[bool, str]] = {}
    for (gold, request_id), row in sorted(latest.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        try:  # everything about the row is checked before any of its files is written
            answer = _answer(row, gold, gold_answers)
            if answer is None:  # a reject, or gold that should be rejected: no picture of objects
                continue
            every = _boxes(answer, labels, names)
            found = [(label, box) for label, box in every if box[0] < box[2] and box[1] < box[3]]
            number = _free_id(request_id, gold, taken)
            pixels = _pixels(row["input"], number, folder_name)
            inside = [(label, _clipped(box, pixels.entry["width"], pixels.entry["height"])) for label, box in found]
            boxes = [(label, _bbox(box)) for label, box in inside]
        except _Unusable as e:
            skipped[e.reason] += 1
            log.warning("request %.80r left out of the COCO export: %s", request_id, e)
            continue
        taken[number] = (gold, request_id)
        entry = {"id": number, "request_id": request_id, "model": row["model"],
                 "model_version": row["model_version"], "route": row["route"],
                 "inclusion_prob": row["inclusion_prob"], "verdict_kind": None if gold else row["verdict_kind"],
                 "is_gold": gold, "audit_split": row.get("audit_split"), "audit_split_key": row.get("audit_split_key")}
        entry.update(pixels.write(images_dir))
        images.append(entry)
        clipped += sum(a != b for (_, a), (_, b) in zip(found, inside))
        flat += len(every) - len(found)
        for label, (bbox, area) in boxes:
            classes.add(label)
            annotations.append({"id": len(annotations) + 1, "image_id": number, "category_id": label,
                                "bbox": bbox, "area": area, "iscrowd": 0})
    if len({img["id"] for img in images}) != len(images):  # _free_id's promise, checked: COCO needs it
        raise RuntimeError("two COCO images were given one id")
    if skipped:
        log.warning("COCO export: %d rows left out (%s)", sum(skipped.values()),
                    ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items())))
    # Every class on the card, as the detector's own data set lists them (training/detector/data.py,
    # to_coco): category ids are the card's class indices. No card: the indices seen.
    ids = range(len(labels)) if labels else sorted(classes)
    categories = [{"id": c, "name": labels[c] if labels else str(c)} for c in ids]
    if clipped:
        log.warning("COCO export: %d boxes reached past their image and were clipped to it", clipped)
    if flat:
        log.warning("COCO export: %d boxes of no width or height left out (their images kept)", flat)
    split_keys = sorted({img["audit_split_key"] for img in images if img["audit_split_key"]})
    return {"info": {"description": "auditstream detection verdicts", "skipped": dict(sorted(skipped.items())),
                     "clipped_boxes": clipped, "flat_boxes": flat, "audit_split_keys": split_keys,
                     "audit_split_rule": AUDIT_SPLIT_RULE},
            "images": images, "annotations": annotations, "categories": categories}


def export_coco(rows: Iterable[dict[str, Any]], out: Path, labels: Sequence[str] = (),
                gold_answers: GoldAnswers | None = None) -> int:
    """Write ``out`` (a COCO JSON file) and its pixels (:func:`images_folder`: ``<out
    stem>_images/``), both staged and then renamed into place in the order the module's
    docstring gives; returns the number of images."""
    out = Path(out)
    folder = images_folder(out)
    staging, retired = folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")
    tmp = out.with_name(out.name + ".tmp")
    if retired.exists() and not folder.exists():  # a crash between steps (1) and (2): put it back first
        retired.rename(folder)
    for leftover in (staging, retired):  # of an export that did not finish
        if leftover.exists():
            shutil.rmtree(leftover)
    moved_old = placed_new = False
    try:
        coco = coco_from_labels(rows, staging, labels, gold_answers, folder.name)
        tmp.write_text(json.dumps(coco, allow_nan=False), encoding="utf-8")  # strict JSON: no NaN or Infinity
        if folder.exists():
            folder.rename(retired)  # (1)
            moved_old = True
        staging.rename(folder)  # (2)
        placed_new = True
        tmp.replace(out)  # (3)
    except BaseException:  # undone in reverse: the earlier export stays whole
        if placed_new:
            folder.rename(staging)
        if moved_old:
            retired.rename(folder)
        shutil.rmtree(staging, ignore_errors=True)
        tmp.unlink(missing_ok=True)
        raise
    shutil.rmtree(retired, ignore_errors=True)  # (4)
    return len(coco["images"])


def _answer(row: dict[str, Any], gold: bool, gold_answers: GoldAnswers | None) -> Any:
    """The boxes a row's image is annotated with: the auditor's (None for a reject), or for a
    gold item its known answer (None: should be rejected), never an auditor's verdict."""
    if not gold:
        return None if row["verdict_kind"] == "reject" else row["human_label"]
    key = (row["request_id"], row["model_version"])
    if gold_answers is None or key not in gold_answers:
        raise _Unusable("gold_answer_unknown", "a gold item whose known answer was not given "
                        "(its auditors' verdicts are no annotation)")
    return gold_answers[key]


def _free_id(request_id: str, gold: bool, taken: Mapping[int, tuple[bool, str]]) -> int:
    """:func:`image_id` of the request, or its next candidate while another request holds it
    (requests come in request id order, so the same set gives the same ids)."""
    attempt = 0
    while (number := image_id(request_id, gold, attempt)) in taken:
        attempt += 1
    return number


def _class_names(labels: Sequence[str]) -> dict[str, int]:
    """Each label that names one class of the card -> its index (a name given to several
    classes names none)."""
    count = Counter(labels)
    return {name: i for i, name in enumerate(labels) if count[name] == 1}


def _boxes(output: Any, labels: Sequence[str] = (), names: Mapping[str, int] | None = None
           ) -> list[tuple[int, tuple[float, float, float, float]]]:
    """(class index, box) of every box of a detection answer; :class:`_Unusable` when any is
    malformed. The store takes any JSON correction from a client: a box drawn backwards, a NaN
    corner or a class of the wrong type must not turn into "no object here" (a negative example).
    A class given by its name (the store takes "a class index or a name") is the index of that
    name among the card's ``labels`` (``names``: :func:`_class_names`); a name the card does not
    have, or an index past its labels, is no class of the data set: the row is left out
    (``label_not_on_card``), as it would be a negative example too. A box of no width or height
    (x0 == x1: the task accepts it, a thin object rounded to whole pixels) is no annotation COCO
    can use: left out and counted, the row kept."""
    if not isinstance(output, list):
        raise _Unusable("box_malformed", f"the answer is {type(output).__name__}, not a list of boxes")
    names = _class_names(labels) if names is None else names
    out = []
    for det in output:
        box, label = (det.get("box"), det.get("label")) if isinstance(det, dict) else (None, None)
        if not ((isinstance(label, int) and not isinstance(label, bool) and label >= 0
                 or isinstance(label, str) and label) and isinstance(box, list)
                and len(box) == 4 and all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
                                          for v in box) and box[0] <= box[2] and box[1] <= box[3]):
            raise _Unusable("box_malformed", f"{det!r:.200} is not a class index >= 0 or a name with a box "
                            "[x0, y0, x1, y1] of finite numbers, x0 <= x1 and y0 <= y1")
        if isinstance(label, str):
            if label not in names:
                why = ("the model's card is not known" if not labels else
                       "the card gives it to several classes" if label in labels else "the card has no such label")
                raise _Unusable("label_not_on_card", f"class name {label!r:.100} names no class: {why}")
            label = names[label]
        elif labels and label >= len(labels):
            raise _Unusable("label_not_on_card", f"class index {label} is past the card's {len(labels)} labels")
        out.append((label, tuple(float(v) for v in box)))
    return out


def _clipped(box: tuple[float, float, float, float], width: int, height: int) -> tuple[float, float, float, float]:
    """``box`` cut to the image: a model's box may reach a little past the edge, as torchvision's
    detectors clip theirs. :class:`_Unusable` when less than half of it is inside: that is no
    object of this picture, and clipping it would invent one along the edge."""
    _bbox(box)  # its own width, height and area are finite (box_not_finite) before any comparison
    x0, y0, x1, y1 = max(box[0], 0.0), max(box[1], 0.0), min(box[2], float(width)), min(box[3], float(height))
    inside = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    if inside < 0.5 * (box[2] - box[0]) * (box[3] - box[1]):
        raise _Unusable("box_outside_image", f"box {list(box)} lies mostly outside the {width}x{height} image")
    return x0, y0, x1, y1


def _bbox(box: tuple[float, float, float, float]) -> tuple[list[float], float]:
    """COCO's ``[x, y, w, h]`` and area of an ``[x0, y0, x1, y1]`` box; :class:`_Unusable` when
    a width, height or area is not finite (finite corners far apart overflow)."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    if not all(np.isfinite(v) for v in (w, h, w * h)):
        raise _Unusable("box_not_finite", f"box {list(box)} has width {w}, height {h}, area {w * h}: not finite")
    return [x0, y0, w, h], w * h


class _Pixels:
    """A row's picture, checked and encoded in memory: what :meth:`write` puts in the images folder."""

    def __init__(self, entry: dict[str, Any], files: dict[str, bytes]) -> None:
        self.entry, self.files = entry, files

    def write(self, images_dir: Path) -> dict[str, Any]:
        for name, data in self.files.items():  # a disk that fails here fails the export: not the row's doing
            (images_dir / name).write_bytes(data)
        return self.entry


def _pixels(encoded: Any, number: int, folder: str) -> _Pixels:
    """The picture of a row's input, its files named by the image id ``number`` in ``folder``;
    :class:`_Unusable` when it has none (an image that does not decode, a tensor that is no
    plane): anything its decoding raises is this row's."""
    try:
        return _image_pixels(decode_input(encoded), number, folder)
    except Exception as e:  # noqa: BLE001 - PIL and numpy raise many kinds for a bad input; it is this row's
        raise _Unusable("input_not_a_picture", f"its input is no picture: {e!r:.300}") from None


def _image_pixels(value: Any, number: int, folder: str) -> _Pixels:
    from PIL import Image

    stem = f"{number:016d}"  # every id below 2**53 has at most 16 digits: names sort as ids do
    if isinstance(value, ImageInput):
        name = f"{stem}.{'jpg' if value.format == 'jpeg' else 'png'}"
        with Image.open(io.BytesIO(value.data)) as picture:
            picture.load()  # the whole image decodes, not just its header
            width, height = picture.size
        return _Pixels({"file_name": f"{folder}/{name}", "width": width, "height": height}, {name: value.data})
    array = np.asarray(value)
    plane = np.squeeze(array)
    if plane.ndim == 3 and plane.shape[0] in (1, 3):  # CHW -> HWC
        plane = np.moveaxis(plane, 0, -1)
    if plane.ndim not in (2, 3) or 0 in plane.shape:
        raise ValueError(f"a tensor of shape {list(array.shape)} is no picture (it needs height and width)")
    height, width = plane.shape[:2]
    npy = io.BytesIO()
    np.save(npy, array)
    return _Pixels({"file_name": f"{folder}/{stem}.png", "width": int(width), "height": int(height),
                    "tensor_file": f"{folder}/{stem}.npy"}, {f"{stem}.npy": npy.getvalue(), f"{stem}.png": _png(plane)})


def _png(plane: np.ndarray) -> bytes:
    """An 8-bit picture of a float plane (0..1 or 0..255 as the values say), to look at only."""
    from PIL import Image

    values = np.nan_to_num(plane.astype(np.float64))
    scale = 255.0 if values.max(initial=0.0) <= 1.0 else 1.0
    out = io.BytesIO()
    Image.fromarray(np.clip(values * scale, 0, 255).astype(np.uint8).squeeze()).save(out, format="PNG")
    return out.getvalue()
