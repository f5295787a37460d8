"""Batched affine resampling of small images, numpy only.

Both the digit augmentation (training/data/loader.py) and the envelope generator
(training/data/envelopes.py) draw each glyph through a random affine map; doing it in numpy
keeps the envelope generator usable without torch (a load generator can import it).
"""

from __future__ import annotations

import numpy as np


def random_affines(rng: np.random.Generator, k: int, scale: tuple[float, float], rotation_deg: float,
                   shear: float) -> np.ndarray:
    """``k`` forward 2x2 maps (in (y, x) order): scale * rotation * shear, drawn uniformly."""
    s = rng.uniform(*scale, size=k)
    a = np.deg2rad(rng.uniform(-rotation_deg, rotation_deg, size=k))
    h = rng.uniform(-shear, shear, size=k)
    cos, sin = np.cos(a), np.sin(a)
    rot = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)  # [k, 2, 2]
    shr = np.zeros((k, 2, 2))
    shr[:, 0, 0] = shr[:, 1, 1] = 1.0
    shr[:, 1, 0] = h  # x shifts with y: slanted handwriting
    return s[:, None, None] * rot @ shr


def random_distortions(rng: np.random.Generator, k: int, sigma: float, grid: int = 3) -> np.ndarray:
    """``k`` smooth random displacement fields [k, 2, grid, grid] (source pixels, (y, x)) for
    :func:`warp`'s ``distortion``: independent normal displacements with standard deviation
    ``sigma`` at a coarse grid of control points, bilinear in between (an elastic distortion of the
    strokes, as Simard et al. 2003 did for handwritten digits)."""
    return rng.normal(0.0, sigma, size=(k, 2, grid, grid))


def warp(images: np.ndarray, forward: np.ndarray, out_size: int, shift: np.ndarray | None = None,
         distortion: np.ndarray | None = None) -> np.ndarray:
    """Resample ``images`` [k, h, w] through forward maps [k, 2, 2] into [k, out, out] patches.

    The source centre lands on the patch centre (+ ``shift`` [k, 2] pixels, (y, x)); pixels
    that map outside the source are 0. Bilinear interpolation. ``distortion`` [k, 2, g, g]
    (:func:`random_distortions`) displaces where each patch pixel reads the source, smoothly over
    the source's area: the strokes bend, not only the whole glyph.
    """
    images = np.asarray(images, dtype=np.float32)
    k, h, w = images.shape
    if forward.shape != (k, 2, 2):
        raise ValueError(f"need one 2x2 map per image: {k} images, maps of shape {forward.shape}")
    inverse = np.linalg.inv(forward)  # [k, 2, 2]
    grid = np.arange(out_size, dtype=np.float64) - (out_size - 1) / 2.0
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    points = np.stack([yy, xx], -1)[None].repeat(k, 0)  # [k, out, out, 2]
    if shift is not None:
        points = points - shift[:, None, None, :]
    src = np.einsum("kij,kabj->kabi", inverse, points)
    sy = src[..., 0] + (h - 1) / 2.0
    sx = src[..., 1] + (w - 1) / 2.0
    if distortion is not None:
        sy, sx = _distort(sy, sx, distortion, h, w)
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1)))  # zero border: out-of-range samples read 0
    y0 = np.floor(sy)
    x0 = np.floor(sx)
    fy = (sy - y0).astype(np.float32)
    fx = (sx - x0).astype(np.float32)
    y0 = np.clip(y0.astype(np.int64) + 1, 0, h + 1)
    x0 = np.clip(x0.astype(np.int64) + 1, 0, w + 1)
    y1 = np.clip(y0 + 1, 0, h + 1)
    x1 = np.clip(x0 + 1, 0, w + 1)
    # Samples entirely outside the padded source are read as 0, not as clipped edge pixels.
    outside = (sy < -1) | (sy > h) | (sx < -1) | (sx > w)
    kk = np.arange(k)[:, None, None]
    out = ((1 - fy) * (1 - fx) * padded[kk, y0, x0] + (1 - fy) * fx * padded[kk, y0, x1]
           + fy * (1 - fx) * padded[kk, y1, x0] + fy * fx * padded[kk, y1, x1])
    out[outside] = 0.0
    return out.astype(np.float32)


def _distort(sy: np.ndarray, sx: np.ndarray, fields: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Source coordinates [k, out, out] moved by the fields [k, 2, g, g] whose control points span the
    source (corner to corner), bilinearly interpolated (clamped outside it)."""
    k, _, g, _ = fields.shape
    if fields.shape != (len(sy), 2, g, g):
        raise ValueError(f"need one [2, g, g] field per image: {len(sy)} images, fields of shape {fields.shape}")
    gy = np.clip(sy * ((g - 1) / max(h - 1, 1)), 0, g - 1).astype(np.float32)
    gx = np.clip(sx * ((g - 1) / max(w - 1, 1)), 0, g - 1).astype(np.float32)
    fields = fields.astype(np.float32)
    dy, dx = np.zeros(sy.shape, np.float32), np.zeros(sx.shape, np.float32)
    # Bilinear interpolation as hat-function weights per control point: 3x faster than gathers.
    for i in range(g):
        weight_y = np.maximum(1 - np.abs(gy - i), 0)
        for j in range(g):
            weight = weight_y * np.maximum(1 - np.abs(gx - j), 0)
            dy += weight * fields[:, 0, i, j, None, None]
            dx += weight * fields[:, 1, i, j, None, None]
    return sy + dy, sx + dx
