"""Minibatches with switchable augmentation, as the training scripts of this field use them.

``DigitAugment`` draws each training digit through a random affine map (rotation, scale, slant,
sub-pixel shift): the 898 training digits then look like many more writers. ``digit_batches``
reshuffles every epoch. ``envelope_batches`` renders fresh envelopes for every batch from one
split's digits, so the zip reader never sees the same envelope twice (its augmentation is the
envelope nuisance itself, see training/data/envelopes.py, widened by ``TRAIN_NUISANCE``);
``fresh=False`` instead cycles over one fixed set of 8 batches (an ablation of the augmentation).

Both yield numpy arrays; the training scripts move them to torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from training.data.envelopes import ZIP_LENGTH, Nuisance, choose_digits, compose_envelopes
from training.data.split import DigitSplit
from training.data.warp import random_affines, warp


@dataclass(frozen=True)
class DigitAugment:
    """Random affine augmentation of 8x8 digits. ``enabled=False`` passes digits through."""

    enabled: bool = True
    rotation_deg: float = 10.0
    scale: tuple[float, float] = (0.9, 1.1)
    shear: float = 0.15
    shift_px: float = 0.7

    def __call__(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if not self.enabled:
            return images
        k, h, w = images.shape
        maps = random_affines(rng, k, self.scale, self.rotation_deg, self.shear)
        shift = rng.uniform(-self.shift_px, self.shift_px, size=(k, 2))
        out = warp(images, maps, h, shift)
        assert out.shape == images.shape
        return np.clip(out, 0.0, 16.0)


def digit_batches(split: DigitSplit, batch_size: int, rng: np.random.Generator,
                  augment: DigitAugment = DigitAugment()) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One epoch of (images float32 [b, 8, 8] in 0..16, labels int64 [b]), shuffled."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    order = rng.permutation(len(split.labels))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        yield augment(split.images[idx], rng).astype(np.float32), split.labels[idx]


# Training envelopes vary glyphs more than test envelopes do (augmentation): the reader then
# meets test handwriting as a milder case of what it trained on.
TRAIN_NUISANCE = Nuisance(scale=(1.4, 2.2), rotation_deg=12.0, shear=0.25, baseline_jitter_px=2.0)


def envelope_batches(split: DigitSplit, batch_size: int, n_batches: int, rng: np.random.Generator,
                     fresh: bool = True, nuisance: Nuisance = Nuisance()) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``n_batches`` of (envelopes uint8 [b, H, W], digit labels int64 [b, 5]) from ``split``."""
    if batch_size < 1 or n_batches < 0:
        raise ValueError(f"need batch_size >= 1 and n_batches >= 0, got {batch_size} and {n_batches}")
    fixed: list[tuple[np.ndarray, np.ndarray]] = []
    for b in range(n_batches):
        if not fresh and len(fixed) == 8:  # a fixed set of 8 batches, cycled
            yield fixed[b % 8]
            continue
        choice = choose_digits(len(split.labels), batch_size, rng)
        images, _ = compose_envelopes(split.images, split.labels, choice, rng, nuisance)
        batch = (images, split.labels[choice].reshape(batch_size, ZIP_LENGTH))
        if not fresh:
            fixed.append(batch)
        yield batch
