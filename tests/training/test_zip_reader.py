"""The zip reader learns to read envelopes and exports [b, 5, 10] calibrated position probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from auditstream.registry import ModelRegistry
from training.zip_reader import train as zip_reader
from training.data.envelopes import make_envelopes
from training.export import run_onnx
from training.zip_reader.args import ZipReaderArgs


@pytest.mark.slow
def test_short_training_reads_most_characters_and_publishes_a_servable_model(tmp_path):
    args = ZipReaderArgs(steps=160, n_calibration=400, n_test=300, seed=2)
    summary = zip_reader.run(args, tmp_path, progress=False)
    # 160 steps (~10k envelopes): most characters read (the full 1200-step run: ~99%).
    assert summary["char_error"] <= 0.15
    assert summary["parity_max_abs_diff"] <= 1e-4
    model = ModelRegistry(tmp_path).load("zip-reader")
    card = model.card
    assert card.task == "sequence" and card.triage.confidence_kind == "min_char_prob"
    assert card.inputs[0].dtype == "uint8" and card.inputs[0].shape == [None, 32, 96]
    assert card.outputs[0].shape == [None, 5, 10]
    assert set(card.metrics["confidence_choice"]) == set(zip_reader.CONFIDENCE_KINDS)
    strict = card.extra["strict_certificates"]
    assert strict["n_envelopes"] == 97  # 486 certificate digits // 5
    assert strict["targets_considered"] == [0.02, 0.05, 0.1, 0.2]
    # the first certificate on the slice: 6/pi^2 of delta 0.05 (qc/delta_spending.py), split over the targets tried
    assert card.triage.delta == pytest.approx(0.05 * 6 / np.pi ** 2) and card.extra["delta_spending"]["index"] == 1
    assert strict["targets_tried"] == [0.1, 0.2] and strict["delta_per_target"] == pytest.approx(card.triage.delta / 2)
    assert card.triage.target_risk == strict["promised_target_risk"]  # the tightest considered target >= the bound
    assert card.triage.certified_risk <= card.triage.target_risk or card.triage.coverage == 0.0
    images, zips = make_envelopes("test", 64, seed=99)
    (probs,) = run_onnx(model.onnx_path.read_bytes(), images)
    assert probs.shape == (64, 5, 10) and np.allclose(probs.sum(2), 1, atol=1e-5)
    labels = zip_reader.zip_labels(zips)
    assert np.mean(probs.argmax(2) == labels) >= 0.8


def test_delta_is_spent_only_on_targets_some_outcome_could_certify():
    """80 envelopes cannot prove 2% or 5% even if all are read right: those are dropped before
    any error is seen and delta goes to the rest; with plenty of envelopes every target stays."""
    assert zip_reader.targets_worth_trying([0.02, 0.05, 0.1, 0.2], 80, 0.05) == [0.1, 0.2]
    assert zip_reader.targets_worth_trying([0.02, 0.05, 0.1, 0.2], 2000, 0.05) == [0.02, 0.05, 0.1, 0.2]
    assert zip_reader.targets_worth_trying([0.001, 0.002], 10, 0.05) == [0.002]  # nothing certifiable: the last


def test_confidence_kinds_on_a_table():
    probs = np.full((2, 5, 10), 0.0)
    probs[:, :, 0] = [[0.9, 0.8, 0.99, 0.7, 0.95], [0.6, 0.6, 0.6, 0.6, 0.6]]
    probs[:, :, 1] = 1 - probs[:, :, 0]
    kinds = zip_reader.confidences(probs)
    assert kinds["min_char_prob"] == pytest.approx([0.7, 0.6])
    assert kinds["product_char_prob"] == pytest.approx([0.9 * 0.8 * 0.99 * 0.7 * 0.95, 0.6 ** 5])
    assert kinds["mean_char_prob"] == pytest.approx([0.868, 0.6])
    wrong, char_wrong = zip_reader.read(probs, np.array([[0, 0, 0, 1, 0], [0] * 5]))
    assert wrong.tolist() == [1, 0] and char_wrong.sum() == 1


def test_training_is_deterministic_for_a_seed():
    a, _ = zip_reader.train(ZipReaderArgs(steps=3, batch_size=8, seed=4), progress=False)
    b, _ = zip_reader.train(ZipReaderArgs(steps=3, batch_size=8, seed=4), progress=False)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(np.array_equal(sa[k].numpy(), sb[k].numpy()) for k in sa)


def test_the_certified_accept_set_is_the_one_serving_accepts(tmp_path, monkeypatch):
    """Serving triages on the sequence kind's confidence (the least sure position, rounded to 6
    decimals); the certificate once counted the unrounded float32 values, so the envelopes it
    counted as accepted were not the ones serving accepted at its threshold. Outputs near 1, where
    the rounding moves envelopes across the threshold, stand in for the exported graph."""
    from auditstream.tasks.sequence import TASK
    from auditstream.wire import Route
    from qc.triage import TriagePolicy, triage
    from training.selective import certificate_spending

    zips_of: dict[int, list[str]] = {}

    def envelopes(split: str, n: int, seed: int, sampling: str = "iid") -> tuple[np.ndarray, list[str]]:
        rng = np.random.default_rng([seed, n])
        images = np.zeros((n, 32, 96), np.uint8)
        zips_of[id(images)] = ["".join(map(str, rng.integers(0, 10, 5))) for _ in range(n)]
        return images, zips_of[id(images)]

    def near_one(onnx_bytes: bytes, images: np.ndarray) -> np.ndarray:
        """The least sure position 1e-7 apart from one envelope to the next, just below 1; the
        least sure 6% of the envelopes misread there."""
        labels = zip_reader.zip_labels(zips_of[id(images)])
        n = len(labels)
        top = (1.0 - np.arange(1, n + 1) * 1e-7).astype(np.float32)
        probs = np.zeros((n, 5, 10), np.float32)
        probs[np.arange(n)[:, None], np.arange(5), labels] = 1.0
        read = np.where(np.arange(n) >= n * 0.94, (labels[:, 0] + 1) % 10, labels[:, 0])
        probs[:, 0, :] = ((1.0 - top) / 9)[:, None]
        probs[np.arange(n), 0, read] = top
        return probs.astype(np.float64)

    monkeypatch.setattr(zip_reader, "make_envelopes", envelopes)
    monkeypatch.setattr(zip_reader, "onnx_char_probs", near_one)
    args = ZipReaderArgs(n_calibration=300, n_test=300, target_risk=0.1)
    result = zip_reader.evaluate(zip_reader.ZipReaderNet().eval(), b"", 1.0, args,
                                 certificate_spending(tmp_path, "zip-reader", 0.05))
    cert = result["certificate"]
    card = zip_reader.build_card(args, result, 0.0, 0.0)
    assert 0.0 < cert.coverage < 1.0 and card.triage.threshold == cert.threshold
    scope = card.extra["certificate_scope"]  # what the bound is about: new digits of the same writers
    assert "same 13 writers" in scope and "not for handwriting of new writers" in scope
    assert "confidences serving computes" in scope

    def served_accepts(images: np.ndarray) -> int:
        answers = TASK.postprocess(card, {"char_probs": near_one(b"", images).astype(np.float32)})
        return sum(triage(str(i), a.confidence, card.triage, TriagePolicy(),
                          part_confidences=[p.confidence for p in a.parts]).route != Route.HUMAN
                   for i, a in enumerate(answers))

    certificate = envelopes("calibration/certificate", result["strict"]["n_envelopes"], seed=7003)[0]
    assert served_accepts(certificate) == cert.n_accepted
    assert served_accepts(envelopes("test", args.n_test, seed=7002)[0]) == result["test_accepted"]
