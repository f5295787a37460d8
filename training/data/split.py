"""The one reproducible split of scikit-learn's bundled handwritten digits.

Every mail-sorting model and every statistic uses this split: ``train`` fits weights,
``calibration`` fits the temperature and certifies the threshold, ``test`` only measures. The
split is stratified by label and fixed by ``SPLIT_SEED``; envelopes are composed from the digits
of one split only, so a test ZIP never reuses a training stroke.

Fractions: 50 / 30 / 20. The calibration share is large on purpose: certifying 2% risk needs
hundreds of accepted calibration items (zero errors among m items only prove 1 - delta^(1/m)).

The calibration digits come in two disjoint slices, ``calibration/temperature`` (a tenth,
stratified by label) and ``calibration/certificate`` (the rest): the temperature is fitted on
the first and the threshold certified on the second, because a certificate is only exact on data
that chose nothing else about the model.

The training digits come in two disjoint slices too, ``train/fit`` and ``train/validation`` (15%,
stratified by label), for hyperparameter search (``auditstream tune``, training/tuning/): a
trial fits on the first and is judged and pruned on the second, so choosing hyperparameters
touches neither the calibration digits (whose certificate must not depend on them) nor the
test digits. The model the search finally trains uses the whole ``train`` split.

``train_subset(fraction)`` (the small seed training set of a learning-curve run) draws its
digits from a stream of its own (``default_rng([seed, TRAIN_SUBSET_STREAM])``), independent of
the train/fit -- train/validation cut: the seed set is a random stratified part of all training
digits, not a part of ``train/validation``.

Every index array this module hands out is cached and read-only (as are the images and labels
it indexes), and the cached mappings cannot be changed either: a caller that edited one in place
would silently move digits between splits for every later caller in the process.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType
from typing import Mapping

import numpy as np

SPLIT_SEED = 20240917
FRACTIONS = {"train": 0.5, "calibration": 0.3, "test": 0.2}
SPLITS = tuple(FRACTIONS)
TEMPERATURE_SHARE = 0.1  # of the calibration digits, per label: one parameter needs few
CALIBRATION_SLICES = ("calibration/temperature", "calibration/certificate")
VALIDATION_SHARE = 0.15  # of the training digits, per label: enough to rank trials, most still fit
TRAIN_SLICES = ("train/fit", "train/validation")
SLICES = CALIBRATION_SLICES + TRAIN_SLICES
# Second entropy word of train_subset's generator, default_rng([seed, TRAIN_SUBSET_STREAM]): a
# stream that no integer seed (the split's, seed + 1 of the calibration slices, seed + 2 of the
# training slices) reproduces.
TRAIN_SUBSET_STREAM = 3


@dataclass(frozen=True)
class DigitSplit:
    """Digits of one split: ``images`` float32 [n, 8, 8] with sklearn's raw 0..16 ink values."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    indices: np.ndarray  # positions in sklearn's load_digits(), to prove splits are disjoint


def _frozen(parts: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
    """``parts`` as the cache hands it out: read-only arrays in a read-only mapping."""
    for array in parts.values():
        array.setflags(write=False)
    return MappingProxyType(parts)


@lru_cache(maxsize=4)
def split_indices(seed: int = SPLIT_SEED) -> Mapping[str, np.ndarray]:
    """Indices into ``load_digits()`` per split, stratified by label, sorted (read-only)."""
    labels = _load()[1]
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in SPLITS}
    for digit in range(10):
        members = rng.permutation(np.flatnonzero(labels == digit))
        n_train = round(len(members) * FRACTIONS["train"])
        n_cal = round(len(members) * FRACTIONS["calibration"])
        parts["train"].append(members[:n_train])
        parts["calibration"].append(members[n_train:n_train + n_cal])
        parts["test"].append(members[n_train + n_cal:])
    return _frozen({name: np.sort(np.concatenate(chunks)) for name, chunks in parts.items()})


def load_split(name: str, seed: int = SPLIT_SEED) -> DigitSplit:
    """The digits of split ``name`` ('train', 'calibration' or 'test'), or of one of the
    :data:`SLICES` ('calibration/temperature', 'calibration/certificate', 'train/fit',
    'train/validation')."""
    if name not in SPLITS + SLICES:
        raise ValueError(f"split {name!r} not one of {SPLITS + SLICES}")
    images, labels = _load()
    if name in SPLITS:
        idx = split_indices(seed)[name]
    else:
        idx = (calibration_slices(seed) if name in CALIBRATION_SLICES else train_slices(seed))[name]
    return DigitSplit(name, images[idx], labels[idx], idx)


@lru_cache(maxsize=4)
def calibration_slices(seed: int = SPLIT_SEED) -> Mapping[str, np.ndarray]:
    """The calibration indices in the two disjoint :data:`CALIBRATION_SLICES`, stratified, sorted
    (read-only)."""
    return _frozen(_two_slices("calibration", CALIBRATION_SLICES, TEMPERATURE_SHARE, seed, seed + 1))


@lru_cache(maxsize=4)
def train_slices(seed: int = SPLIT_SEED) -> Mapping[str, np.ndarray]:
    """The training indices in the two disjoint :data:`TRAIN_SLICES`, stratified, sorted (read-only)."""
    fit, validation = TRAIN_SLICES
    slices = _two_slices("train", (validation, fit), VALIDATION_SHARE, seed, seed + 2)
    return _frozen({fit: slices[fit], validation: slices[validation]})


def _two_slices(split: str, names: tuple[str, str], share: float, seed: int, slice_seed: int) -> dict[str, np.ndarray]:
    """Split ``split``'s indices: ``share`` of each label's (drawn with ``slice_seed``) go to
    ``names[0]``, the rest to ``names[1]``."""
    members_of, labels = split_indices(seed)[split], _load()[1]
    rng = np.random.default_rng(slice_seed)
    first = []
    for digit in range(10):
        members = rng.permutation(members_of[labels[members_of] == digit])
        first.append(members[:round(len(members) * share)])
    chosen = np.sort(np.concatenate(first))
    return {names[0]: chosen, names[1]: np.setdiff1d(members_of, chosen)}


def train_subset(fraction: float, seed: int = SPLIT_SEED) -> tuple[DigitSplit, DigitSplit]:
    """(a fixed ``fraction`` of each label's training digits, the rest), both in the split's order:
    the small seed training set a learning-curve run starts from, and the digits it streams
    later. ``fraction=1`` is the whole training split. The part is drawn from a generator of its
    own (:data:`TRAIN_SUBSET_STREAM`), so it is a random part of all training digits, independent
    of which of them are ``train/validation``."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"train_fraction={fraction} must be in (0, 1]")
    train = load_split("train", seed)
    rng = np.random.default_rng([seed, TRAIN_SUBSET_STREAM])
    chosen = []
    for digit in range(10):
        members = rng.permutation(np.flatnonzero(train.labels == digit))
        chosen.append(members[:max(1, round(len(members) * fraction))])
    keep = np.zeros(len(train.labels), dtype=bool)
    keep[np.concatenate(chosen)] = True

    def part(mask: np.ndarray, name: str) -> DigitSplit:
        return DigitSplit(name, train.images[mask], train.labels[mask], train.indices[mask])

    return part(keep, f"train[{fraction:g}]"), part(~keep, f"train[{fraction:g}:]")


@lru_cache(maxsize=1)
def _load() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    digits = load_digits()
    images = digits.images.astype(np.float32)
    images.setflags(write=False)
    labels = digits.target.astype(np.int64)
    labels.setflags(write=False)
    return images, labels
