"""Detection verdicts as a COCO data set a detector can retrain on:
``auditstream labels export --format coco --model NAME --out DIR/annotations.json``.

One COCO image per audited request, its annotations the auditor's boxes:

- ``accept`` and ``correct`` verdicts give the boxes the auditor confirmed or drew (``bbox`` is
  ``[x, y, w, h]`` in pixels from the answer's ``[x0, y0, x1, y1]``, ``area`` = w·h,
  ``iscrowd`` 0, ``category_id`` the class index, as in the detector's own data set);
- ``reject`` verdicts ("no valid answer exists": an unreadable label) are left out, as are gold
  items unless asked for;
- an item reviewed twice keeps its last decisive verdict (highest review round, then the latest).

The pixels go beside the annotation file, in ``images/``: the request's own PNG or JPEG bytes,
or for a tensor input an 8-bit PNG to look at plus the exact array as ``.npy``
(``tensor_file`` on the image entry), which is what training reads. Each image entry also keeps
the request id, model version, route and inclusion probability (weight QC-sampled examples by
``1 / inclusion_prob`` for unbiased estimates). Categories are the class indices seen, named by
the card's labels when given.

A row the data set cannot hold is skipped, logged with its request id and counted by reason in
``info["skipped"]``: an input that is no picture (an image that does not decode, a tensor
without two dimensions, ``input_not_a_picture``), a malformed box (not a class index >= 0 with
four finite corners, x0 <= x1 and y0 <= y1, or an answer that is not a list: ``box_malformed``),
a box mostly (over half its area) outside its image (``box_outside_image``) or one whose width,
height or area is not a finite number (``box_not_finite``). Boxes that reach a little past the
image's edge are clipped to it and counted in ``info["clipped_boxes"]``; a box of no width or
height (which the detection task accepts) is left out, its image kept, and counted in
``info["flat_boxes"]``. The file is strict JSON (``allow_nan=False``).
"""

from __future__ import annotations

import io
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from auditstream.wire import ImageInput, decode_input

log = logging.getLogger(__name__)
DECISIVE_WITH_BOXES = ("accept", "correct")


class _Unusable(ValueError):
    """A row the data set cannot hold; the message says why (``reason``: its count's key)."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        super().__init__(detail)


def coco_from_labels(rows: Iterable[dict[str, Any]], images_dir: Path, labels: Sequence[str] = ()) -> dict[str, Any]:
    """The COCO dict for label rows (as :meth:`store.AuditStore.labels` yields them); writes the
    pixels into ``images_dir``."""
    latest: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["verdict_kind"] not in DECISIVE_WITH_BOXES + ("reject",):
            continue
        seen = latest.get(row["request_id"])
        if seen is None or (row["review_round"], row["decided_at_s"]) >= (seen["review_round"], seen["decided_at_s"]):
            latest[row["request_id"]] = row
    images_dir.mkdir(parents=True, exist_ok=True)
    images, annotations, classes, skipped, clipped, flat = [], [], set(), Counter(), 0, 0
    for row in sorted(latest.values(), key=lambda r: r["request_id"]):
        if row["verdict_kind"] == "reject":
            continue
        image_id = len(images) + 1
        try:  # everything about the row is checked before any of its files is written
            every = _boxes(row["human_label"])
            found = [(label, box) for label, box in every if box[0] < box[2] and box[1] < box[3]]
            pixels = _pixels(row["input"], image_id)
            inside = [(label, _clipped(box, pixels.entry["width"], pixels.entry["height"])) for label, box in found]
            boxes = [(label, _bbox(box)) for label, box in inside]
        except _Unusable as e:
            skipped[e.reason] += 1
            log.warning("request %.80r left out of the COCO export: %s", row["request_id"], e)
            continue
        entry = {"id": image_id, "request_id": row["request_id"], "model": row["model"],
                 "model_version": row["model_version"], "route": row["route"],
                 "inclusion_prob": row["inclusion_prob"], "verdict_kind": row["verdict_kind"]}
        entry.update(pixels.write(images_dir))
        images.append(entry)
        clipped += sum(a != b for (_, a), (_, b) in zip(found, inside))
        flat += len(every) - len(found)
        for label, (bbox, area) in boxes:
            classes.add(label)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": label,
                                "bbox": bbox, "area": area, "iscrowd": 0})
    if skipped:
        log.warning("COCO export: %d rows left out (%s)", sum(skipped.values()),
                    ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items())))
    categories = [{"id": c, "name": labels[c] if 0 <= c < len(labels) else str(c)} for c in sorted(classes)]
    if clipped:
        log.warning("COCO export: %d boxes reached past their image and were clipped to it", clipped)
    if flat:
        log.warning("COCO export: %d boxes of no width or height left out (their images kept)", flat)
    return {"info": {"description": "auditstream detection verdicts", "skipped": dict(sorted(skipped.items())),
                     "clipped_boxes": clipped, "flat_boxes": flat},
            "images": images, "annotations": annotations, "categories": categories}


def export_coco(rows: Iterable[dict[str, Any]], out: Path, labels: Sequence[str] = ()) -> int:
    """Write ``out`` (a COCO JSON file; pixels in ``out``'s folder under ``images/``), atomically;
    returns the number of images."""
    out = Path(out)
    coco = coco_from_labels(rows, out.parent / "images", labels)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(coco, allow_nan=False), encoding="utf-8")  # strict JSON: no NaN or Infinity
    tmp.replace(out)
    return len(coco["images"])


def _boxes(output: Any) -> list[tuple[int, tuple[float, float, float, float]]]:
    """(class index, box) of every box of a detection answer; :class:`_Unusable` when any is
    malformed. The store takes any JSON correction from a client: a box drawn backwards, a NaN
    corner or a class given as text must not turn into "no object here" (a negative example).
    A box of no width or height (x0 == x1: the task accepts it, a thin object rounded to whole
    pixels) is no annotation COCO can use: left out and counted, the row kept."""
    if not isinstance(output, list):
        raise _Unusable("box_malformed", f"the answer is {type(output).__name__}, not a list of boxes")
    out = []
    for det in output:
        box, label = (det.get("box"), det.get("label")) if isinstance(det, dict) else (None, None)
        if not (isinstance(label, int) and not isinstance(label, bool) and label >= 0 and isinstance(box, list)
                and len(box) == 4 and all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
                                          for v in box) and box[0] <= box[2] and box[1] <= box[3]):
            raise _Unusable("box_malformed", f"{det!r:.200} is not a class index >= 0 with a box [x0, y0, x1, y1] "
                            "of finite numbers, x0 <= x1 and y0 <= y1")
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
    """A row's picture, checked and encoded in memory: what :meth:`write` puts in ``images/``."""

    def __init__(self, entry: dict[str, Any], files: dict[str, bytes]) -> None:
        self.entry, self.files = entry, files

    def write(self, images_dir: Path) -> dict[str, Any]:
        for name, data in self.files.items():  # a disk that fails here fails the export: not the row's doing
            (images_dir / name).write_bytes(data)
        return self.entry


def _pixels(encoded: Any, image_id: int) -> _Pixels:
    """The picture of a row's input; :class:`_Unusable` when it has none (an image that does not
    decode, a tensor that is no plane): anything its decoding raises is this row's."""
    try:
        return _image_pixels(decode_input(encoded), image_id)
    except Exception as e:  # noqa: BLE001 - PIL and numpy raise many kinds for a bad input; it is this row's
        raise _Unusable("input_not_a_picture", f"its input is no picture: {e!r:.300}") from None


def _image_pixels(value: Any, image_id: int) -> _Pixels:
    from PIL import Image

    if isinstance(value, ImageInput):
        name = f"{image_id:08d}.{'jpg' if value.format == 'jpeg' else 'png'}"
        with Image.open(io.BytesIO(value.data)) as picture:
            picture.load()  # the whole image decodes, not just its header
            width, height = picture.size
        return _Pixels({"file_name": f"images/{name}", "width": width, "height": height}, {name: value.data})
    array = np.asarray(value)
    plane = np.squeeze(array)
    if plane.ndim == 3 and plane.shape[0] in (1, 3):  # CHW -> HWC
        plane = np.moveaxis(plane, 0, -1)
    if plane.ndim not in (2, 3) or 0 in plane.shape:
        raise ValueError(f"a tensor of shape {list(array.shape)} is no picture (it needs height and width)")
    height, width = plane.shape[:2]
    npy = io.BytesIO()
    np.save(npy, array)
    stem = f"{image_id:08d}"
    return _Pixels({"file_name": f"images/{stem}.png", "width": int(width), "height": int(height),
                    "tensor_file": f"images/{stem}.npy"}, {f"{stem}.npy": npy.getvalue(), f"{stem}.png": _png(plane)})


def _png(plane: np.ndarray) -> bytes:
    """An 8-bit picture of a float plane (0..1 or 0..255 as the values say), to look at only."""
    from PIL import Image

    values = np.nan_to_num(plane.astype(np.float64))
    scale = 255.0 if values.max(initial=0.0) <= 1.0 else 1.0
    out = io.BytesIO()
    Image.fromarray(np.clip(values * scale, 0, 255).astype(np.uint8).squeeze()).save(out, format="PNG")
    return out.getvalue()
