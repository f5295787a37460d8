"""``auditstream certify --from-audits`` (stack/recertify.py): a real digits model judged on
audited rows; the hygiene rule picks the rows; the proposal is written and LIVE stays."""

from __future__ import annotations

import json

import numpy as np
import pytest

from auditstream.registry import ModelRegistry
from auditstream.wire import encode_input
from qc.audit_split import CERTIFY, audit_part
from stack.recertify import CertifyArgs, main, recertify, rows_for, threshold_sequence
from training.data.split import load_split
from training.digits import train as digits
from training.digits.args import DigitsArgs


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> ModelRegistry:
    root = tmp_path_factory.mktemp("models")
    digits.run(DigitsArgs(epochs=20, seed=4), root, progress=False)
    return ModelRegistry(root)


def audited_rows(n: int, wrong_label_every: int = 0) -> list[dict]:
    """Rows as auditors would leave them on held-out digits: all deferred (pi = 1), true labels
    (every ``wrong_label_every``-th one an auditor's disagreement)."""
    held_out = [load_split("test"), load_split("calibration/certificate")]  # digits the model never trained on
    pool = np.concatenate([s.images for s in held_out])
    labels = np.concatenate([s.labels for s in held_out])
    rows = []
    for k in range(min(n, len(labels))):
        truth = str(int(labels[k]))
        if wrong_label_every and k % wrong_label_every == 0:
            truth = str((int(truth) + 1) % 10)
        rows.append({"verdict_id": f"v{k}", "request_id": f"r{k}", "model": "digits", "model_version": "1",
                     "task": "classification", "route": "HUMAN", "confidence": 0.5, "inclusion_prob": 1.0,
                     "verdict_kind": "correct", "model_output": "0", "human_label": truth, "auditor": "a",
                     "decided_at_s": float(k), "review_round": 1, "is_gold": False,
                     "input": encode_input(pool[k].astype(np.float32))})
    return rows


def test_threshold_sequence_follows_the_cards_curve(registry):
    card = registry.card("digits")
    seq = threshold_sequence(card, 0.02, start_coverage=0.2)
    assert seq == sorted(seq, reverse=True) and len(seq) <= 17 and len(seq) == len(set(seq))
    assert seq[-1] == pytest.approx(min(p["threshold"] for p in card.risk_coverage))


def test_threshold_sequence_starts_where_the_held_out_curve_has_the_most_room(registry):
    card = registry.card("digits")
    curve = card.risk_coverage
    for target in (0.005, 0.02, 0.1):
        room = [(p["coverage"] * (target - p["risk"]), p) for p in curve if p["risk"] < target]
        best = max(room, key=lambda x: x[0])[1]
        seq = threshold_sequence(card, target)
        # the start is the held-out curve's best point (or the curve point nearest it), the rest looser
        start = min(curve, key=lambda p: abs(p["coverage"] - best["coverage"]))
        assert seq[0] == start["threshold"] and seq == sorted(seq, reverse=True)
        assert seq[-1] == pytest.approx(min(p["threshold"] for p in curve))
        assert len(seq) <= len(threshold_sequence(card, target, start_coverage=0.2))
    # nothing held out under the target: start strict, as before
    poor = type(card)(**{**card.__dict__, "risk_coverage": [{**p, "risk": 0.5} for p in curve]})
    assert threshold_sequence(poor, 0.02) == threshold_sequence(poor, 0.02, start_coverage=0.2)


def test_a_good_model_is_certified_at_2pct_from_audits_and_an_auditor_mismatch_is_not(registry):
    model = registry.load("digits")
    cert, basis = recertify(model, audited_rows(700), 0.02, 0.05, gold=(2, 300), gold_delta=0.01)
    assert cert.certified and cert.estimated_coverage > 0.5 and basis["verdicts_used"].startswith("every verdict")
    assert cert.risk_against_truth == pytest.approx(0.02 + cert.auditor_error_bound) and cert.auditor_error_bound < 0.03
    noisy, _ = recertify(model, audited_rows(700, wrong_label_every=12), 0.02, 0.05)  # 8% disagreement
    assert not noisy.certified


def test_a_version_that_learnt_from_verdicts_is_judged_on_the_certify_part_only(registry):
    card = registry.card("digits")
    learnt = type(card)(**{**card.__dict__, "extra": {**card.extra, "data_hygiene": {"certify_share": 0.5}}})
    rows, which = rows_for(learnt, audited_rows(200))
    assert rows and all(audit_part(r["request_id"]) == CERTIFY for r in rows) and "certify part" in which
    assert len(rows_for(card, audited_rows(200))[0]) == 200


def test_certify_command_writes_a_proposal_and_leaves_live_alone(registry, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AUDITSTREAM_MODELS_DIR", str(registry.root))
    monkeypatch.setenv("AUDITSTREAM_STATE_DIR", str(tmp_path))
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps(r) + "\n" for r in audited_rows(700)))
    before = registry.card("digits").triage.threshold
    assert main(CertifyArgs(model="digits", from_audits=True, labels=str(labels), json=True)) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["certificate"]["certified"] and out["n_rows"] == 700
    proposal = json.loads((registry.root / "digits" / "1" / "audit-certificate.json").read_text())
    assert proposal["certificate"]["threshold"] == out["certificate"]["threshold"]
    assert registry.live_version("digits") is None and registry.card("digits").triage.threshold == before
