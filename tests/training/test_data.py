"""The digits split, the envelope generator and the loader: no leaks, determinism, switches."""

from __future__ import annotations

import numpy as np
import pytest

from training.data.envelopes import ENVELOPE_H, ENVELOPE_W, ZIP_LENGTH, make_envelopes
from training.data.loader import DigitAugment, digit_batches, envelope_batches
from training.data.split import (CALIBRATION_SLICES, SLICES, SPLITS, calibration_slices, load_split, split_indices,
                                  train_slices, train_subset)


def test_split_partitions_all_digits_stratified():
    parts = split_indices()
    everything = np.concatenate([parts[s] for s in SPLITS])
    assert len(everything) == 1797 == len(np.unique(everything))
    for name in SPLITS:
        counts = np.bincount(load_split(name).labels, minlength=10)
        assert counts.min() >= 0.8 * counts.max()  # each split holds every digit in similar numbers
    assert [len(parts[s]) for s in SPLITS] == [898, 539, 360]


def test_calibration_slices_partition_the_calibration_digits():
    """The temperature is fitted on one slice, the certificate computed on the other: disjoint,
    together the calibration split, each stratified by label."""
    slices = calibration_slices()
    temperature, certificate = (slices[name] for name in CALIBRATION_SLICES)
    assert not set(temperature) & set(certificate)
    assert np.array_equal(np.sort(np.concatenate([temperature, certificate])), split_indices()["calibration"])
    assert (len(temperature), len(certificate)) == (53, 486)
    for name in CALIBRATION_SLICES:
        counts = np.bincount(load_split(name).labels, minlength=10)
        assert counts.min() >= 0.8 * counts.max()


def test_split_is_fixed_by_its_seed():
    assert all(np.array_equal(split_indices()[s], split_indices()[s]) for s in SPLITS)
    assert not np.array_equal(split_indices(1)["test"], split_indices(2)["test"])


@pytest.mark.parametrize("name", SPLITS + SLICES)
def test_cached_split_indices_are_read_only(name):
    """load_split hands out the cached index array itself: an in-place edit by one caller would
    move a digit into another split for every later caller (a training digit into the certificate)."""
    before = load_split(name).indices.copy()
    indices = load_split(name).indices
    assert not indices.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        indices[0] = -1
    assert np.array_equal(load_split(name).indices, before)
    for cached in (split_indices(), calibration_slices(), train_slices()):
        assert not any(a.flags.writeable for a in cached.values())
        with pytest.raises(TypeError):
            cached["test"] = np.arange(3)  # the cached mapping itself cannot be changed either


def test_train_subset_is_not_nested_in_the_validation_slice():
    """The seed set of a learning-curve run is a random part of *all* training digits, drawn
    independently of the train/fit -- train/validation cut (it once shared that cut's generator:
    every subset of up to 15% lay inside train/validation, and 30% held all of it)."""
    validation = set(train_slices()["train/validation"].tolist())
    for fraction in (0.02, 0.1, 0.15, 0.3):
        chosen = set(train_subset(fraction)[0].indices.tolist())
        inside = len(chosen & validation) / len(chosen)
        # about 15% of a random part of the training digits is validation digits
        assert 0.03 <= inside <= 0.35, (fraction, inside)
    assert not validation <= set(train_subset(0.3)[0].indices.tolist())


@pytest.mark.parametrize("sampling", ["iid", "disjoint"])
def test_envelopes_never_leak_digits_between_splits(sampling):
    parts = split_indices()
    used = {}
    for name in SPLITS:
        n = 60 if sampling == "disjoint" else 300
        images, zips, sources = make_envelopes(name, n, seed=11, sampling=sampling, with_sources=True)
        assert images.shape == (n, ENVELOPE_H, ENVELOPE_W) and images.dtype == np.uint8
        assert set(sources.ravel()) <= set(parts[name])
        digits_labels = load_split(name)
        label_of = dict(zip(digits_labels.indices, digits_labels.labels))
        assert ["".join(str(label_of[i]) for i in row) for row in sources] == zips
        used[name] = set(sources.ravel())
        if sampling == "disjoint":
            assert len(used[name]) == n * ZIP_LENGTH  # each digit image at most once
    assert not (used["train"] & used["calibration"]) and not (used["train"] & used["test"])
    assert not (used["calibration"] & used["test"])


def test_disjoint_envelopes_are_limited_by_the_pool():
    with pytest.raises(ValueError, match="at most 107"):
        make_envelopes("calibration", 108, seed=0, sampling="disjoint")


def test_envelopes_are_deterministic_for_a_seed():
    a, za = make_envelopes("test", 20, seed=5)
    b, zb = make_envelopes("test", 20, seed=5)
    c, _ = make_envelopes("test", 20, seed=6)
    assert np.array_equal(a, b) and za == zb
    assert not np.array_equal(a, c)


def test_envelopes_look_like_ink_on_paper():
    images, _ = make_envelopes("train", 50, seed=1)
    # Paper is light, the darkest pixels (ink) are much darker than the median (paper).
    assert np.median(images) > 150
    assert (np.percentile(images.reshape(50, -1), 1, axis=1) < 110).all()


def test_augmentation_switch():
    split = load_split("train")
    off = next(digit_batches(split, 32, np.random.default_rng(0), DigitAugment(enabled=False)))
    on = next(digit_batches(split, 32, np.random.default_rng(0), DigitAugment(enabled=True)))
    assert np.array_equal(off[1], on[1])  # same shuffle, same labels
    assert np.array_equal(off[0], split.images[np.random.default_rng(0).permutation(len(split.labels))[:32]])
    assert on[0].shape == off[0].shape and 0 <= on[0].min() and on[0].max() <= 16
    assert not np.allclose(on[0], off[0])


def test_envelope_batches_fresh_or_fixed():
    split = load_split("train")
    fresh = list(envelope_batches(split, 4, 10, np.random.default_rng(0)))
    fixed = list(envelope_batches(split, 4, 10, np.random.default_rng(0), fresh=False))
    assert fresh[0][0].shape == (4, ENVELOPE_H, ENVELOPE_W) and fresh[0][1].shape == (4, ZIP_LENGTH)
    assert not np.array_equal(fresh[0][0], fresh[8][0])
    assert np.array_equal(fixed[0][0], fixed[8][0])


def test_envelope_core_needs_no_torch():
    import subprocess
    import sys

    code = ("import sys, numpy as np; from training.data.envelopes import compose_envelopes; "
            "im, z = compose_envelopes(np.ones((5, 8, 8)) * 16, np.arange(5), np.array([[0, 1, 2, 3, 4]]), "
            "np.random.default_rng(0)); assert z == ['01234']; "
            "assert 'torch' not in sys.modules and 'sklearn' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_elastic_distortion_bends_strokes_and_a_zero_field_changes_nothing():
    from training.data.warp import random_affines, random_distortions, warp

    rng = np.random.default_rng(0)
    glyphs = load_split("train").images[:16] / 16.0
    maps = random_affines(rng, 16, (2.0, 2.5), 10.0, 0.1)
    plain = warp(glyphs, maps, 24)
    assert np.array_equal(warp(glyphs, maps, 24, distortion=np.zeros((16, 2, 3, 3))), plain)
    # A constant field is a shift of the source: one source pixel to the right moves the ink left.
    shifted = warp(glyphs, np.repeat(np.eye(2)[None] * 2.0, 16, 0), 24,
                   distortion=np.stack([np.zeros((16, 3, 3)), np.ones((16, 3, 3))], 1))
    reference = warp(glyphs, np.repeat(np.eye(2)[None] * 2.0, 16, 0), 24, shift=np.tile([0.0, -2.0], (16, 1)))
    assert np.allclose(shifted, reference, atol=1e-5)
    bent = warp(glyphs, maps, 24, distortion=random_distortions(rng, 16, 0.4))
    assert bent.shape == plain.shape and 0 < np.abs(bent - plain).mean() < 0.2
    with pytest.raises(ValueError, match="field per image"):
        warp(glyphs, maps, 24, distortion=np.zeros((3, 2, 3, 3)))


def test_detector_training_labels_bend_their_strokes_only_when_asked():
    from training.detector.data import training_batches

    bent = next(training_batches("train", 8, 1, np.random.default_rng(3), 0.3, elastic=0.4))
    plain = next(training_batches("train", 8, 1, np.random.default_rng(3), 0.3))
    off = next(training_batches("train", 8, 1, np.random.default_rng(3), 0.3, elastic=0.0))
    assert len(bent) == len(plain) == 8 and not np.array_equal(bent.images, plain.images)
    assert np.array_equal(off.images, plain.images)  # no field drawn: the seed's labels stay as they were
