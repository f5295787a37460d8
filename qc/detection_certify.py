"""Certify a detector's two score thresholds: what is auto-accepted, and what is dropped.

A detector answers one image with scored boxes. Serving drops the boxes scoring ``< t_low`` and
auto-accepts an image only when **every kept box** scores ``>= t_high`` (its confidence is its
lowest kept score, and every kept box gates: auditstream/tasks/detection.py); an image with a
kept box in ``[t_low, t_high)`` goes to an auditor, all of it. Both thresholds are chosen on
calibration images, and **the image is the exchangeable unit**: calibration images (not boxes)
are i.i.d. draws of the images to come, while boxes of one image share its lighting, clutter and
crowding.

Which boxes are right: in each image the boxes are matched to the true objects greedily in
descending score (as COCO does, :func:`match_boxes`): a box is *true* when it takes a not yet
taken object of its class with IoU ``>= iou`` (the card's ``match_iou``). A box's status then
depends only on the boxes that outrank it, so it does not change with the thresholds. The
monitor counts an audit's false boxes with the same matching (``Detection.false_parts``).

**What is promised is what is served.** At a pair ``(t_low, t_high)`` let ``A`` and ``F`` be an
image's accepted and false boxes *as serving accepts them* (:func:`served_counts`): its kept boxes
when the image is auto-accepted, none when an auditor sees it. The promise is about the boxes no
human sees, pooled over images: ``FDR = E[F] / E[A] <= alpha`` -- the rate the monitor estimates
from audits of auto-accepted images. (Before, the certificate bounded the FDR of every box
``>= t_high`` whatever its image; serving accepts only the images with no box in between, which
can be the worse ones: a certified 2% was 4% served, training/detector/served_fdr_sim.py.)

**High threshold: Learn-then-Test on the served FDR** (Angelopoulos, Bates, Candès, Jordan, Lei
2021). A ratio of per-image sums is turned into one mean: ``FDR <= alpha`` exactly when
``E[F - alpha A] <= 0`` (for ``E[A] > 0``). With ``K`` the most boxes an image can have (the
graph's rows), ``0 <= F <= A <= K`` gives the per-image loss ``l = (F - alpha A + alpha K) / K``
in [0, 1], i.i.d. over images, and ``FDR <= alpha`` exactly when ``E[l] <= alpha``
(:func:`fdr_losses`; an image an auditor sees has ``l = alpha``). A valid p-value for the null
``H: E[l] > alpha`` comes from a concentration bound for means of [0, 1] variables:
Hoeffding-Bentkus (:func:`hoeffding_bentkus_p`) or the Waudby-Smith-Ramdas betting martingale
(:func:`wsr_p`, which adapts to the loss's small variance; both are in the LTT paper).

**Every choice is made before the images it is tested on are seen.** The certificate images
are split by a rule on their places, fixed before any score is seen (:func:`split_images`: every
:data:`SELECT_EVERY`-th image *selects*, the others *test*; images are i.i.d., so the parts are
independent samples).

1. **Low threshold: conformal risk control of the miss rate on the selection images**
   (Angelopoulos, Bates, Fisch, Lei, Schuster 2022). The per-image loss is the share of the
   image's true objects that no kept box (``>= t``) matches, in [0, 1] (B = 1), and it can only
   fall as ``t`` is lowered. On a fixed grid (:data:`LOW_GRID`) the largest ``t`` with
   ``n / (n + 1) * mean_loss(t) + 1 / (n + 1) <= beta`` gives ``E[miss share of a new image] <= beta``
   (in expectation over the selection draw and the new image: it spends no ``delta``). If even
   keeping every row misses more, nothing is claimed and ``t_low = 0``.
2. **Where the walk starts**, on the selection images (and the pilot images, independent ones,
   when given): the accept threshold with the largest mean margin ``alpha A - F`` at ``t_low``
   (:func:`start_threshold`). Above it fewer boxes are accepted and the first test would fail.
3. **High threshold: fixed-sequence Learn-then-Test of the served FDR on the test images**, at
   the ``t_low`` of step 1, which the test images did not choose: down the thresholds of
   :data:`HIGH_GRID` at or above ``t_low``, then ``t_low`` itself (no box left to an auditor;
   :func:`family_grid`), from the start of step 2, rejecting while ``p <= delta`` and stopping at
   the first non-rejection. Fixed-sequence testing controls the family-wise error at ``delta``,
   so with probability ``>= 1 - delta`` every rejected threshold has served ``FDR <= alpha`` at
   once; the lowest is served. None rejected: nothing is auto-accepted (``t_high`` above 1).
   A tighter accept threshold (the monitor's) stays certified when it is one of the rejected
   grid thresholds, from the start down.

The served FDR depends on ``t_low`` (which images go to an auditor), so ``t_low`` must not be
chosen on the images that test it: a ``t_low`` from the test images themselves would be a
choice made after seeing them that no delta covers. (The pooled FDR certified before did not
depend on ``t_low``, which is why the old rule could take both from all the images.) So
``delta`` is spent once, all of it on the FDR certificate of the test images; the miss-rate
promise holds in expectation. Both hold for new images drawn like the certificate images; the
training script's pilot is its score-calibration images. Pure numpy + scipy, no I/O.
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
# Every SELECT_EVERY-th certificate image (by its place, 0, 4, 8, ...: fixed before any score is
# seen) chooses the drop threshold and where the walk starts; the others test the served FDR.
SELECT_EVERY = 4
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


def served_counts(data: ScoredBoxes, threshold_high: float,
                  threshold_low: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image, what serving auto-accepts at ``(t_low, t_high)``: ``(accepted, false, auto)``.
    Serving drops the boxes ``< t_low`` and auto-accepts an image only when every kept box clears
    ``t_high`` (auditstream/tasks/detection.py: the answer's confidence is its lowest kept score,
    and every kept box gates). An auto image's accepted boxes are its kept boxes; an image with a
    kept box in ``[t_low, t_high)`` goes to an auditor and accepts nothing; an image with no kept
    box is auto and accepts nothing. ``t_high > 1`` (nothing certified): no image is auto."""
    n = data.n_images
    kept = data.scores >= threshold_low
    deferred = np.bincount(data.image[kept & (data.scores < threshold_high)], minlength=n) > 0
    auto = ~deferred if threshold_high <= 1.0 else np.zeros(n, dtype=bool)
    accepted = np.where(auto, np.bincount(data.image[kept], minlength=n), 0)
    false = np.where(auto, np.bincount(data.image[kept & ~data.true], minlength=n), 0)
    return accepted, false, auto


def fdr_losses(data: ScoredBoxes, threshold: float, alpha: float, max_boxes: int,
               low: float | None = None) -> np.ndarray:
    """The per-image loss ``(F - alpha A + alpha K) / K`` in [0, 1] (see the module docstring) of
    what serving auto-accepts at ``(low, threshold)`` (:func:`served_counts`): ``A``, ``F`` the
    accepted and false boxes of the image when it is auto-accepted, 0 when an auditor sees it.
    ``low`` None: every box ``>= threshold`` counts, whatever else the image holds -- the pooled
    box-level loss, which no serving configuration accepts (kept for diagnostics)."""
    if low is None:
        accepted, false, _ = per_image_counts(data, threshold)
    else:
        accepted, false, _ = served_counts(data, threshold, low)
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




NOT_CERTIFIED = float(np.nextafter(1.0, 2.0))  # a threshold above every score: nothing is auto-accepted


@dataclass(frozen=True)
class HighThreshold:
    """The Learn-then-Test outcome for auto-acceptance at one drop threshold ``low``."""

    threshold: float  # lowest rejected threshold; above 1 when none was rejected
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
    fdr_calibration: float  # served FDR on the calibration images at (low, threshold)
    boxes_per_image: float  # calibration boxes auto-accepted at (low, threshold), per image
    low: float = 0.0  # the drop threshold the losses are served at (fixed before these images were seen)

    @property
    def certified(self) -> bool:
        return self.threshold <= 1.0


def family_grid(low: float, grid: Sequence[float] = HIGH_GRID, start: float | None = None) -> list[float]:
    """The accept thresholds tested for drop threshold ``low``, highest first: the grid's at or
    above ``low`` (below it every kept box is accepted: the same as ``low`` itself) from ``start``
    down, then ``low`` (no box left to an auditor) when the grid does not hold it."""
    walk = [float(t) for t in grid if t >= low and (start is None or t <= start)]
    if (not walk or walk[-1] != low) and (start is None or low <= start):
        walk.append(float(low))
    return walk


def start_threshold(pilot: ScoredBoxes, alpha: float, grid: Sequence[float] = HIGH_GRID,
                    low: float | None = None) -> float:
    """The threshold of :func:`family_grid` with the largest mean margin ``alpha A - F`` per image
    of ``pilot`` (images the test does not see) at drop threshold ``low`` (the highest of equals):
    where the fixed sequence starts (see the module docstring). ``low`` None: the grid's
    thresholds, every box ``>= t`` counted."""
    if pilot.n_images == 0:
        raise ValueError("need at least one pilot image, got 0")
    thresholds = list(grid) if low is None else family_grid(low, grid)
    margins = []
    for t in thresholds:
        accepted, false, _ = per_image_counts(pilot, t) if low is None else served_counts(pilot, t, low)
        margins.append(float(np.mean(alpha * accepted - false)))
    return float(thresholds[int(np.argmax(margins))])


def certify_high(data: ScoredBoxes, alpha: float, delta: float, max_boxes: int, p_value: str = "wsr",
                 grid: Sequence[float] = HIGH_GRID, start: float | None = None, *, low: float) -> HighThreshold:
    """Fixed-sequence Learn-then-Test of the served FDR at drop threshold ``low`` (fixed before
    ``data`` is seen), down :func:`family_grid` (highest first) from ``start`` (default: the
    top): see the module docstring."""
    _check(alpha, "alpha")
    _check(delta, "delta")
    if p_value not in P_VALUES:
        raise ValueError(f"p_value {p_value!r} not one of {P_VALUES}")
    if data.n_images == 0:
        raise ValueError("need at least one calibration image, got 0")
    if list(grid) != sorted(grid, reverse=True):
        raise ValueError("the grid must run from the highest threshold to the lowest")
    if not 0.0 <= low <= 1.0:
        raise ValueError(f"low={low} must be a drop threshold in [0, 1]")
    certified, last_p, tested, stopped, stopped_p = NOT_CERTIFIED, 1.0, 0, None, None
    for t in family_grid(low, grid, start):
        losses = fdr_losses(data, t, alpha, max_boxes, low)
        p = (hoeffding_bentkus_p(float(losses.mean()), len(losses), alpha) if p_value == "hoeffding-bentkus"
             else wsr_p(losses, alpha, delta))
        tested += 1
        if p > delta:
            stopped, stopped_p = float(t), p
            break
        certified, last_p = float(t), p
    accepted, false, _ = served_counts(data, certified, low)
    return HighThreshold(certified, alpha, delta, max_boxes, p_value, data.n_images, start, tested, last_p, stopped,
                         stopped_p, float(false.sum() / max(accepted.sum(), 1)), float(accepted.mean()), float(low))


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
    thresholds = sorted(grid, reverse=True)

    def bound(t: float) -> float:
        return n / (n + 1) * float(miss_losses(data, t).mean()) + 1 / (n + 1)

    # The mean miss share at every grid threshold at once (a cumulative sum over the true boxes),
    # to find the first that meets beta; then checked exactly there and just above (rounding).
    curve = n / (n + 1) * _mean_miss_curve(data, np.asarray(thresholds, dtype=np.float64)) + 1 / (n + 1)
    meets = np.flatnonzero(curve <= beta)
    if meets.size:
        i = int(meets[0])
        if bound(thresholds[i]) <= beta and (i == 0 or bound(thresholds[i - 1]) > beta):
            return LowThreshold(float(thresholds[i]), beta, n, bound(thresholds[i]), True)
    for t in thresholds:  # rounding put the fast answer in doubt (or none met beta): one by one
        if bound(t) <= beta:
            return LowThreshold(float(t), beta, n, bound(t), True)
    lowest = float(min(grid))
    return LowThreshold(lowest, beta, n, bound(lowest), False)


def _mean_miss_curve(data: ScoredBoxes, thresholds: np.ndarray) -> np.ndarray:
    """``miss_losses(data, t).mean()`` for every ``t`` of ``thresholds``: each true box, while it is
    kept, takes ``1 / (n_objects of its image)`` off its image's miss share."""
    n = data.n_images
    has = data.n_objects > 0
    objects = data.n_objects[data.image[data.true]]
    weights = np.where(objects > 0, 1.0 / np.maximum(objects, 1), 0.0) / n
    scores = data.scores[data.true]
    order = np.argsort(-scores, kind="stable")
    cumulative = np.concatenate([[0.0], np.cumsum(weights[order])])
    kept = np.searchsorted(-scores[order], -thresholds, side="right")  # true boxes scoring >= t
    return float(has.mean()) - cumulative[kept]


def split_images(data: ScoredBoxes, every: int = SELECT_EVERY) -> tuple[ScoredBoxes, ScoredBoxes]:
    """``(select, test)``: every ``every``-th image by its place (0, ``every``, ...) and the others.
    A rule on the places, fixed before any score is seen: the images are i.i.d., so the two parts
    are independent samples of them."""
    if every < 2:
        raise ValueError(f"every={every} must be >= 2: the test part needs images the selection did not see")
    if data.n_images < every:
        raise ValueError(f"need at least {every} certificate images (one to select, the others to test), "
                         f"got {data.n_images}")
    places = np.arange(data.n_images)
    return data.subset(places[places % every == 0]), data.subset(places[places % every != 0])


@dataclass(frozen=True)
class DetectionCertificate:
    """The certificate, and the two thresholds serving uses (``to_dict`` for the model card):
    ``low`` chose the drop threshold on the selection images (conformal risk control), ``high``
    tested the served FDR at it on the others."""

    high: HighThreshold
    low: LowThreshold
    threshold_high: float  # an image is auto-accepted when every kept box is >= it; above 1: none is
    threshold_low: float  # boxes < it are dropped; <= threshold_high
    n_select: int = 0  # certificate images that chose t_low and the start (the others: high.n_images)
    start_from: str = ""  # what chose where the walk starts

    @property
    def certified(self) -> bool:
        return self.threshold_high <= 1.0

    def to_dict(self) -> dict:
        return {"high": asdict(self.high), "low": asdict(self.low), "threshold_high": self.threshold_high,
                "threshold_low": self.threshold_low, "high_certified": self.certified,
                "low_certified": self.low.certified, "delta": self.high.delta, "n_select": self.n_select,
                "n_test": self.high.n_images, "start_from": self.start_from,
                "loss": "served FDR: the boxes of images whose every kept box clears threshold_high"}


def certify_detection(data: ScoredBoxes, alpha: float, beta: float, delta: float, max_boxes: int,
                      p_value: str = "wsr", pilot: ScoredBoxes | None = None, grid: Sequence[float] = HIGH_GRID,
                      select_every: int = SELECT_EVERY) -> DetectionCertificate:
    """Certify the served pair ``(t_low, t_high)`` on the certificate images ``data``: the
    expected miss share is ``<= beta``, and with probability ``>= 1 - delta`` the FDR of the boxes
    serving auto-accepts is ``<= alpha`` (see the module docstring). Every ``select_every``-th
    image chooses ``t_low`` (conformal risk control) and, with the ``pilot`` images (independent
    ones) if given, where the walk starts; the others test the served FDR at that ``t_low``."""
    _check(delta, "delta")
    select, test = split_images(data, select_every)
    low = certify_low(select, beta)
    chooser = select if pilot is None else _concat(select, pilot)
    start = start_threshold(chooser, alpha, grid, low.threshold)
    high = certify_high(test, alpha, delta, max_boxes, p_value, grid, start, low=low.threshold)
    return DetectionCertificate(high, low, high.threshold, low.threshold, select.n_images,
                                "selection images" + (" and pilot" if pilot is not None else ""))


def _concat(a: ScoredBoxes, b: ScoredBoxes) -> ScoredBoxes:
    """The images of ``a`` then those of ``b``."""
    return ScoredBoxes(np.concatenate([a.scores, b.scores]), np.concatenate([a.true, b.true]),
                       np.concatenate([a.image, b.image + a.n_images]), np.concatenate([a.n_objects, b.n_objects]))


def triage_outcome(data: ScoredBoxes, threshold_high: float, threshold_low: float) -> dict[str, float]:
    """What the two thresholds do on (test) images, as serving applies them (:func:`served_counts`):
    ``accepted_fdr``, the pooled share of false boxes among the boxes of auto-accepted images (what
    the certificate bounds and the monitor estimates); ``box_fdr_above_high``, the share among every
    box ``>= t_high`` whatever its image (a diagnostic: no configuration accepts that set); the
    share of true objects an accepted box matches; the mean miss share; auditor boxes per image;
    and the share of images no human needs to see."""
    accepted, false, auto = served_counts(data, threshold_high, threshold_low)
    all_high, all_false, _ = per_image_counts(data, threshold_high)
    kept, _, matched_kept = per_image_counts(data, threshold_low)
    # the kept boxes below t_high (all of them when nothing is certified) are an auditor's
    auditor = kept - (per_image_counts(data, max(threshold_high, threshold_low))[0] if threshold_high <= 1.0 else 0)
    objects = max(int(data.n_objects.sum()), 1)
    return {"accepted_fdr": float(false.sum() / max(accepted.sum(), 1)),
            "box_fdr_above_high": float(all_false.sum() / max(all_high.sum(), 1)),
            "accepted_boxes_per_image": float(accepted.mean()),
            "objects_auto_accepted": float(np.where(auto, matched_kept, 0).sum() / objects),
            "miss_rate": float(miss_losses(data, threshold_low).mean()),
            "auditor_boxes_per_image": float(auditor.mean()),
            "images_without_human": float(auto.mean())}


def _check(value: float, name: str) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name}={value} must be in (0, 1)")
