"""Certify a detector's two score thresholds: what is auto-accepted, and what is dropped.

A detector answers one image with scored boxes. Boxes scoring ``>= t_high`` are auto-accepted;
boxes scoring ``< t_low`` are dropped; the boxes in between go to auditors, and an image whose
every kept box clears ``t_high`` needs no human. Both thresholds are chosen on calibration
images, and **the image is the exchangeable unit**: calibration images (not boxes) are i.i.d.
draws of the images to come, while boxes of one image share its lighting, clutter and crowding.

Which boxes are right: in each image the boxes are matched to the true objects greedily in
descending score (as COCO does): a box is *true* when it takes a not yet taken object of its
class with IoU ``>= iou`` (0.5). A box's status then depends only on the boxes that outrank it,
so it does not change with the thresholds, and per image ``A(t)`` (boxes ``>= t``), ``F(t)``
(false ones among them) and the objects missed by the boxes ``>= t`` are simple counts.

**High threshold: Learn-then-Test on the false-discovery rate** (Angelopoulos, Bates, Candès,
Jordan, Lei 2021). The promise is about the share of accepted boxes that are false, pooled over
images: ``FDR(t) = E[F(t)] / E[A(t)] <= alpha``. It is a ratio of per-image sums, not a mean of
per-image values, so it is turned into one mean first: ``FDR(t) <= alpha`` exactly when
``E[F(t) - alpha * A(t)] <= 0`` (for ``E[A(t)] > 0``). With ``K`` the most boxes an image can
have (the graph's rows), ``0 <= F <= A <= K`` gives ``-alpha K <= F - alpha A <= (1 - alpha) K``,
so the per-image loss ``l(t) = (F(t) - alpha A(t) + alpha K) / K`` lies in [0, 1], the images'
losses are i.i.d., and ``FDR(t) <= alpha`` exactly when ``E[l(t)] <= alpha``. For each threshold
``t`` of a grid fixed in advance (:data:`HIGH_GRID`), a valid p-value for the
null ``H_t: E[l(t)] > alpha`` comes from a concentration bound for means of [0, 1] variables:
Hoeffding-Bentkus (:func:`hoeffding_bentkus_p`) or the Waudby-Smith-Ramdas betting martingale
(:func:`wsr_p`, which adapts to the loss's small variance; both are in the LTT paper).
Fixed-sequence testing walks the grid from a start threshold down, rejecting ``H_t`` while
``p_t <= delta`` and stopping at the first non-rejection; it controls the family-wise error at
``delta`` with no correction, so with probability ``>= 1 - delta`` every rejected threshold has
``FDR <= alpha``, and the lowest rejected one is certified. None rejected: nothing is
auto-accepted (the threshold is set above 1). The order must not depend on the certificate
data, but it decides the power: at the very top of the grid few boxes are accepted, the margin
``alpha A - F`` per image is tiny, the first test fails and the walk stops. So the walk starts
at the grid threshold where a *pilot* sample of independent images (the training script uses
the score-calibration images) has the largest mean margin (:func:`start_threshold`): the
thresholds above it accept fewer boxes and could only certify less. Without a pilot it starts
at the top of the grid.

**Low threshold: conformal risk control of the miss rate** (Angelopoulos, Bates, Fisch, Lei,
Schuster 2022). The per-image loss is the share of the image's true objects that no kept box
(``>= t``) matches, in [0, 1] (B = 1), and it can only fall as ``t`` is lowered (keeping more
boxes never unmatches an object). On a fixed grid (:data:`LOW_GRID`) the largest ``t`` with
``n / (n + 1) * mean_loss(t) + 1 / (n + 1) <= beta`` gives ``E[miss share of a new image] <= beta``
(in expectation over the calibration draw and the new image: it spends no ``delta``). If even
keeping every row misses more, nothing is claimed and ``t_low = 0``.

**When the drop threshold is above the accept threshold** (:func:`served_thresholds`), nothing is
left in between for auditors, and one of the two must give way. The FDR is pooled: once the
boxes above ``t`` are clean enough, the walk goes on down through boxes that are mostly false
(with calibrated scores, boxes that are *likely* false) for as long as the pooled share stays
under ``alpha``, while the miss budget says those boxes may be dropped. So the boxes below
``t_low`` are dropped, and ``t_high`` is raised to the lowest *rejected* threshold at or above
``t_low``: the fixed sequence controls the family-wise error, so with probability ``>= 1 - delta``
every rejected threshold has ``FDR <= alpha`` at once, and choosing one of them after seeing the
data (here by ``t_low``) keeps the promise. Both promises hold, and fewer false boxes are
accepted. Only if no rejected threshold is at or above ``t_low`` (the walk started below it) is
``t_low`` lowered to ``t_high`` instead (keeping more boxes only lowers the miss share).

So ``delta`` is spent once, all of it on the FDR certificate; the miss-rate promise holds in
expectation. Both hold for new images drawn like the calibration images; pure numpy + scipy, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from scipy.stats import binom

from auditstream.tasks.detection import greedy_true

# Thresholds tested for auto-acceptance, highest first (fixed before any data is seen).
HIGH_GRID = tuple(round(1.0 - 0.0025 * i, 4) for i in range(1, 400))  # 0.9975, 0.995, ..., 0.0025
LOW_GRID = tuple(round(0.001 * i, 3) for i in range(1000, -1, -1))  # 1.0, 0.999, ..., 0.0
P_VALUES = ("hoeffding-bentkus", "wsr")


@dataclass(frozen=True)
class ScoredBoxes:
    """Every box of ``n`` images with its score and whether it is true (matched), plus the
    number of true objects per image."""

    scores: np.ndarray  # [boxes] float64
    true: np.ndarray  # [boxes] bool
    image: np.ndarray  # [boxes] int: which image (0..n-1)
    n_objects: np.ndarray  # [n] int

    @property
    def n_images(self) -> int:
        return len(self.n_objects)

    def subset(self, images: np.ndarray) -> "ScoredBoxes":
        """The boxes of ``images`` (indices), renumbered 0..len-1 in that order."""
        images = np.asarray(images, dtype=np.int64)
        where = np.full(self.n_images, -1)
        where[images] = np.arange(len(images))
        keep = where[self.image] >= 0
        return ScoredBoxes(self.scores[keep], self.true[keep], where[self.image[keep]], self.n_objects[images])


def match_boxes(boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray, true_boxes: np.ndarray,
                true_labels: np.ndarray, iou: float = 0.5) -> np.ndarray:
    """Whether each box is true: greedily in descending score, a box takes the not yet taken
    object of its class with the highest IoU, if that IoU is ``>= iou`` (COCO's matching). The
    one rule of :func:`auditstream.tasks.detection.greedy_true`, which the monitor's count of an
    audit's false boxes (``Detection.false_parts``) uses too."""
    return greedy_true(boxes, labels, scores, true_boxes, true_labels, iou)


def score_images(predictions: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
                 truths: Sequence[tuple[np.ndarray, np.ndarray]], iou: float = 0.5) -> ScoredBoxes:
    """``predictions[i] = (boxes [k, 4], labels [k], scores [k])`` and ``truths[i] = (boxes
    [m, 4], labels [m])`` of image ``i`` as :class:`ScoredBoxes`."""
    if len(predictions) != len(truths):
        raise ValueError(f"{len(predictions)} predicted images but {len(truths)} annotated ones")
    scores, true, image = [], [], []
    for i, ((boxes, labels, s), (tb, tl)) in enumerate(zip(predictions, truths)):
        scores.append(np.asarray(s, dtype=np.float64).reshape(-1))
        true.append(match_boxes(boxes, labels, s, tb, tl, iou))
        image.append(np.full(len(scores[-1]), i))
    cat = (lambda xs, dtype: np.concatenate(xs).astype(dtype) if xs else np.zeros(0, dtype))
    return ScoredBoxes(cat(scores, np.float64), cat(true, bool), cat(image, np.int64),
                       np.array([len(tl) for _, tl in truths], dtype=np.int64))


def per_image_counts(data: ScoredBoxes, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image: boxes ``>= threshold``, false boxes among them, true objects they match."""
    kept = data.scores >= threshold
    n = data.n_images
    accepted = np.bincount(data.image[kept], minlength=n)
    false = np.bincount(data.image[kept & ~data.true], minlength=n)
    matched = np.bincount(data.image[kept & data.true], minlength=n)
    return accepted, false, matched


def fdr_losses(data: ScoredBoxes, threshold: float, alpha: float, max_boxes: int) -> np.ndarray:
    """The per-image loss ``(F - alpha A + alpha K) / K`` in [0, 1] (see the module docstring)."""
    accepted, false, _ = per_image_counts(data, threshold)
    if accepted.size and accepted.max() > max_boxes:
        raise ValueError(f"an image has {accepted.max()} boxes, more than max_boxes={max_boxes}")
    return (false - alpha * accepted + alpha * max_boxes) / max_boxes


def miss_losses(data: ScoredBoxes, threshold: float) -> np.ndarray:
    """Per image: the share of its true objects that no box ``>= threshold`` matches (0 without objects)."""
    _, _, matched = per_image_counts(data, threshold)
    return np.where(data.n_objects > 0, 1.0 - matched / np.maximum(data.n_objects, 1), 0.0)


def hoeffding_bentkus_p(mean: float, n: int, mu: float) -> float:
    """p-value of ``H0: E[l] >= mu`` from the mean of ``n`` i.i.d. losses in [0, 1]:
    ``min(exp(-n h(min(mean, mu), mu)), e * P(Binomial(n, mu) <= ceil(n mean)))`` with ``h`` the
    Bernoulli KL divergence (Hoeffding 1963; Bentkus 2004; as in LTT and RCPS)."""
    if n < 1:
        return 1.0
    m = min(max(mean, 0.0), mu)
    kl = (m * math.log(m / mu) if m > 0 else 0.0) + (1 - m) * math.log((1 - m) / (1 - mu))
    hoeffding = math.exp(-n * kl)
    bentkus = math.e * float(binom.cdf(math.ceil(n * mean - 1e-9), n, mu))
    return float(min(1.0, hoeffding, bentkus))


def wsr_p(losses: np.ndarray, mu: float, delta: float) -> float:
    """p-value of ``H0: E[l] >= mu`` from i.i.d. losses in [0, 1], in the given (random) order:
    ``1 / max_i K_i`` for the betting capital ``K_i = prod_{j <= i} (1 - nu_j (l_j - mu))``
    (Waudby-Smith & Ramdas 2020, as in LTT). Under H0 the capital is a nonnegative supermartingale
    (``nu_j`` depends on ``l_1..l_{j-1}`` only and ``0 <= nu_j <= 1``), so Ville's inequality
    makes this a valid p-value. ``delta`` only tunes the bets."""
    losses = np.asarray(losses, dtype=np.float64)
    n = len(losses)
    if n == 0:
        return 1.0
    i = np.arange(1, n + 1)
    mean = (0.5 + np.cumsum(losses)) / (1 + i)
    var = (0.25 + np.cumsum((losses - mean) ** 2)) / (1 + i)
    previous = np.concatenate([[0.25], var[:-1]])
    nu = np.minimum(1.0, np.sqrt(2 * math.log(1 / delta) / (n * previous)))
    log_capital = np.cumsum(np.log1p(-nu * (losses - mu)))
    return float(min(1.0, math.exp(-log_capital.max())))


@dataclass(frozen=True)
class HighThreshold:
    """The Learn-then-Test outcome for auto-acceptance."""

    threshold: float  # lowest rejected grid threshold; above 1 when none was rejected
    alpha: float
    delta: float
    max_boxes: int
    p_value: str
    n_images: int
    start: float | None  # where the walk down the grid started (None: at its top)
    tested: int  # grid thresholds tested before the first non-rejection (inclusive)
    last_p: float  # p-value of the certified threshold (1.0 when none)
    stopped_at: float | None  # the first threshold not rejected (None: the whole grid was)
    stopped_p: float | None
    fdr_calibration: float  # pooled share of false boxes among calibration boxes >= threshold
    boxes_per_image: float  # calibration boxes >= threshold, per image

    @property
    def certified(self) -> bool:
        return self.threshold <= 1.0


def start_threshold(pilot: ScoredBoxes, alpha: float, grid: Sequence[float] = HIGH_GRID) -> float:
    """The grid threshold with the largest mean margin ``alpha A - F`` per pilot image (the
    highest of equals): where the fixed sequence starts (see the module docstring)."""
    if pilot.n_images == 0:
        raise ValueError("need at least one pilot image, got 0")
    margins = []
    for t in grid:
        accepted, false, _ = per_image_counts(pilot, t)
        margins.append(float(np.mean(alpha * accepted - false)))
    return float(grid[int(np.argmax(margins))])


def certify_high(data: ScoredBoxes, alpha: float, delta: float, max_boxes: int, p_value: str = "wsr",
                 grid: Sequence[float] = HIGH_GRID, start: float | None = None) -> HighThreshold:
    """Fixed-sequence Learn-then-Test down ``grid`` (highest first) from ``start`` (default: the
    top): see the module docstring."""
    _check(alpha, "alpha")
    _check(delta, "delta")
    if p_value not in P_VALUES:
        raise ValueError(f"p_value {p_value!r} not one of {P_VALUES}")
    if data.n_images == 0:
        raise ValueError("need at least one calibration image, got 0")
    if list(grid) != sorted(grid, reverse=True):
        raise ValueError("the grid must run from the highest threshold to the lowest")
    certified, last_p, tested, stopped, stopped_p = float(np.nextafter(1.0, 2.0)), 1.0, 0, None, None
    for t in (t for t in grid if start is None or t <= start):
        losses = fdr_losses(data, t, alpha, max_boxes)
        p = (hoeffding_bentkus_p(float(losses.mean()), len(losses), alpha) if p_value == "hoeffding-bentkus"
             else wsr_p(losses, alpha, delta))
        tested += 1
        if p > delta:
            stopped, stopped_p = float(t), p
            break
        certified, last_p = float(t), p
    accepted, false, _ = per_image_counts(data, certified)
    return HighThreshold(certified, alpha, delta, max_boxes, p_value, data.n_images, start, tested, last_p, stopped,
                         stopped_p,
                         float(false.sum() / max(accepted.sum(), 1)), float(accepted.mean()))


@dataclass(frozen=True)
class LowThreshold:
    """The conformal-risk-control outcome for dropping boxes."""

    threshold: float
    beta: float
    n_images: int
    bound: float  # n/(n+1) * mean miss + 1/(n+1) at the threshold
    certified: bool  # False: even keeping every row misses more than beta; nothing is claimed


def certify_low(data: ScoredBoxes, beta: float, grid: Sequence[float] = LOW_GRID) -> LowThreshold:
    """The largest grid threshold whose CRC bound on the expected miss share is ``<= beta``."""
    _check(beta, "beta")
    n = data.n_images
    if n == 0:
        raise ValueError("need at least one calibration image, got 0")
    for t in sorted(grid, reverse=True):
        bound = n / (n + 1) * float(miss_losses(data, t).mean()) + 1 / (n + 1)
        if bound <= beta:
            return LowThreshold(float(t), beta, n, bound, True)
    lowest = float(min(grid))
    return LowThreshold(lowest, beta, n, n / (n + 1) * float(miss_losses(data, lowest).mean()) + 1 / (n + 1), False)


@dataclass(frozen=True)
class DetectionCertificate:
    """Both certificates, and the two thresholds serving uses (``to_dict`` for the model card)."""

    high: HighThreshold
    low: LowThreshold
    threshold_high: float  # boxes >= it are auto-accepted
    threshold_low: float  # boxes < it are dropped; <= threshold_high

    @property
    def threshold_high_raised(self) -> bool:
        """Whether ``threshold_high`` was raised above the lowest rejected threshold to ``t_low``."""
        return self.threshold_high > self.high.threshold

    def to_dict(self) -> dict:
        return {"high": asdict(self.high), "low": asdict(self.low), "threshold_high": self.threshold_high,
                "threshold_low": self.threshold_low, "high_certified": self.high.certified,
                "low_certified": self.low.certified, "threshold_high_raised_to_low": self.threshold_high_raised}


def served_thresholds(high: HighThreshold, low: LowThreshold,
                      grid: Sequence[float] = HIGH_GRID) -> tuple[float, float]:
    """``(t_high, t_low)`` for serving from the two certificates (``grid``: the one the fixed
    sequence walked): as certified when ``t_low <= t_high``; otherwise ``t_high`` raised to the
    lowest rejected threshold ``>= t_low``, or, with none, ``t_low`` lowered to ``t_high`` (see
    the module docstring)."""
    if not high.certified or low.threshold <= high.threshold:
        return high.threshold, min(low.threshold, high.threshold)
    rejected = [t for t in grid if high.threshold <= t and (high.start is None or t <= high.start)]
    above = [t for t in rejected if t >= low.threshold]
    if above:
        return float(min(above)), low.threshold
    return high.threshold, high.threshold


def certify_detection(data: ScoredBoxes, alpha: float, beta: float, delta: float, max_boxes: int,
                      p_value: str = "wsr", pilot: ScoredBoxes | None = None,
                      grid: Sequence[float] = HIGH_GRID) -> DetectionCertificate:
    """Certify ``t_high`` (FDR of accepted boxes ``<= alpha`` with probability ``>= 1 - delta``)
    and ``t_low`` (expected miss share ``<= beta``) on calibration images; ``pilot``: independent
    images that choose where the fixed sequence starts."""
    start = start_threshold(pilot, alpha, grid) if pilot is not None else None
    high, low = certify_high(data, alpha, delta, max_boxes, p_value, grid, start), certify_low(data, beta)
    return DetectionCertificate(high, low, *served_thresholds(high, low, grid))


def triage_outcome(data: ScoredBoxes, threshold_high: float, threshold_low: float) -> dict[str, float]:
    """What the two thresholds do on (test) images: the pooled FDR of accepted boxes, the share of
    true objects an accepted box matches, the mean miss share, auditor boxes per image and the
    share of images no human needs to see."""
    accepted, false, matched_high = per_image_counts(data, threshold_high)
    kept, _, _ = per_image_counts(data, threshold_low)
    auditor = kept - accepted
    objects = max(int(data.n_objects.sum()), 1)
    return {"accepted_fdr": float(false.sum() / max(accepted.sum(), 1)),
            "accepted_boxes_per_image": float(accepted.mean()),
            "objects_auto_accepted": float(matched_high.sum() / objects),
            "miss_rate": float(miss_losses(data, threshold_low).mean()),
            "auditor_boxes_per_image": float(auditor.mean()),
            "images_without_human": float(np.mean(auditor == 0))}


def _check(value: float, name: str) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name}={value} must be in (0, 1)")
