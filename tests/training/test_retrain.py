"""Retraining from verdicts (training/retrain.py): a seed model learns from auditors' labels,
the card records what it learnt from, the certify part never trains, LIVE does not move."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from auditstream.registry import ModelRegistry
from auditstream.wire import encode_input
from monitor.verdict_sets import split_verdicts
from qc.audit_split import CERTIFY, SplitKey, audit_part
from training import retrain
from training.data.split import train_subset
from training.digits import train as digits
from training.digits.args import DigitsArgs
from training.feedback import WEIGHTS_FILE, WeightsMissing

SEED_FRACTION = 0.05
STORE_KEY = SplitKey.new(bytes(range(32)))  # the split key of the store the rows were exported from


def verdict_rows(n: int, seed: int = 0, gold: int = 0, rejects: int = 0) -> list[dict]:
    """Label rows, as ``auditstream labels export`` writes them, for ``n`` training digits the seed
    model never saw: an auditor corrected or confirmed each with the true label; each carries its
    split value under :data:`STORE_KEY`, as the store writes it."""
    rest = train_subset(SEED_FRACTION)[1]
    rng = np.random.default_rng(seed)
    rows = []
    for k, i in enumerate(rng.permutation(len(rest.labels))[:n + gold + rejects]):
        truth = str(int(rest.labels[i]))
        kind = "reject" if k >= n + gold else ("accept" if k % 3 == 0 else "correct")
        rows.append({"verdict_id": f"v-{seed}-{k}", "request_id": f"r-{seed}-{k}", "model": "digits", "model_version": "1",
                     "task": "classification", "route": "HUMAN" if k % 2 else "AUTO_QC", "confidence": 0.5,
                     "inclusion_prob": 1.0 if k % 2 else 0.1, "verdict_kind": kind,
                     "model_output": truth if kind == "accept" else "0", "human_label": None if kind == "reject" else truth,
                     "auditor": "a", "decided_at_s": 1000.0 + k, "review_round": 1, "is_gold": n <= k < n + gold,
                     "audit_split": STORE_KEY.uniform(f"r-{seed}-{k}"), "audit_split_key": STORE_KEY.key_id,
                     "input": encode_input(rest.images[i].astype(np.float32))})
    return rows


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_split_verdicts_keeps_gold_apart_and_one_verdict_per_request():
    rows = verdict_rows(40, gold=5)
    second = dict(rows[0], verdict_id="v-second", review_round=2, human_label="9", decided_at_s=5000.0)
    sets = split_verdicts(rows + [second], "digits")
    assert len(sets.gold) == 5 and len(sets.train) + len(sets.certify) == 40
    assert all(audit_part(r["request_id"], 0.5, STORE_KEY) == CERTIFY for r in sets.certify)
    labelled = {r["request_id"]: r for r in sets.train + sets.certify}
    assert labelled[rows[0]["request_id"]]["verdict_id"] == "v-second"  # the adjudication is the label


@pytest.mark.slow
def test_retrain_learns_from_verdicts_records_them_and_leaves_live_alone(tmp_path):
    models = tmp_path / "models"
    seed = digits.run(DigitsArgs(epochs=30, train_fraction=SEED_FRACTION, seed=2), models, progress=False)
    registry = ModelRegistry(models)
    assert registry.live_version("digits") is None  # no pointer: the newest version is live
    assert (models / "digits" / "1" / WEIGHTS_FILE).is_file()
    rows = verdict_rows(400, gold=6, rejects=4)
    labels = write_rows(tmp_path / "labels.jsonl", rows)
    summary = retrain.run(retrain.RetrainArgs(model="digits", labels=str(labels), epochs=15), models, progress=False)

    # published, not promoted: retrain pinned the serving version, so the newer one is no default
    assert summary["version"] == "2" and registry.live_version("digits") == "1" == registry.default_version("digits")
    # learning: the verdicts (about half of 400 digits) teach what the 5% seed could not
    assert summary["test_error"] < seed["test_error"] - 0.05
    assert summary["coverage"] >= seed["coverage"]
    card = registry.card("digits", "2")
    learnt, hygiene = card.extra["learnt_from"], card.extra["data_hygiene"]
    sets = split_verdicts(rows, "digits")
    trained_ids = {r["verdict_id"] for r in sets.train if r["verdict_kind"] != "reject"}
    assert set(learnt["verdict_ids"]) == trained_ids and learnt["n_verdicts"] == len(trained_ids)
    certify_ids = {r["verdict_id"] for r in sets.certify}
    assert not certify_ids & set(learnt["verdict_ids"])  # a certifying verdict never trains
    assert hygiene["gold_items"] == 6 and hygiene["verdicts_certify_part"] == len(certify_ids)
    assert "request_id" in hygiene["split_rule"] and card.training["fine_tuned_from"] == "1"
    assert (hygiene["split_key"], hygiene["split_key_id"]) == ("store-secret", STORE_KEY.key_id)
    assert STORE_KEY.secret.hex() not in json.dumps(card.extra)
    assert card.training["args"]["train_fraction"] == SEED_FRACTION  # the seed's data, plus the verdicts
    assert (models / "digits" / "2" / WEIGHTS_FILE).is_file()


def test_retrain_refuses_what_it_cannot_do(tmp_path):
    labels = write_rows(tmp_path / "labels.jsonl", verdict_rows(3))
    with pytest.raises(retrain.CannotRetrain, match="detector"):
        retrain.run(retrain.RetrainArgs(model="detector", labels=str(labels)), tmp_path, progress=False)
    with pytest.raises(retrain.CannotRetrain, match="labels export"):
        retrain.run(retrain.RetrainArgs(model="digits", labels=str(tmp_path / "none.jsonl")), tmp_path, progress=False)
    digits.run(DigitsArgs(epochs=1, train_fraction=SEED_FRACTION), tmp_path, progress=False)
    only_rejects = write_rows(tmp_path / "rejects.jsonl", verdict_rows(0, rejects=3))
    with pytest.raises(retrain.CannotRetrain, match="can teach it"):
        retrain.run(retrain.RetrainArgs(model="digits", labels=str(only_rejects)), tmp_path, progress=False)
    # Review 2026-12-04: an input the card does not take (another model's export, an older input
    # spec) stopped the whole retrain with a wrong_shape error naming no row; a ZIP-like label of
    # '³' crashed int(). Such rows are skipped and counted, and if none is left the error says why.
    wrong_inputs = [dict(r, input=encode_input(np.zeros((3,), np.float32))) for r in verdict_rows(30)]
    every_row_skipped = r"train part: (\d+) rows.*; \1 of them hold an input the live card.s pixels \[None, 8, 8\] does not"
    with pytest.raises(retrain.CannotRetrain, match=every_row_skipped):
        retrain.run(retrain.RetrainArgs(model="digits", labels=str(write_rows(tmp_path / "wrong.jsonl", wrong_inputs))),
                    tmp_path, progress=False)
    assert retrain._zip_target(None, "12³45") is None and retrain._zip_target(None, "12345") == [1, 2, 3, 4, 5]
    (tmp_path / "digits" / "1" / WEIGHTS_FILE).unlink()  # as a shipped demo model
    with pytest.raises(WeightsMissing, match="--from-scratch"):
        retrain.run(retrain.RetrainArgs(model="digits", labels=str(labels)), tmp_path, progress=False)


def test_a_fine_tuned_version_is_certified_inside_its_base_versions_split(tmp_path, monkeypatch):
    """Review 2026-12-05: v2 fine-tuned at share 0.2 learnt from requests at or above 0.2 on the
    split; v3 fine-tuned from v2 at share 0.5 was certified (and promotion-gated) on requests in
    [0.2, 0.5) that its starting weights had learnt from. A fine-tune's share is at most its
    base's, and both must be split by the same store key."""
    import dataclasses

    digits.run(DigitsArgs(epochs=1, train_fraction=SEED_FRACTION), tmp_path, progress=False)
    base = ModelRegistry(tmp_path).card("digits", "1")
    learnt = dataclasses.replace(base, extra={**base.extra, "data_hygiene": {"certify_share": 0.2,
                                                                              "split_key_id": STORE_KEY.key_id}})
    assert retrain.inherited_split(base, 0.9) is None  # learnt from no verdicts: nothing inherited
    assert retrain.inherited_split(learnt, 0.2) == retrain.inherited_split(learnt, 0.1) == STORE_KEY.key_id
    with pytest.raises(retrain.CannotRetrain, match=r"--certify-share 0.5 is larger than version 1's 0.2"):
        retrain.inherited_split(learnt, 0.5)
    labels = write_rows(tmp_path / "labels.jsonl", verdict_rows(30))
    monkeypatch.setattr(retrain.ModelRegistry, "card", lambda self, name, version=None: learnt)
    with pytest.raises(retrain.CannotRetrain, match="is larger than version 1's"):  # refused before any weights load
        retrain.run(retrain.RetrainArgs(model="digits", labels=str(labels)), tmp_path, progress=False)
    elsewhere = dataclasses.replace(learnt, extra={**base.extra, "data_hygiene": {"certify_share": 0.5,
                                                                                  "split_key_id": "secret:0123456789abcdef"}})
    monkeypatch.setattr(retrain.ModelRegistry, "card", lambda self, name, version=None: elsewhere)
    with pytest.raises(retrain.CannotRetrain, match="split by the audit store key secret:0123456789abcdef"):
        retrain.run(retrain.RetrainArgs(model="digits", labels=str(labels)), tmp_path, progress=False)


def test_zip_reader_batches_mix_rendered_and_audited_envelopes():
    from training.feedback import Feedback
    from training.zip_reader.args import ZipReaderArgs
    from training.zip_reader.train import training_batches

    audited = np.full((7, 32, 96), 200, dtype=np.uint8)
    feedback = Feedback(audited, np.tile(np.arange(5), (7, 1)), None, None, {})
    args = ZipReaderArgs(batch_size=8, steps=3, train_fraction=0.1)
    batches = list(training_batches(args, np.random.default_rng(0), feedback))
    assert len(batches) == 3
    for images, labels in batches:
        assert images.shape == (8, 32, 96) and labels.shape == (8, 5)
        assert (images[4:] == 200).all() and (labels[4:] == np.arange(5)).all()  # the second half: verdicts
    plain = list(training_batches(args, np.random.default_rng(0), None))
    assert len(plain) == 3 and plain[0][0].shape == (8, 32, 96)


def test_train_subset_is_a_fixed_stratified_part_of_the_training_split():
    from training.data.split import load_split

    train = load_split("train")
    seed, rest = train_subset(0.05)
    assert not set(seed.indices) & set(rest.indices) and len(seed.labels) + len(rest.labels) == len(train.labels)
    assert set(np.unique(seed.labels)) == set(range(10))  # every digit in the seed
    assert (train_subset(0.05)[0].indices == seed.indices).all()
    whole = train_subset(1.0)[0]
    assert (whole.indices == train.indices).all() and (whole.images == train.images).all()
    with pytest.raises(ValueError, match="train_fraction"):
        train_subset(0.0)


def _registry_of_cards(root, family: str, cards: list[dict]):
    """A registry of ``family`` whose versions 1.. are the shipped card with ``training`` changed
    (card.json only: enough for lineage and arguments)."""
    shipped = json.loads((Path(__file__).parents[2] / "stack" / "demo_models" / family / "card.json").read_text())
    for number, training in enumerate(cards, 1):
        directory = root / family / str(number)
        directory.mkdir(parents=True)
        (directory / "card.json").write_text(json.dumps(dict(shipped, version=str(number),
                                                             training={**shipped["training"], **training})))
    return ModelRegistry(root)


@pytest.mark.parametrize("family, budget, scratch_budget, scratch_lr, default_budget, default_lr", [
    ("digits", "epochs", 30, 7e-3, 40, 4e-3), ("zip-reader", "steps", 900, 5e-3, 1200, 3e-3)])
def test_from_scratch_after_a_fine_tune_trains_with_a_from_scratch_budget_and_rate(
        tmp_path, family, budget, scratch_budget, scratch_lr, default_budget, default_lr):
    """Review 2026-12-06: --from-scratch after a fine-tuned LIVE version took the live card's
    recorded budget and rate -- the fine-tuning's (digits 15 epochs at lr/3) -- so a fresh
    network was trained short and slow, then certified as a from-scratch model. It takes the
    lineage's from-scratch training's (v1 here, a tuned one), else the family's defaults; a
    fine-tune of a fine-tune stays at a third of the from-scratch rate."""
    fam = retrain.family_of(family)
    root = {budget: scratch_budget, "lr": scratch_lr, "seed": 3}
    tuned = {budget: fam.default_budget, "lr": scratch_lr / 3, "seed": 3}
    registry = _registry_of_cards(tmp_path, family, [
        {"args": root}, {"args": tuned, "fine_tuned_from": "1"}, {"args": tuned, "fine_tuned_from": "2"}])
    live = registry.card(family, "3")
    assert retrain.lineage_root_args(registry, live) == root

    def chosen(card, root_args, **override):
        args = retrain.family_args(card, retrain.RetrainArgs(model=family, **override), fam, root_args)
        return getattr(args, budget), args.lr, args.seed

    lineage = retrain.lineage_root_args(registry, live)
    assert chosen(live, lineage, from_scratch=True) == (scratch_budget, scratch_lr, 3)
    assert chosen(live, lineage) == (fam.default_budget, pytest.approx(scratch_lr / 3), 3)
    # the lineage not in this registry (a copied version): the family's defaults, never the card's
    assert chosen(live, None, from_scratch=True) == (default_budget, default_lr, 3)
    assert chosen(live, None) == (fam.default_budget, pytest.approx(default_lr / 3), 3)
    # a card that is not fine-tuned is its own from-scratch training; overrides still win
    first = registry.card(family, "1")
    assert chosen(first, None, from_scratch=True) == (scratch_budget, scratch_lr, 3)
    assert chosen(live, lineage, from_scratch=True, lr=1e-3, **{budget: 7}) == (7, 1e-3, 3)


def test_retrain_from_scratch_hands_the_family_the_lineages_from_scratch_arguments(tmp_path, monkeypatch):
    """The command's path: run() walks LIVE's fine_tuned_from chain in the registry."""
    registry = _registry_of_cards(tmp_path, "digits", [
        {"args": {"epochs": 30, "lr": 7e-3}}, {"args": {"epochs": 15, "lr": 7e-3 / 3}, "fine_tuned_from": "1"}])
    registry.set_live("digits", "2")
    handed = []
    monkeypatch.setattr(digits, "run", lambda args, *rest: handed.append(args) or {})
    labels = write_rows(tmp_path / "labels.jsonl", verdict_rows(30))
    retrain.run(retrain.RetrainArgs(model="digits", labels=str(labels), from_scratch=True), tmp_path, progress=False)
    assert (handed[0].epochs, handed[0].lr) == (30, 7e-3)
