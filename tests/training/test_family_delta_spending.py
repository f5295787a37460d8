"""The detector and the captioner spend δ across versions like digits and zip-reader
(qc/delta_spending.py): the k-th version certified on the same certificate data (the detector's
labels rendered from the calibration/certificate digits, the captioner's certificate scenes) is
certified at δ_k = δ·6/(π²k²), counted from the registry; the card and the summary say so."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from auditstream.registry import ModelCard, ModelRegistry
from qc.delta_spending import EXTRA_KEY, delta_at
from tests.conftest import tiny_card, tiny_classifier_onnx
from training.captioner import train as captioner
from training.captioner.args import CaptionerArgs
from training.captioner.model import CaptionNet
from training.detector import train as detector
from training.detector.args import DetectorArgs
from training.selective import certificate_spending

SHIPPED = Path(__file__).resolve().parents[2] / "stack" / "demo_models"
DELTA_2 = 0.05 * 6 / (4 * math.pi ** 2)


def check_second_version(models: Path, name: str, first: dict, second: dict) -> None:
    assert first["version"] == "1" and second["version"] == "2"
    assert first["delta"] == pytest.approx(delta_at(0.05, 1)) and second["delta"] == pytest.approx(DELTA_2)
    assert second["family_delta"] == 0.05 and second["delta_spending"]["index"] == 2
    assert "certificate 2 on this slice" in second["delta_note"]
    card = ModelRegistry(models).card(name, "2")
    assert card.triage.delta == pytest.approx(DELTA_2)
    rec = card.extra[EXTRA_KEY]
    assert rec["index"] == 2 and rec["delta"] == pytest.approx(DELTA_2) and rec["family_delta"] == 0.05
    assert [e["version"] for e in rec["earlier"]] == ["1"]
    assert rec["earlier"][0]["delta"] == pytest.approx(delta_at(0.05, 1))


def test_a_second_detector_in_the_registry_is_certified_at_delta_2(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    """Two steps of training, a few labels (about 25 s on one core): the δ, not the model, is tested."""
    args = DetectorArgs(steps=2, hard_share=0.0, n_platt=20, n_certificate=40, n_test=20, seed=2, threads=1)
    net, reader, seconds = detector.train(args, progress=False)
    models = tmp_path / "models"
    first = detector.finish(net, reader, seconds, args, models, progress=False)
    second = detector.finish(net, reader, seconds, args, models, progress=False)
    check_second_version(models, "detector", first, second)
    detector.print_summary(second)
    assert "delta 0.007599 = certificate 2 on this slice of family delta 0.05" in capsys.readouterr().out
    card = ModelRegistry(models).card("detector", "2")
    assert card.extra["certificate"]["high"]["delta"] == pytest.approx(DELTA_2)  # the FDR test itself ran at δ_2
    slice_ = card.extra[EXTRA_KEY]["slice"]
    assert slice_["split"] == "calibration/certificate" and slice_["rendering"]["seed"] == detector.SEEDS["certificate"]
    # labels of another seed are other data: their own count; another count of the same seed is not
    same = detector.certificate_labels(args)
    other_seed = dataclasses.replace(same, rendering={**same.rendering, "seed": 1})
    assert certificate_spending(models, "detector", 0.05, other_seed).index == 1
    more = detector.certificate_labels(dataclasses.replace(args, n_certificate=80))
    assert certificate_spending(models, "detector", 0.05, more).index == 3


def test_a_second_captioner_in_the_registry_is_certified_at_delta_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture) -> None:
    """An untrained net, exported once, decoded by torch (the ONNX sessions cost ~7 s each on a
    loaded core; parity is tested in test_captioner.py): the δ, not the model, is tested."""
    torch.manual_seed(0)
    args = CaptionerArgs(width=32, n_selection=20, n_certificate=20, n_test=20, threads=1)
    net = CaptionNet(args.width).eval()
    real_export, graphs = captioner.export_onnx, []

    def export_once(*args, **kwargs) -> bytes:  # the real export, once: both versions publish the same graph
        if not graphs:
            graphs.append(real_export(*args, **kwargs))
        return graphs[0]

    monkeypatch.setattr(captioner, "export_onnx", export_once)
    monkeypatch.setattr(captioner, "onnx_captions", lambda onnx_bytes, images: captioner.torch_captions(net, images))
    models = tmp_path / "models"
    first = captioner.finish(net, 0.0, args, models)
    second = captioner.finish(net, 0.0, args, models)
    check_second_version(models, "captioner", first, second)
    captioner.print_summary(second)
    assert "delta 0.007599 = certificate 2 on this slice of family delta 0.05" in capsys.readouterr().out
    card = ModelRegistry(models).card("captioner", "2")
    assert card.extra["certificate"]["delta"] == pytest.approx(DELTA_2)  # the coverage grid itself ran at δ_2
    slice_ = card.extra[EXTRA_KEY]["slice"]
    assert slice_["split"] == "certificate scenes" and slice_["rendering"]["count"] == 20


def test_the_shipped_detector_card_spent_delta_1_and_the_next_version_gets_delta_2(tmp_path: Path) -> None:
    """The demo detector (re-certified under the schedule, 2026-12-05) took index 1 at δ_1 of the
    certificate slice the training arguments make; the next version gets δ_2, inside the family's δ."""
    card = ModelCard.from_dict(json.loads((SHIPPED / "detector" / "card.json").read_text()))
    assert card.extra[EXTRA_KEY]["index"] == 1 and card.triage.delta == pytest.approx(delta_at(0.05, 1))
    ModelRegistry(tmp_path).publish(card, (SHIPPED / "detector" / "model.onnx").read_bytes())
    spending = certificate_spending(tmp_path, "detector", 0.05, detector.certificate_labels(DetectorArgs()))
    assert spending.index == 2 and spending.delta == pytest.approx(DELTA_2)
    assert spending.spent_before == pytest.approx(delta_at(0.05, 1)) and spending.family_delta_bound <= 0.05 + 1e-12


@pytest.mark.parametrize("name", ["captioner"])
def test_the_shipped_card_counts_as_spent_in_full(name: str, tmp_path: Path) -> None:
    """The demo card (from before the schedule: no extra.delta_spending) loads and occupies index 1
    at its full δ; the next version gets δ_2 and the family bound says what the old card overspent."""
    card = ModelCard.from_dict(json.loads((SHIPPED / name / "card.json").read_text()))
    assert EXTRA_KEY not in card.extra and card.triage.delta == 0.05
    ModelRegistry(tmp_path).publish(card, (SHIPPED / name / "model.onnx").read_bytes())
    slice_ = (detector.certificate_labels(DetectorArgs()) if name == "detector"
              else captioner.certificate_scenes(CaptionerArgs()))
    spending = certificate_spending(tmp_path, name, 0.05, slice_)
    assert spending.index == 2 and spending.delta == pytest.approx(DELTA_2)
    assert spending.spent_before == 0.05 and spending.family_delta_bound == pytest.approx(0.05 + 0.05 - delta_at(0.05, 1))
    assert spending.earlier == [{"version": "1", "index": None, "delta": 0.05}]


def test_another_models_versions_do_not_count(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    registry.publish(dataclasses.replace(tiny_card("digits"), training={}), tiny_classifier_onnx())
    assert certificate_spending(tmp_path, "detector", 0.05, detector.certificate_labels(DetectorArgs())).index == 1
