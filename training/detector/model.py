"""The detector: a small anchor-free CenterNet (Zhou et al. 2019, "Objects as Points") for digits,
and a reader that reads each of its boxes a second time.

``DetectorNet`` maps a label image [b, 64, 64] to three dense maps on a 16x16 grid (output
stride 4): a class heatmap (10 logits per cell; a digit is a peak at the cell of its box centre),
the box size (w, h, in cells) and the sub-cell offset of the centre. Training targets and the
loss are here too (:func:`targets`, :func:`loss`): penalty-reduced focal loss on the heatmap
against Gaussian bumps, L1 on size and offset at the centre cells, and a cross-entropy of the
class logits at the centre cells.

``ReaderNet`` is the second look: each box is resampled from the image to a 16x16 crop
(:func:`crop_boxes`, a little margin around it) and a small CNN of its own reads it as one of the
ten digits or *not a digit* (:func:`reading_examples`, :func:`reading_loss`). Nearly every false
box the detector was sure of was a misread digit, and the detector reads a digit from a 16x16
grid of features it shares with finding it; a reader that sees only the box, at its own scale,
errs on other images (two models err together less often than either alone: Dietterich 2000),
and where they disagree the box is doubtful.

``ExportedDetector`` is what is exported and served: it adds the decoding, so the graph needs no
NMS and no postprocessing beyond a threshold. A peak is a cell whose logit equals the 3x3 max
pool around it; the ``TOP_K`` highest peaks over all classes and cells (ONNX TopK) become boxes
``[x0, y0, x1, y1]`` in pixels and class ids. Each row is scored from three numbers: its peak
logit, its *rival* (the highest logit of any other class in the 3x3 cells around the peak: a
misread digit is a peak with a strong peak of the right class beside it) and its *reading* (the
reader's log-probability of the row's class on the row's box). The score is
``sigmoid(a * logit + a_rival * rival + a_read * reading + b)`` with the constants fitted on
calibration data (``a > 0``, ``a_rival <= 0``, ``a_read >= 0``), and the rows are re-ordered by
it. Last, every box edge is rounded to the nearest pixel edge (:func:`snap_to_pixels`): a box is
the tight box of a digit's ink *pixels*, so its edges are whole pixels, and the regression's
sub-pixel error (0.2-0.3 px on average) would otherwise cost IoU at every COCO threshold above
0.5 (the reader crops the unrounded box: rounding jumps at x.5, where two runtimes 1e-6 apart
would crop different pixels). Peaks, top-K and the final order are taken on logits, not on
sigmoids, because a sigmoid saturates to exactly 1.0 in float32 and equal values would make the
order of the rows depend on the runtime.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from auditstream.tasks.detection import iou_matrix
from training.detector.data import CLASSES, IMAGE_SIZE, MAX_OBJECTS, DetectionSet

STRIDE = 4
GRID = IMAGE_SIZE // STRIDE
TOP_K = 16  # rows per image in the graph: more than the most digits a label holds (MAX_OBJECTS)
assert TOP_K > MAX_OBJECTS
HEAT_PRIOR = 0.1  # initial heatmap probability (CenterNet's bias init, -2.19)
OUTPUT_NAMES = ("boxes", "labels", "scores")
CLASS_WEIGHT = 0.25  # of the centre-cell cross-entropy in the loss
IGNORE = -100  # class target of the cells without a digit centre
READ_SIZE = 16  # a box is resampled to READ_SIZE x READ_SIZE pixels for the reader
READ_MARGIN = 0.1  # of the box's width and height, on each side: the reader sees the digit's edges
NOT_A_DIGIT = CLASSES  # the reader's eleventh class
READ_JITTER = 0.08  # training boxes: each edge moves by up to this share of the box (at least 1 px)
BACKGROUND_PER_IMAGE = 2  # training crops per label of boxes where no digit is
READ_PER_STEP = 96  # of a batch's ~240 reading examples, a random subset: the reader's step costs 0.009 s, not 0.023


def _block(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU()]


class DetectorNet(nn.Module):
    """Image float32 [b, 64, 64] (0..1, dark ink on light paper) -> (heat logits [b, 10, 16, 16],
    size [b, 2, 16, 16] in cells, offset [b, 2, 16, 16] in cells)."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.fine = nn.Sequential(*_block(1, 16), *_block(16, 32, stride=2), *_block(32, 32))  # 32 x 32
        self.deep = nn.Sequential(*_block(32, width, stride=2),  # 16 x 16
                                  *_block(width, width), *_block(width, width, dilation=2),
                                  *_block(width, width, dilation=4), *_block(width, width))
        # The stride-2 features, folded onto the 16 x 16 grid (space-to-depth), give the box
        # heads the edge detail that sub-pixel boxes need.
        self.fold = nn.Conv2d(4 * 32, width, 1)

        def head(out: int, hidden: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(width, hidden, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden, out, 1))

        self.heat, self.size, self.offset = head(CLASSES, width), head(2, width // 2), head(2, width // 2)
        nn.init.constant_(self.heat[-1].bias, -math.log((1 - HEAT_PRIOR) / HEAT_PRIOR))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # Preprocessing in the graph: ink = 1 - x, then per-image standardisation, so paper tone,
        # lighting, ink darkness (and the 0..1 or 0..255 scale of the pixels) do not matter.
        x = 1.0 - image.unsqueeze(1)
        mean = x.mean(dim=(2, 3), keepdim=True)
        std = (x - mean).pow(2).mean(dim=(2, 3), keepdim=True).add(1e-6).sqrt()
        fine = self.fine((x - mean) / std)
        f = torch.relu(self.deep(fine) + self.fold(F.pixel_unshuffle(fine, 2)))
        return self.heat(f), self.size(f), self.offset(f)


class ReaderNet(nn.Module):
    """Crops float32 [n, 1, READ_SIZE, READ_SIZE] (0..1, dark ink on light paper) -> 11 logits:
    the digits 0..9 and :data:`NOT_A_DIGIT`."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.features = nn.Sequential(*_block(1, width // 4), *_block(width // 4, width // 2, stride=2),  # 8 x 8
                                      *_block(width // 2, width // 2), *_block(width // 2, width, stride=2),  # 4 x 4
                                      *_block(width, width), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                      nn.Linear(width, CLASSES + 1))

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        x = 1.0 - crops  # the detector's preprocessing, per crop
        mean = x.mean(dim=(2, 3), keepdim=True)
        std = (x - mean).pow(2).mean(dim=(2, 3), keepdim=True).add(1e-6).sqrt()
        return self.features((x - mean) / std)


def crop_boxes(images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Each box ``[x0, y0, x1, y1]`` (pixels, [n, 4]) of its image ([n, 64, 64]) with
    :data:`READ_MARGIN` around it, resampled bilinearly to [n, 1, READ_SIZE, READ_SIZE] (the
    box's aspect is not kept: the reader sees every digit at one size, as the 8x8 sources are).
    Outside the image the border pixels repeat. Plain arithmetic and ONNX GridSample."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    w, h = (x1 - x0).clamp(min=1.0), (y1 - y0).clamp(min=1.0)
    steps = (torch.arange(READ_SIZE, dtype=images.dtype) + 0.5) / READ_SIZE  # pixel centres, 0..1
    xs = (x0 - READ_MARGIN * w).unsqueeze(1) + steps.unsqueeze(0) * ((1 + 2 * READ_MARGIN) * w).unsqueeze(1)
    ys = (y0 - READ_MARGIN * h).unsqueeze(1) + steps.unsqueeze(0) * ((1 + 2 * READ_MARGIN) * h).unsqueeze(1)
    # grid_sample's coordinates with align_corners=False: -1 and 1 are the image's outer edges.
    gx, gy = xs * (2.0 / IMAGE_SIZE) - 1.0, ys * (2.0 / IMAGE_SIZE) - 1.0
    grid = torch.stack([gx.unsqueeze(1).expand(-1, READ_SIZE, -1), gy.unsqueeze(2).expand(-1, -1, READ_SIZE)], dim=-1)
    return F.grid_sample(images.unsqueeze(1), grid, mode="bilinear", padding_mode="border", align_corners=False)


class ExportedDetector(nn.Module):
    """The served graph: image [b, 64, 64] -> boxes [b, K, 4] (x0, y0, x1, y1 in pixels),
    labels int64 [b, K], scores [b, K] (calibrated, descending)."""

    def __init__(self, net: DetectorNet, reader: ReaderNet, platt_a: float, platt_b: float, platt_rival: float = 0.0,
                 platt_read: float = 0.0, top_k: int = TOP_K) -> None:
        super().__init__()
        self.net, self.reader, self.top_k = net, reader, top_k
        for name, value in (("platt_a", platt_a), ("platt_b", platt_b), ("platt_rival", platt_rival),
                            ("platt_read", platt_read)):
            self.register_buffer(name, torch.tensor(value, dtype=torch.float32))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.rows(image, snap=True)

    def rows(self, image: torch.Tensor, snap: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The graph's outputs; ``snap=False`` leaves the box edges unrounded (the export parity
        check compares the runtimes before the rounding, training/detector/train.py)."""
        logits, labels, boxes, rivals, readings = candidate_rows(self.net, self.reader, image, self.top_k)
        calibrated = logits * self.platt_a + rivals * self.platt_rival + readings * self.platt_read + self.platt_b
        calibrated, order = calibrated.topk(self.top_k, dim=1)  # best first by the calibrated logit
        labels = labels.gather(1, order)
        boxes = boxes.gather(1, order.unsqueeze(-1).expand(-1, -1, 4))
        return (snap_to_pixels(boxes) if snap else boxes), labels, torch.sigmoid(calibrated)


def candidate_rows(net: DetectorNet, reader: ReaderNet, image: torch.Tensor,
                   top_k: int = TOP_K) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`decode`'s rows of ``net``'s maps (peak logits, class ids, unrounded boxes, rivals),
    plus each row's reading [b, K]: the reader's log-probability of the row's class on its box."""
    logits, labels, boxes, rivals = decode(*net(image), top_k)
    b, k = labels.shape
    crops = crop_boxes(image.unsqueeze(1).expand(-1, k, -1, -1).reshape(b * k, IMAGE_SIZE, IMAGE_SIZE),
                       boxes.reshape(b * k, 4))
    readings = F.log_softmax(reader(crops), dim=1).gather(1, labels.reshape(b * k, 1)).reshape(b, k)
    return logits, labels, boxes, rivals, readings


def snap_to_pixels(boxes: torch.Tensor) -> torch.Tensor:
    """Box edges rounded to whole pixels (ties to even, as ONNX Round): ground-truth boxes are tight
    boxes of ink pixels, whose edges are pixel edges."""
    return torch.round(boxes)


def decode(heat: torch.Tensor, size: torch.Tensor, offset: torch.Tensor,
           top_k: int = TOP_K) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Peak logits [b, K] (descending), class ids int64 [b, K], boxes [b, K, 4] in pixels, and each
    peak's rival [b, K]: the highest logit of another class in the 3x3 cells around it."""
    b, classes, h, w = heat.shape
    pooled = F.max_pool2d(heat, 3, stride=1, padding=1)
    peaks = heat == pooled
    masked = torch.where(peaks, heat, torch.full_like(heat, -1e4))  # a non-peak never outranks a peak
    logits, index = masked.reshape(b, classes * h * w).topk(top_k, dim=1)
    labels = torch.div(index, h * w, rounding_mode="floor")
    cell = index - labels * (h * w)
    ys = torch.div(cell, w, rounding_mode="floor")
    xs = cell - ys * w
    gather = cell.unsqueeze(1).expand(b, 2, top_k)
    wh = size.reshape(b, 2, h * w).gather(2, gather) * STRIDE
    off = offset.reshape(b, 2, h * w).gather(2, gather)
    cx = (xs.to(heat.dtype) + off[:, 0]) * STRIDE
    cy = (ys.to(heat.dtype) + off[:, 1]) * STRIDE
    boxes = torch.stack([cx - wh[:, 0] / 2, cy - wh[:, 1] / 2, cx + wh[:, 0] / 2, cy + wh[:, 1] / 2], dim=-1)
    around = pooled.reshape(b, classes, h * w).gather(2, cell.unsqueeze(1).expand(b, classes, top_k))  # [b, C, K]
    own = torch.arange(classes).reshape(1, classes, 1) == labels.unsqueeze(1)
    rivals = torch.where(own, torch.full_like(around, -1e4), around).amax(dim=1)
    return logits, labels, boxes, rivals


def targets(batch: DetectionSet) -> dict[str, torch.Tensor]:
    """Training targets on the grid: ``heat`` [b, 10, G, G] (Gaussian bumps, 1 at each centre
    cell), and at each centre cell ``size`` / ``offset`` [b, 2, G, G] with ``mask`` [b, 1, G, G]."""
    n = len(batch)
    heat = np.zeros((n, CLASSES, GRID, GRID), dtype=np.float32)
    size = np.zeros((n, 2, GRID, GRID), dtype=np.float32)
    offset = np.zeros((n, 2, GRID, GRID), dtype=np.float32)
    mask = np.zeros((n, 1, GRID, GRID), dtype=np.float32)
    digit = np.full((n, GRID, GRID), IGNORE, dtype=np.int64)  # the class at each centre cell
    cells = np.arange(GRID, dtype=np.float32)
    for i, (boxes, labels) in enumerate(zip(batch.boxes, batch.labels)):
        for (x0, y0, x1, y1), label in zip(boxes, labels):
            cx, cy = (x0 + x1) / 2 / STRIDE, (y0 + y1) / 2 / STRIDE  # in cells
            w, h = (x1 - x0) / STRIDE, (y1 - y0) / STRIDE
            gx, gy = min(int(cx), GRID - 1), min(int(cy), GRID - 1)
            sigma = max(min(w, h) / 6.0, 0.4)
            bump = np.exp(-((cells[None, :] - gx) ** 2 + (cells[:, None] - gy) ** 2) / (2 * sigma**2))
            np.maximum(heat[i, label], bump, out=heat[i, label])
            size[i, :, gy, gx] = (w, h)
            offset[i, :, gy, gx] = (cx - gx, cy - gy)
            mask[i, 0, gy, gx] = 1.0
            digit[i, gy, gx] = label
    return {k: torch.from_numpy(v) for k, v in (("heat", heat), ("size", size), ("offset", offset), ("mask", mask),
                                                ("digit", digit))}


def loss(outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor], target: dict[str, torch.Tensor],
         box_weight: float = 2.0, class_weight: float = CLASS_WEIGHT) -> torch.Tensor:
    """Focal loss (alpha 2, beta 4) on the heatmap + ``box_weight`` * L1 on size and offset (in
    cells) + ``class_weight`` * softmax cross-entropy of the ten class logits at each centre cell,
    per object. The sigmoid focal loss scores each class on its own; the cross-entropy makes the
    classes compete where a digit is, so the right one outranks a look-alike (a misread digit is
    a false box and a missed one)."""
    heat_logits, size, offset = outputs
    gt, mask = target["heat"], target["mask"]
    n_objects = mask.sum().clamp(min=1.0)
    log_p, log_not_p = F.logsigmoid(heat_logits), F.logsigmoid(-heat_logits)
    p = log_p.exp()
    pos = gt.eq(1.0).float()
    focal = -(pos * (1 - p).pow(2) * log_p + (1 - pos) * (1 - gt).pow(4) * p.pow(2) * log_not_p).sum() / n_objects
    l1_size = (mask * (size - target["size"]).abs()).sum() / n_objects
    l1_offset = (mask * (offset - target["offset"]).abs()).sum() / n_objects
    reading = F.cross_entropy(heat_logits, target["digit"], ignore_index=IGNORE, reduction="sum") / n_objects
    return focal + box_weight * (l1_size + l1_offset) + class_weight * reading


def reading_examples(batch: DetectionSet, rng: np.random.Generator,
                     limit: int | None = READ_PER_STEP) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the reader trains on in one batch: (image index [m], box [m, 4], class [m]). Every
    digit's box with each edge moved by up to :data:`READ_JITTER` of the box (at least a pixel:
    the detector's boxes are that far off), and :data:`BACKGROUND_PER_IMAGE` boxes of a digit's
    size per label that overlap no digit (IoU < 0.25; on clutter or paper), as :data:`NOT_A_DIGIT`;
    of these, :data:`READ_PER_STEP` at random (``limit``)."""
    index, boxes, labels = [], [], []
    for i, (true_boxes, true_labels) in enumerate(zip(batch.boxes, batch.labels)):
        m = len(true_boxes)
        if m:
            size = np.maximum(np.tile(true_boxes[:, 2:] - true_boxes[:, :2], 2) * READ_JITTER, 1.0)
            boxes.append(true_boxes + rng.uniform(-1.0, 1.0, (m, 4)) * size)
            labels.append(true_labels)
            index.append(np.full(m, i))
        h = rng.uniform(8.0, 20.0, (4 * BACKGROUND_PER_IMAGE, 1))
        w = h * rng.uniform(0.4, 0.9, h.shape)
        corner = rng.uniform(0.0, 1.0, (len(h), 2)) * (IMAGE_SIZE + 6.0 - np.hstack([w, h])) - 3.0  # 3 px over the edge
        candidates = np.hstack([corner, corner + np.hstack([w, h])])
        if m:
            candidates = candidates[iou_matrix(candidates, true_boxes).max(axis=1) < 0.25]
        candidates = candidates[:BACKGROUND_PER_IMAGE]
        boxes.append(candidates)
        labels.append(np.full(len(candidates), NOT_A_DIGIT))
        index.append(np.full(len(candidates), i))
    index, boxes, labels = np.concatenate(index), np.concatenate(boxes), np.concatenate(labels)
    if limit is not None and len(index) > limit:
        chosen = np.sort(rng.choice(len(index), size=limit, replace=False))
        index, boxes, labels = index[chosen], boxes[chosen], labels[chosen]
    return index.astype(np.int64), boxes.astype(np.float32), labels.astype(np.int64)


def reading_loss(reader: ReaderNet, images: torch.Tensor, examples: tuple[np.ndarray, np.ndarray, np.ndarray]
                 ) -> torch.Tensor:
    """Mean cross-entropy of the reader on the crops of :func:`reading_examples`."""
    index, boxes, labels = (torch.as_tensor(a) for a in examples)  # arrays, or tensors from a worker process
    return F.cross_entropy(reader(crop_boxes(images[index], boxes)), labels)
