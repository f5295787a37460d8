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
    # The certificate was computed on the published graph's own outputs, on the certificate slice.
    (cert_probs,) = run_onnx(model.onnx_path.read_bytes(), load_split("calibration/certificate").images)
    assert np.mean(cert_probs.astype(np.float64).max(1) >= card.triage.threshold) == pytest.approx(card.triage.coverage)


def test_training_is_deterministic_for_a_seed():
    a, _ = digits.train(DigitsArgs(epochs=1, seed=5), progress=False)
    b, _ = digits.train(DigitsArgs(epochs=1, seed=5), progress=False)
    c, _ = digits.train(DigitsArgs(epochs=1, seed=6), progress=False)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
