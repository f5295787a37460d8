"""Synthetic parcel labels: 1-12 handwritten digits scattered on a 64x64 label, with clutter.

Each image is grayscale float32 ``[IMAGE_SIZE, IMAGE_SIZE]`` in 0..1 (dark ink on light paper).
Its digits are scikit-learn's 8x8 handwritten digits of *one* split (training/data/split.py),
each drawn through its own random scale, rotation and slant (training/data/warp.py) at a random
place that does not overlap another digit; its box is the tight box of the digit's own ink
(warped ink > :data:`INK_THRESHOLD`), in pixel-edge coordinates ``[x0, y0, x1, y1]`` (pixel
``i`` spans ``[i, i + 1)``). Clutter that is *not* an object: digits cut by the border (their
centre outside the label, so less than half shows), flat strokes cropped from digits, straight lines, stamp
outlines (rectangles and rings), a paper tone with a lighting ramp, and sensor noise. Everything
is a function of the seed.

Two variants (:data:`VARIANTS`): ``standard`` (1-8 digits 10-20 px tall, a little clutter) and
``hard`` (4-12 digits 8-14 px tall, more clutter). :func:`to_coco` writes a set as COCO
annotations (what pycocotools' COCOeval reads).

Images of one set draw their digits with replacement from the split's digits, so they are i.i.d.
*given* that pool of digits; a digit image may appear in several labels (docs/detector.md says
what this means for the certificate).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from training.data.warp import random_affines, random_distortions, warp

IMAGE_SIZE = 64
CLASSES = 10
INK_THRESHOLD = 0.3  # of the warped 0..1 ink: what counts as the digit's own ink for its box
_CHUNK = 256  # images rendered per batched warp (bounds memory)


@dataclass(frozen=True)
class Variant:
    """Ranges of one data variant; counts are inclusive ranges per image."""

    name: str
    digits: tuple[int, int]
    height_px: tuple[float, float]  # the 8x8 source is drawn this many pixels tall
    rotation_deg: float
    shear: float
    border_digits: tuple[int, int]  # cut by the border, not objects
    fragments: tuple[int, int]  # a band of 2-3 rows of a digit, not objects
    lines: tuple[int, int]
    stamps: tuple[int, int]
    noise_sigma: tuple[float, float]
    max_overlap: float = 0.05  # of the smaller box: digits (and fragments) barely touch


STANDARD = Variant("standard", digits=(1, 8), height_px=(10.0, 20.0), rotation_deg=10.0, shear=0.15,
                   border_digits=(0, 2), fragments=(0, 2), lines=(0, 2), stamps=(0, 1), noise_sigma=(0.01, 0.04))
HARD = Variant("hard", digits=(4, 12), height_px=(8.0, 14.0), rotation_deg=15.0, shear=0.2,
               border_digits=(1, 3), fragments=(1, 4), lines=(1, 3), stamps=(1, 2), noise_sigma=(0.02, 0.06))
VARIANTS = {v.name: v for v in (STANDARD, HARD)}
MAX_OBJECTS = max(v.digits[1] for v in VARIANTS.values())


@dataclass(frozen=True)
class DetectionSet:
    """Rendered labels with their objects. ``boxes[i]`` float32 [m_i, 4] (x0, y0, x1, y1),
    ``labels[i]`` int64 [m_i], ``sources[i]`` the ``load_digits()`` index of each object."""

    images: np.ndarray
    boxes: list[np.ndarray]
    labels: list[np.ndarray]
    sources: list[np.ndarray] = field(repr=False)
    variant: str = "standard"

    def __len__(self) -> int:
        return len(self.images)

    @property
    def n_objects(self) -> int:
        return int(sum(len(b) for b in self.boxes))


def render(digit_images: np.ndarray, digit_labels: np.ndarray, digit_sources: np.ndarray, n: int,
           rng: np.random.Generator, variant: Variant = STANDARD, elastic: float = 0.0) -> DetectionSet:
    """``n`` labels whose digits (and clutter glyphs) are drawn from ``digit_images`` [N, 8, 8]
    (ink 0..16), numpy only. ``elastic`` > 0 bends every glyph's strokes by a smooth random field
    of that many source pixels (standard deviation; training augmentation only: the calibration
    and test labels are drawn without it)."""
    if n < 0:
        raise ValueError(f"n={n} must be >= 0")
    images, boxes, labels, sources = [], [], [], []
    for start in range(0, n, _CHUNK):
        chunk = _render_chunk(np.asarray(digit_images, dtype=np.float32) / 16.0, np.asarray(digit_labels),
                              np.asarray(digit_sources), min(_CHUNK, n - start), rng, variant, elastic)
        images.append(chunk[0])
        boxes += chunk[1]
        labels += chunk[2]
        sources += chunk[3]
    stacked = np.concatenate(images) if images else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.float32)
    return DetectionSet(stacked, boxes, labels, sources, variant.name)


def make_detection_set(split: str, n: int, seed: int, variant: str = "standard") -> DetectionSet:
    """``n`` labels from the digits of ``split`` only (any name :func:`training.data.split.load_split` takes)."""
    from training.data.split import load_split  # scikit-learn, imported only here

    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r} not one of {sorted(VARIANTS)}")
    digits = load_split(split)
    return render(digits.images, digits.labels, digits.indices, n, np.random.default_rng(seed), VARIANTS[variant])


def training_batches(split: str, batch_size: int, steps: int, rng: np.random.Generator,
                     hard_share: float, elastic: float = 0.0) -> Iterator[DetectionSet]:
    """``steps`` fresh batches from ``split``'s digits; each image is ``hard`` with probability
    ``hard_share``, else ``standard`` (one model serves both); ``elastic``: see :func:`render`."""
    from training.data.split import load_split

    digits = load_split(split)
    for _ in range(steps):
        n_hard = int(rng.binomial(batch_size, hard_share))
        parts = [render(digits.images, digits.labels, digits.indices, k, rng, v, elastic)
                 for k, v in ((batch_size - n_hard, STANDARD), (n_hard, HARD)) if k]
        yield DetectionSet(np.concatenate([p.images for p in parts]), [b for p in parts for b in p.boxes],
                           [lab for p in parts for lab in p.labels], [s for p in parts for s in p.sources], "mixed")


def to_coco(data: DetectionSet) -> dict:
    """COCO ground truth: images and annotations with ids from 1, ``bbox`` [x, y, w, h],
    ``area`` = w * h, ``iscrowd`` 0, categories 0..9 named by their digit."""
    images, annotations = [], []
    for i, (boxes, labels) in enumerate(zip(data.boxes, data.labels)):
        images.append({"id": i + 1, "width": IMAGE_SIZE, "height": IMAGE_SIZE, "file_name": f"{data.variant}-{i + 1}"})
        for box, label in zip(boxes, labels):
            x0, y0, x1, y1 = (float(v) for v in box)
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(label),
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
    categories = [{"id": d, "name": str(d), "supercategory": "digit"} for d in range(CLASSES)]
    return {"images": images, "annotations": annotations, "categories": categories}


# --------------------------------------------------------------------------------------------
# rendering


def _render_chunk(ink: np.ndarray, labels: np.ndarray, sources: np.ndarray, n: int, rng: np.random.Generator,
                  v: Variant, elastic: float
                  ) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    counts = {name: rng.integers(lo, hi + 1, size=n) for name, (lo, hi) in
              (("digits", v.digits), ("border", v.border_digits), ("fragments", v.fragments))}
    total = {k: int(c.sum()) for k, c in counts.items()}
    k = sum(total.values())
    choice = rng.integers(0, len(ink), size=k)
    glyphs = ink[choice].copy()
    # Fragments: keep one band of 2-3 rows of the digit, a flat stroke (a band of columns would
    # be a vertical stroke, which is what a "1" looks like).
    for g in range(total["digits"] + total["border"], k):
        width, start = int(rng.integers(2, 4)), int(rng.integers(0, 7))
        glyphs[g, :start] = 0.0
        glyphs[g, start + width:] = 0.0
    patch = int(np.ceil(v.height_px[1] * 1.45)) + 4
    maps = random_affines(rng, k, (v.height_px[0] / 8.0, v.height_px[1] / 8.0), v.rotation_deg, v.shear)
    # Drawn only when asked, so labels without it stay what the same seed always gave.
    fields = random_distortions(rng, k, elastic) if elastic > 0 else None
    patches = warp(glyphs, maps, patch, distortion=fields)
    inked = patches > INK_THRESHOLD
    rows, cols = inked.any(2), inked.any(1)
    has_ink = rows.any(1)
    r0, r1 = rows.argmax(1), patch - rows[:, ::-1].argmax(1)  # ink rows [r0, r1)
    c0, c1 = cols.argmax(1), patch - cols[:, ::-1].argmax(1)

    canvas = np.zeros((n, IMAGE_SIZE + 2 * patch, IMAGE_SIZE + 2 * patch), dtype=np.float32)
    out_boxes, out_labels, out_sources = [], [], []
    offsets = {name: np.concatenate([[0], np.cumsum(c)]) for name, c in counts.items()}
    base = {"digits": 0, "border": total["digits"], "fragments": total["digits"] + total["border"]}
    for i in range(n):
        placed: list[np.ndarray] = []  # ink boxes (image coordinates) of digits and fragments
        objects = []
        for g in range(base["digits"] + offsets["digits"][i], base["digits"] + offsets["digits"][i + 1]):
            box = _place_inside(g, placed, rng, v, r0, r1, c0, c1, patch, has_ink)
            if box is not None:
                _stamp(canvas[i], patches[g], box, g, r0, c0, patch)
                placed.append(box)
                objects.append((box, g))
        for g in range(base["fragments"] + offsets["fragments"][i], base["fragments"] + offsets["fragments"][i + 1]):
            box = _place_inside(g, placed, rng, v, r0, r1, c0, c1, patch, has_ink)
            if box is not None:
                _stamp(canvas[i], patches[g], box, g, r0, c0, patch)
                placed.append(box)
        for g in range(base["border"] + offsets["border"][i], base["border"] + offsets["border"][i + 1]):
            _place_on_border(canvas[i], patches[g], g, rng, r0, r1, c0, c1, patch, has_ink)
        out_boxes.append(np.array([b for b, _ in objects], dtype=np.float32).reshape(-1, 4))
        out_labels.append(labels[choice[[g for _, g in objects]]].astype(np.int64))
        out_sources.append(sources[choice[[g for _, g in objects]]].astype(np.int64))
    ink_map = canvas[:, patch:patch + IMAGE_SIZE, patch:patch + IMAGE_SIZE]
    ink_map = np.maximum(ink_map, _clutter(n, rng, v))
    return _paper(ink_map, rng, v), out_boxes, out_labels, out_sources


def _place_inside(g: int, placed: list[np.ndarray], rng: np.random.Generator, v: Variant, r0, r1, c0, c1,
                  patch: int, has_ink: np.ndarray, tries: int = 30) -> np.ndarray | None:
    """An ink box for glyph ``g`` wholly inside the label and overlapping no placed box by more
    than ``v.max_overlap`` of the smaller one; None when none was found (the glyph is dropped)."""
    if not has_ink[g]:
        return None
    h, w = int(r1[g] - r0[g]), int(c1[g] - c0[g])
    if h > IMAGE_SIZE - 2 or w > IMAGE_SIZE - 2:
        return None
    for _ in range(tries):
        x0, y0 = int(rng.integers(1, IMAGE_SIZE - w)), int(rng.integers(1, IMAGE_SIZE - h))
        box = np.array([x0, y0, x0 + w, y0 + h], dtype=np.float64)
        if all(_overlap(box, other) <= v.max_overlap for other in placed):
            return box
    return None


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over the smaller box's area."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return float(iw * ih / smaller)


def _stamp(canvas: np.ndarray, glyph: np.ndarray, box: np.ndarray, g: int, r0, c0, patch: int) -> None:
    """Max-composite ``glyph`` so that its ink box lands on ``box`` (canvas padded by ``patch``)."""
    top, left = int(box[1]) - int(r0[g]) + patch, int(box[0]) - int(c0[g]) + patch
    region = canvas[top:top + patch, left:left + patch]
    np.maximum(region, glyph, out=region)


def _place_on_border(canvas: np.ndarray, glyph: np.ndarray, g: int, rng: np.random.Generator, r0, r1, c0, c1,
                     patch: int, has_ink: np.ndarray) -> None:
    """A digit whose ink centre lies outside the label (up to half its size out): less than half shows."""
    if not has_ink[g]:
        return
    h, w = float(r1[g] - r0[g]), float(c1[g] - c0[g])
    side = int(rng.integers(0, 4))
    along = rng.uniform(0, IMAGE_SIZE)
    if side < 2:  # left / right
        cx = -rng.uniform(0, w / 2) if side == 0 else IMAGE_SIZE + rng.uniform(0, w / 2)
        cy = along
    else:  # top / bottom
        cy = -rng.uniform(0, h / 2) if side == 2 else IMAGE_SIZE + rng.uniform(0, h / 2)
        cx = along
    x0, y0 = int(round(cx - w / 2)), int(round(cy - h / 2))
    x0 = min(max(x0, -patch + 1), IMAGE_SIZE + patch - int(w) - 1)
    y0 = min(max(y0, -patch + 1), IMAGE_SIZE + patch - int(h) - 1)
    top, left = y0 - int(r0[g]) + patch, x0 - int(c0[g]) + patch
    top = min(max(top, 0), canvas.shape[0] - patch)
    left = min(max(left, 0), canvas.shape[1] - patch)
    region = canvas[top:top + patch, left:left + patch]
    np.maximum(region, glyph, out=region)


def _clutter(n: int, rng: np.random.Generator, v: Variant) -> np.ndarray:
    """Straight lines across the label and stamp outlines (rectangles, rings), as ink in 0..1."""
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) + 0.5
    clutter = np.zeros((n, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    n_lines = rng.integers(v.lines[0], v.lines[1] + 1, size=n)
    n_stamps = rng.integers(v.stamps[0], v.stamps[1] + 1, size=n)
    for i in range(n):
        for _ in range(n_lines[i]):
            angle = rng.uniform(0, np.pi)
            px, py = rng.uniform(0, IMAGE_SIZE, size=2)
            distance = np.abs((xx - px) * np.sin(angle) - (yy - py) * np.cos(angle))
            width, strength = rng.uniform(0.4, 0.9), rng.uniform(0.3, 0.8)
            np.maximum(clutter[i], strength * np.clip(1.0 - distance / width, 0, 1), out=clutter[i])
        for _ in range(n_stamps[i]):
            cx, cy = rng.uniform(8, IMAGE_SIZE - 8, size=2)
            size, strength = rng.uniform(8, 22), rng.uniform(0.25, 0.6)
            if rng.random() < 0.5:  # a ring
                distance = np.abs(np.hypot(xx - cx, yy - cy) - size)
            else:  # a rectangle outline
                half_w, half_h = size, size * rng.uniform(0.5, 1.0)
                dx, dy = np.abs(xx - cx) - half_w, np.abs(yy - cy) - half_h
                distance = np.abs(np.maximum(dx, dy))
            np.maximum(clutter[i], strength * np.clip(1.0 - distance / 0.8, 0, 1), out=clutter[i])
    return clutter


def _paper(ink: np.ndarray, rng: np.random.Generator, v: Variant) -> np.ndarray:
    """Ink on paper: a paper tone with a lighting ramp, an ink darkness, sensor noise; 0..1."""
    n = ink.shape[0]
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) / IMAGE_SIZE - 0.5
    gy, gx = rng.uniform(-0.06, 0.06, size=(2, n, 1, 1))
    paper = rng.uniform(0.72, 0.95, size=(n, 1, 1)) + gy * yy + gx * xx
    ink_level = rng.uniform(0.04, 0.3, size=(n, 1, 1))
    image = paper - np.clip(ink, 0, 1) * (paper - ink_level)
    image += rng.normal(0, 1, size=image.shape) * rng.uniform(*v.noise_sigma, size=(n, 1, 1))
    return np.clip(image, 0, 1).astype(np.float32)
