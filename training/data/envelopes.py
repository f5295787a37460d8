"""Synthetic envelopes: 5-digit ZIP codes written with real handwritten digits.

Each envelope is a grayscale uint8 image ``[ENVELOPE_H, ENVELOPE_W]`` (dark ink on light paper)
showing five digits of *one* split of the digits data (training/data/split.py), each drawn
through its own random scale, rotation and slant, with spacing and baseline jitter, a random
paper tone and brightness gradient, sensor noise, and clutter (wavy postmark lines and specks).
Everything is a function of the seed.

Two ways to pick the digits of ``n`` envelopes:

* ``"iid"``: every envelope draws its 5 digit images uniformly, with replacement, from the split
  (training streams, test measurement, the load generator).
* ``"disjoint"``: each digit image appears in at most one envelope (at most ``len(split) // 5``
  envelopes). Given the split, such envelopes are independent, which is what an exact binomial
  certificate needs (docs/training.md, "Dependence between envelopes").

The core, :func:`compose_envelopes`, imports numpy only, so a serving-side load generator can
reuse it with any digit images; :func:`make_envelopes` adds scikit-learn's digits on top.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.data.warp import random_affines, warp

ENVELOPE_H, ENVELOPE_W = 32, 96
ZIP_LENGTH = 5
_PATCH = 24  # side of the square each warped glyph is drawn into (fits 8 px * 2.1 rotated)


@dataclass(frozen=True)
class Nuisance:
    """Ranges of the random nuisance; the defaults are what every model is trained and tested on."""

    scale: tuple[float, float] = (1.55, 2.05)  # glyph height 12-16 px on a 32 px envelope
    rotation_deg: float = 8.0
    shear: float = 0.15
    pitch: tuple[float, float] = (0.95, 1.2)  # horizontal advance per digit, in glyph widths
    baseline_jitter_px: float = 1.5
    noise_sigma: tuple[float, float] = (2.0, 10.0)  # sensor noise, grey levels
    postmark_prob: float = 0.5
    specks: tuple[int, int] = (0, 12)


def compose_envelopes(digit_images: np.ndarray, digit_labels: np.ndarray, choice: np.ndarray,
                      rng: np.random.Generator, nuisance: Nuisance = Nuisance()) -> tuple[np.ndarray, list[str]]:
    """Render envelopes whose digit ``j`` of envelope ``i`` is ``digit_images[choice[i, j]]``.

    ``digit_images`` [N, 8, 8] hold ink in 0..16 (scikit-learn's scale). Returns uint8 images
    [n, ENVELOPE_H, ENVELOPE_W] and the ZIP strings.
    """
    choice = np.asarray(choice)
    if choice.ndim != 2 or choice.shape[1] != ZIP_LENGTH:
        raise ValueError(f"choice must be [n, {ZIP_LENGTH}] digit indices, got shape {choice.shape}")
    n, k = choice.shape[0], choice.size
    glyphs = np.asarray(digit_images, dtype=np.float32)[choice.reshape(-1)] / 16.0
    maps = random_affines(rng, k, nuisance.scale, nuisance.rotation_deg, nuisance.shear)
    patches = warp(glyphs, maps, _PATCH).reshape(n, ZIP_LENGTH, _PATCH, _PATCH)
    ink = _layout(patches, maps[:, 0, 0].reshape(n, ZIP_LENGTH), rng, nuisance)
    ink = np.maximum(ink, _clutter(n, rng, nuisance))
    paper = rng.uniform(175, 240, size=(n, 1, 1)) + _gradient(n, rng)
    ink_level = rng.uniform(10, 70, size=(n, 1, 1))
    image = paper - np.clip(ink, 0, 1) * (paper - ink_level)
    image += rng.normal(0, 1, size=image.shape) * rng.uniform(*nuisance.noise_sigma, size=(n, 1, 1))
    images = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    labels = np.asarray(digit_labels)[choice]
    return images, ["".join(str(int(d)) for d in row) for row in labels]


def _layout(patches: np.ndarray, scales: np.ndarray, rng: np.random.Generator, nuisance: Nuisance) -> np.ndarray:
    """Place each envelope's 5 patches left to right with random pitch and baseline; max-composite."""
    n = patches.shape[0]
    pad = _PATCH
    canvas = np.zeros((n, ENVELOPE_H + 2 * pad, ENVELOPE_W + 2 * pad), dtype=np.float32)
    advance = 8.0 * np.abs(scales) * rng.uniform(*nuisance.pitch, size=scales.shape)  # [n, 5]
    centres = np.cumsum(advance, axis=1) - advance / 2  # x centres relative to the first glyph's left edge
    width = centres[:, -1] + advance[:, -1] / 2
    # A ZIP written too wide for the envelope is squeezed (glyphs then touch or overlap a little,
    # as cramped handwriting does) rather than cut off at the edge.
    squeeze = np.minimum(1.0, (ENVELOPE_W - 2) / width)
    centres, width = centres * squeeze[:, None], width * squeeze
    slack = np.maximum(ENVELOPE_W - 2 - width, 0)
    left = 1 + rng.uniform(0, 1, size=n) * slack
    x = left[:, None] + centres
    y = ENVELOPE_H / 2 + rng.uniform(-2.5, 2.5, size=(n, 1)) + rng.uniform(
        -nuisance.baseline_jitter_px, nuisance.baseline_jitter_px, size=x.shape)
    top = np.rint(y - (_PATCH - 1) / 2).astype(int) + pad
    lft = np.rint(x - (_PATCH - 1) / 2).astype(int) + pad
    for i in range(n):
        for j in range(ZIP_LENGTH):
            region = canvas[i, top[i, j]:top[i, j] + _PATCH, lft[i, j]:lft[i, j] + _PATCH]
            np.maximum(region, patches[i, j], out=region)
    return canvas[:, pad:pad + ENVELOPE_H, pad:pad + ENVELOPE_W]


def _clutter(n: int, rng: np.random.Generator, nuisance: Nuisance) -> np.ndarray:
    """Wavy postmark lines across the envelope and a few dark specks, as ink in 0..1."""
    yy, xx = np.mgrid[0:ENVELOPE_H, 0:ENVELOPE_W].astype(np.float32)
    clutter = np.zeros((n, ENVELOPE_H, ENVELOPE_W), dtype=np.float32)
    has_line = rng.random(n) < nuisance.postmark_prob
    centre = rng.uniform(0, ENVELOPE_H, size=n)
    amp = rng.uniform(0.5, 3.0, size=n)
    freq = rng.uniform(0.05, 0.25, size=n)
    phase = rng.uniform(0, 2 * np.pi, size=n)
    strength = rng.uniform(0.2, 0.5, size=n)
    for i in np.flatnonzero(has_line):
        curve = centre[i] + amp[i] * np.sin(freq[i] * xx + phase[i])
        clutter[i] = np.where(np.abs(yy - curve) < 0.6, strength[i], 0.0)
    counts = rng.integers(nuisance.specks[0], nuisance.specks[1] + 1, size=n)
    for i in range(n):
        ys = rng.integers(0, ENVELOPE_H, size=counts[i])
        xs = rng.integers(0, ENVELOPE_W, size=counts[i])
        clutter[i, ys, xs] = np.maximum(clutter[i, ys, xs], rng.uniform(0.3, 0.8, size=counts[i]))
    return clutter


def _gradient(n: int, rng: np.random.Generator) -> np.ndarray:
    """Uneven lighting: a linear brightness ramp of up to +-15 grey levels across the envelope."""
    yy, xx = np.mgrid[0:ENVELOPE_H, 0:ENVELOPE_W].astype(np.float32)
    gy, gx = rng.uniform(-15, 15, size=(2, n, 1, 1))
    return gy * (yy / ENVELOPE_H - 0.5) + gx * (xx / ENVELOPE_W - 0.5)


def choose_digits(n_pool: int, n: int, rng: np.random.Generator, sampling: str = "iid") -> np.ndarray:
    """Indices [n, 5] into a pool of ``n_pool`` digits (see the module docstring for ``sampling``)."""
    if sampling == "iid":
        return rng.integers(0, n_pool, size=(n, ZIP_LENGTH))
    if sampling == "disjoint":
        if n * ZIP_LENGTH > n_pool:
            raise ValueError(f"{n} disjoint envelopes need {n * ZIP_LENGTH} digits, the pool has {n_pool} "
                             f"(at most {n_pool // ZIP_LENGTH} envelopes)")
        return rng.permutation(n_pool)[: n * ZIP_LENGTH].reshape(n, ZIP_LENGTH)
    raise ValueError(f"sampling {sampling!r} must be 'iid' or 'disjoint'")


def make_envelopes(split: str, n: int, seed: int, sampling: str = "iid",
                   with_sources: bool = False) -> tuple[np.ndarray, list[str]] | tuple[np.ndarray, list[str], np.ndarray]:
    """``n`` envelopes from the digits of ``split`` only: (uint8 [n, H, W], ZIP strings).

    ``with_sources=True`` adds a third element: the index in scikit-learn's ``load_digits()`` of
    every glyph [n, 5], which is how the tests prove that no digit leaks between splits.
    """
    from training.data.split import load_split  # scikit-learn, imported only here

    if n < 0:
        raise ValueError(f"n={n} must be >= 0")
    digits = load_split(split)
    rng = np.random.default_rng(seed)
    choice = choose_digits(len(digits.labels), n, rng, sampling)
    images, zips = compose_envelopes(digits.images, digits.labels, choice, rng)
    return (images, zips, digits.indices[choice]) if with_sources else (images, zips)
