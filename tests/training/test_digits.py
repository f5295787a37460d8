"""The digits model learns, exports with its serving contract, publishes, and is deterministic."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from auditstream.registry import ModelRegistry
from training.digits import train as digits
from training.data.split import load_split
from training.export import run_onnx
from training.digits.args import DigitsArgs


@pytest.mark.slow
def test_short_training_beats_90_percent_and_publishes_a_servable_model(tmp_path):
    args = DigitsArgs(epochs=8, seed=3)
    summary = digits.run(args, tmp_path, progress=False)
    assert summary["test_error"] <= 0.10  # 8 epochs: well above 90% accuracy (the full run: ~99.4%)
    assert summary["parity_max_abs_diff"] <= 1e-4
    model = ModelRegistry(tmp_path).load("digits")  # checksum and safety checks pass
    card = model.card
    assert card.task == "classification" and card.labels == [str(d) for d in range(10)]
    assert card.inputs[0].shape == [None, 8, 8] and card.outputs[0].shape == [None, 10]
    assert card.triage.confidence_kind == "max_prob" and card.training["args"]["delta"] == 0.05
    # the first certificate on the slice spends 6/pi^2 of the family's delta (qc/delta_spending.py)
    assert card.triage.delta == pytest.approx(0.05 * 6 / np.pi ** 2) and card.extra["delta_spending"]["index"] == 1
    assert card.triage.certified_risk is not None and 0 < len(card.reference["confidence_sample"]) <= 2000
    assert card.risk_coverage[-1]["coverage"] == 1.0
    assert (model.directory / "risk_coverage.png").stat().st_size > 1000
    test = load_split("test")
    (probs,) = run_onnx(model.onnx_path.read_bytes(), test.images)  # raw 0..16 pixels in, calibrated probs out
    assert probs.shape == (360, 10) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert np.mean(probs.argmax(1) == test.labels) == pytest.approx(1 - summary["test_error"])
    # The certificate was computed on the published graph's own outputs, on the certificate slice,
    # with the confidences serving computes from them (rounded to 6 decimals).
    (cert_probs,) = run_onnx(model.onnx_path.read_bytes(), load_split("calibration/certificate").images)
    served = digits.served(cert_probs)[0]
    assert served.tolist() == [round(float(c), 6) for c in cert_probs.max(1)]
    assert np.mean(served >= card.triage.threshold) == pytest.approx(card.triage.coverage)


def test_training_is_deterministic_for_a_seed():
    a, _ = digits.train(DigitsArgs(epochs=1, seed=5), progress=False)
    b, _ = digits.train(DigitsArgs(epochs=1, seed=5), progress=False)
    c, _ = digits.train(DigitsArgs(epochs=1, seed=6), progress=False)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def _near_one_probs(labels: np.ndarray, wrong_share: float) -> np.ndarray:
    """float32 probabilities whose top values sit just below 1, 1e-7 apart (rounding to 6 decimals
    merges about ten neighbours, and moves some up, some down); the least sure ``wrong_share`` of
    the rows predict the wrong class."""
    n = len(labels)
    top = (1.0 - np.arange(1, n + 1) * 1e-7).astype(np.float32)
    predicted = np.where(np.arange(n) >= n * (1 - wrong_share), (labels + 1) % 10, labels)
    probs = np.repeat(((1.0 - top) / 9)[:, None], 10, axis=1).astype(np.float32)
    probs[np.arange(n), predicted] = top
    return probs


def test_the_certified_accept_set_is_the_one_serving_accepts(tmp_path, monkeypatch):
    """Serving triages on the classification kind's confidence (rounded to 6 decimals); the
    certificate once counted the unrounded float32 values, so the items it counted as accepted
    were not the ones serving accepted at its threshold. Outputs near 1, where the rounding moves
    items across the threshold, stand in for the exported graph."""
    from auditstream.tasks.classification import TASK
    from auditstream.wire import Route
    from qc.triage import TriagePolicy, triage
    from training.selective import certificate_spending

    crafted = {n: _near_one_probs(load_split(name).labels, 0.06) for n, name in
               ((486, "calibration/certificate"), (360, "test"))}
    monkeypatch.setattr(digits, "run_onnx", lambda onnx_bytes, images: [crafted[len(images)]])
    args = DigitsArgs(target_risk=0.05)
    result = digits.evaluate(digits.DigitNet().eval(), b"", 1.0, args, certificate_spending(tmp_path, "digits", 0.05))
    cert = result["certificate"]
    card = digits.build_card(args, result, 0.0, 0.0)
    assert 0.0 < cert.coverage < 1.0 and card.triage.threshold == cert.threshold

    def served_accepts(name: str) -> int:
        answers = TASK.postprocess(card, {"probs": crafted[len(load_split(name).labels)]})
        return sum(triage(str(i), a.confidence, card.triage, TriagePolicy()).route != Route.HUMAN
                   for i, a in enumerate(answers))

    assert served_accepts("calibration/certificate") == cert.n_accepted
    assert served_accepts("test") == result["test_accepted"]
