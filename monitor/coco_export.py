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
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from auditstream.wire import ImageInput, decode_input

DECISIVE_WITH_BOXES = ("accept", "correct")


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
    images, annotations, classes = [], [], set()
    for row in sorted(latest.values(), key=lambda r: r["request_id"]):
        if row["verdict_kind"] == "reject":
            continue
        boxes = _boxes(row["human_label"])
        image_id = len(images) + 1
        entry = {"id": image_id, "request_id": row["request_id"], "model": row["model"],
                 "model_version": row["model_version"], "route": row["route"],
                 "inclusion_prob": row["inclusion_prob"], "verdict_kind": row["verdict_kind"]}
        entry.update(_write_pixels(row["input"], images_dir, image_id))
        images.append(entry)
        for label, (x0, y0, x1, y1) in boxes:
            classes.add(label)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": label,
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
    categories = [{"id": c, "name": labels[c] if 0 <= c < len(labels) else str(c)} for c in sorted(classes)]
    return {"info": {"description": "auditstream detection verdicts"}, "images": images,
            "annotations": annotations, "categories": categories}


def export_coco(rows: Iterable[dict[str, Any]], out: Path, labels: Sequence[str] = ()) -> int:
    """Write ``out`` (a COCO JSON file; pixels in ``out``'s folder under ``images/``), atomically;
    returns the number of images."""
    out = Path(out)
    coco = coco_from_labels(rows, out.parent / "images", labels)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(coco), encoding="utf-8")
    tmp.replace(out)
    return len(coco["images"])


def _boxes(output: Any) -> list[tuple[int, tuple[float, float, float, float]]]:
    """(class index, box) of every well-formed box of a detection answer."""
    out = []
    for det in output if isinstance(output, list) else []:
        box, label = (det.get("box"), det.get("label")) if isinstance(det, dict) else (None, None)
        if (isinstance(label, int) and not isinstance(label, bool) and isinstance(box, list) and len(box) == 4
                and all(isinstance(v, (int, float)) and np.isfinite(v) for v in box) and box[0] < box[2] and box[1] < box[3]):
            out.append((label, tuple(float(v) for v in box)))
    return out


def _write_pixels(encoded: Any, images_dir: Path, image_id: int) -> dict[str, Any]:
    value = decode_input(encoded)
    if isinstance(value, ImageInput):
        from PIL import Image

        name = f"{image_id:08d}.{'jpg' if value.format == 'jpeg' else 'png'}"
        (images_dir / name).write_bytes(value.data)
        with Image.open(io.BytesIO(value.data)) as picture:
            width, height = picture.size
        return {"file_name": f"images/{name}", "width": width, "height": height}
    array = np.asarray(value)
    np.save(images_dir / f"{image_id:08d}.npy", array)
    plane = np.squeeze(array)
    if plane.ndim == 3 and plane.shape[0] in (1, 3):  # CHW -> HWC
        plane = np.moveaxis(plane, 0, -1)
    height, width = plane.shape[:2]
    _save_png(plane, images_dir / f"{image_id:08d}.png")
    return {"file_name": f"images/{image_id:08d}.png", "width": int(width), "height": int(height),
            "tensor_file": f"images/{image_id:08d}.npy"}


def _save_png(plane: np.ndarray, path: Path) -> None:
    """An 8-bit picture of a float plane (0..1 or 0..255 as the values say), to look at only."""
    from PIL import Image

    values = np.nan_to_num(plane.astype(np.float64))
    scale = 255.0 if values.max(initial=0.0) <= 1.0 else 1.0
    Image.fromarray(np.clip(values * scale, 0, 255).astype(np.uint8).squeeze()).save(path)
