"""Each version certified on the calibration/certificate slice spends its share of δ
(qc/delta_spending.py): training certifies version 1 at δ_1, ``auditstream retrain`` version 2 at
δ_2, counted from the registry; the card records it and the summary says it."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil

import pytest

from auditstream.registry import ModelRegistry
from qc.delta_spending import EXTRA_KEY, CertificateSlice, delta_at
from tests.conftest import tiny_card, tiny_classifier_onnx
from tests.training.test_retrain import SEED_FRACTION, verdict_rows, write_rows
from training import retrain
from training.data.split import FRACTIONS, SPLIT_SEED, load_split
from training.digits import train as digits
from training.digits.args import DigitsArgs
from training.selective import RESERVATIONS_DIR, CannotSpendDelta, certificate_slice, certificate_spending


def test_the_certificate_slice_is_named_by_its_split_and_indices():
    s = certificate_slice()
    assert (s.split, s.split_seed, s.split_fractions) == ("calibration/certificate", SPLIT_SEED, FRACTIONS)
    assert s == certificate_slice() and len(s.indices_sha256) == 64  # stable across calls
    assert s.indices_sha256 != certificate_slice("calibration/temperature").indices_sha256
    assert len(load_split("calibration/certificate").indices) == 486


def publish(registry: ModelRegistry, name: str, extra: dict | None = None, training: dict | None = None) -> str:
    card = dataclasses.replace(tiny_card(name), extra=extra or {}, training={
        "split_seed": SPLIT_SEED, "split_fractions": FRACTIONS} if training is None else training)
    return registry.publish(card, tiny_classifier_onnx()).card.version


def test_the_index_comes_from_this_models_versions_on_this_slice(tmp_path):
    registry, here = ModelRegistry(tmp_path), certificate_slice()
    elsewhere = CertificateSlice("calibration/certificate", SPLIT_SEED + 1, FRACTIONS, "f" * 64)
    assert certificate_spending(tmp_path, "digits", 0.05).index == 1  # an empty registry
    publish(registry, "digits")  # an old card on this split
    publish(registry, "digits", {EXTRA_KEY: {"index": 1, "delta": 0.01, "slice": elsewhere.to_dict()}})
    publish(registry, "zip-reader")  # another model: its own family
    publish(registry, "zip-reader")
    spending = certificate_spending(tmp_path, "digits", 0.05)
    assert spending.index == 2 and spending.slice == here.to_dict()
    assert [e["version"] for e in spending.earlier] == ["1"]
    assert certificate_spending(tmp_path, "zip-reader", 0.05).index == 3


def test_an_unreadable_card_is_refused_before_anything_is_certified(tmp_path):
    registry = ModelRegistry(tmp_path)
    publish(registry, "digits")
    (tmp_path / "digits" / "1" / "card.json").write_text("{not json")
    with pytest.raises(CannotSpendDelta, match="repair that card.json"):
        certificate_spending(tmp_path, "digits", 0.05)
    with pytest.raises(CannotSpendDelta, match="repair"):  # before the training, not after it
        digits.run(DigitsArgs(epochs=1, train_fraction=SEED_FRACTION), tmp_path, progress=False)


def test_retrain_certifies_version_two_at_delta_two_and_the_card_records_it(tmp_path, capsys):
    models = tmp_path / "models"
    first = digits.run(DigitsArgs(epochs=1, train_fraction=SEED_FRACTION, seed=2), models, progress=False)
    registry = ModelRegistry(models)
    one = registry.card("digits", "1")
    assert first["delta"] == one.triage.delta == delta_at(0.05, 1) == pytest.approx(0.05 * 6 / math.pi ** 2)
    assert one.extra[EXTRA_KEY]["index"] == 1 and one.training["args"]["delta"] == 0.05

    labels = write_rows(tmp_path / "labels.jsonl", verdict_rows(60))
    assert retrain.main(retrain.RetrainArgs(model="digits", labels=str(labels), epochs=1), models) == 0
    out = capsys.readouterr().out
    assert "delta 0.007599 = certificate 2 on this slice of family delta 0.05" in out

    two = registry.card("digits", "2")
    rec = two.extra[EXTRA_KEY]
    d2 = 0.05 * 6 / (math.pi ** 2 * 4)
    assert rec["index"] == 2 and rec["family_delta"] == 0.05 and rec["delta"] == pytest.approx(d2)
    assert rec["slice"] == certificate_slice().to_dict() == one.extra[EXTRA_KEY]["slice"]
    assert rec["spent_before"] == pytest.approx(delta_at(0.05, 1)) and rec["family_delta_bound"] == pytest.approx(0.05)
    # the claim the card makes -- what promotion, the dashboard and serving read -- is at delta_2
    assert two.triage.delta == pytest.approx(d2) and two.extra["certificate"]["delta"] == pytest.approx(d2)
    # the family delta stays on the args: the next retrain spends delta_3 of 0.05, not of delta_2
    assert two.training["args"]["delta"] == 0.05
    assert retrain.family_args(two, retrain.RetrainArgs(model="digits"), retrain.family_of("digits")).delta == 0.05
    assert certificate_spending(models, "digits", 0.05).index == 3


def test_retrain_after_a_card_certified_at_the_full_delta_counts_it_in_full(tmp_path):
    """A version trained before the schedule spent its whole delta: the next one is certificate 2
    and the card says the family bound is above delta by what the old one overspent."""
    models = tmp_path / "models"
    digits.run(DigitsArgs(epochs=1, train_fraction=SEED_FRACTION, seed=2), models, progress=False)
    path = models / "digits" / "1" / "card.json"
    old = json.loads(path.read_text())
    del old["extra"][EXTRA_KEY]
    old["triage"]["delta"] = 0.05  # as the demo's shipped cards: certified at the full delta
    path.write_text(json.dumps(old))
    shutil.rmtree(models / "digits" / RESERVATIONS_DIR)  # a registry from before drawn indices has none

    labels = write_rows(tmp_path / "labels.jsonl", verdict_rows(60))
    summary = retrain.run(retrain.RetrainArgs(model="digits", labels=str(labels), epochs=1), models, progress=False)
    rec = ModelRegistry(models).card("digits", "2").extra[EXTRA_KEY]
    assert rec["index"] == 2 and rec["spent_before"] == 0.05
    assert rec["family_delta_bound"] == pytest.approx(0.05 + 0.05 * (1 - 6 / math.pi ** 2))
    assert summary["delta_spending"] == rec and "full delta" in summary["delta_note"]
