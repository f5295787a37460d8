"""``auditstream certify --from-audits`` (stack/recertify.py): a real digits model judged on
audited rows; the hygiene rule picks the rows; the proposal is written and LIVE stays."""

from __future__ import annotations

import json

import numpy as np
import pytest

from auditstream.registry import ModelRegistry
from auditstream.wire import encode_input
from qc.audit_split import CERTIFY, audit_part
from stack.recertify import (
    CannotCertify,
    CertifyArgs,
    SampledItem,
    in_stream_order,
    main,
    recertify,
    rows_for,
    threshold_sequence,
)
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


def stream_of(rows: list[dict], waiting: dict[int, bool] | None = None) -> list[SampledItem]:
    """The store's audit items for ``rows``, received in row order; ``waiting``: row index -> still open."""
    waiting = waiting or {}
    return [SampledItem(r["request_id"], k + 1, not waiting.get(k, False), r["route"], r["inclusion_prob"], r["input"])
            for k, r in enumerate(rows)]


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
    rows = audited_rows(700)
    cert, basis = recertify(model, rows, 0.02, 0.05, gold=(2, 300), gold_delta=0.01, stream=stream_of(rows))
    assert cert.certified and cert.estimated_coverage > 0.5 and basis["verdicts_used"].startswith("every verdict")
    assert cert.risk_against_truth == pytest.approx(0.02 + cert.auditor_error_bound) and cert.auditor_error_bound < 0.03
    noisy_rows = audited_rows(700, wrong_label_every=12)  # 8% disagreement
    noisy, _ = recertify(model, noisy_rows, 0.02, 0.05, stream=stream_of(noisy_rows))
    assert not noisy.certified
    with pytest.raises(CannotCertify, match="stream order"):  # the verdicts alone have no valid order
        recertify(model, rows, 0.02, 0.05)


def test_the_test_reads_the_stream_not_the_order_verdicts_were_decided_in():
    # Four sampled requests, received r0, r1, r2, r3; auditors decided r3 first and r0 last; r2 is
    # still open (e.g. a second review pending) though its first verdict is exported; r9's item is
    # not in the store at all.
    rows = [{"request_id": f"r{k}", "model": "digits", "is_gold": False, "review_round": 1, "decided_at_s": float(10 - k),
             "verdict_id": f"v{k}", "route": "AUTO_QC" if k % 2 else "HUMAN", "inclusion_prob": 0.02 if k % 2 else 1.0,
             "input": {"k": k}, "human_label": str(k)} for k in (0, 1, 2, 3, 9)]
    stream = stream_of(rows[:4], waiting={2: True})[::-1]  # read back newest first
    sample = in_stream_order(rows, stream, lambda request_id: True)
    assert [r["request_id"] for r in sample.rows] == ["r0", "r1", "r2", "r3"]  # the store's order, not the decisions'
    assert sample.settled.tolist() == [True, True, False, True] and sample.rows_not_in_store == 1
    assert sample.first_waiting["request_id"] == "r2" and sample.first_waiting["human_label"] is None
    # an item done in the store whose verdict the rows lack (an older export) waits too
    assert in_stream_order(rows[:1] + rows[2:4], stream_of(rows[:4]), lambda r: True).settled.tolist() == [
        True, False, True, True]
    # a version that learnt from verdicts: only the certify part's requests, waiting ones included
    learnt = in_stream_order(rows, stream, lambda request_id: request_id in {"r1", "r2"})
    assert [r["request_id"] for r in learnt.rows] == ["r1", "r2"]


def test_a_version_that_learnt_from_verdicts_is_judged_on_the_certify_part_only(registry):
    card = registry.card("digits")
    learnt = type(card)(**{**card.__dict__, "extra": {**card.extra, "data_hygiene": {"certify_share": 0.5}}})
    rows, which = rows_for(learnt, audited_rows(200))
    assert rows and all(audit_part(r["request_id"]) == CERTIFY for r in rows) and "certify part" in which
    assert len(rows_for(card, audited_rows(200))[0]) == 200


def ingest_and_decide(rows: list[dict], url: str, open_rows: int = 0) -> None:
    """The audit store as serving and auditors would leave it for ``rows``: one item per row, every one
    but the last ``open_rows`` the store received decided as the row says."""
    from auditstream.wire import AuditItem, Prediction, Route, decode_input
    from store import accounts, open_store
    from store.accounts import Role

    with open_store(url) as store:
        store.ingest_many([AuditItem(Prediction(
            request_id=r["request_id"], model="digits", model_version="1", task="classification", output="0",
            confidence=0.5, route=Route.HUMAN, reason="test", qc_inclusion_prob=1.0, created_at_s=float(k)),
            decode_input(r["input"])) for k, r in enumerate(rows)], 0.0)
        auditor = store.accounts.add_user("ann", "ann-password-1", Role.AUDITOR)
        for k in range(len(rows) - open_rows):
            claim = store.claim(auditor, 60.0, float(k))
            label = rows[int(claim.item.request_id[1:])]["human_label"]
            store.record_verdict(store.new_verdict_id(), claim.item_id, auditor, "accept" if label == "0" else "correct",
                                 None if label == "0" else label, float(k))


def test_certify_command_writes_a_proposal_and_leaves_live_alone(registry, tmp_path, monkeypatch, capsys):
    from store import accounts

    monkeypatch.setattr(accounts, "SCRYPT_N", 2**8)
    monkeypatch.setenv("AUDITSTREAM_MODELS_DIR", str(registry.root))
    monkeypatch.setenv("AUDITSTREAM_STATE_DIR", str(tmp_path))
    rows = audited_rows(700)
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = registry.card("digits").triage.threshold
    with pytest.raises(CannotCertify, match="audit item in the store"):  # the export alone has no stream order
        main(CertifyArgs(model="digits", from_audits=True, labels=str(labels), json=True))
    ingest_and_decide(rows, f"sqlite:///{tmp_path / 'audit.db'}", open_rows=5)
    assert main(CertifyArgs(model="digits", from_audits=True, labels=str(labels), json=True)) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["certificate"]["certified"] and out["n_rows"] == 695 and out["waiting_for_verdict"] == 5
    # ingest_many stores one batch in request-id order: the first open item is the 695th of those
    assert out["first_waiting"]["request_id"] == sorted(r["request_id"] for r in rows)[695]
    assert out["order"].startswith("stream order")
    proposal = json.loads((registry.root / "digits" / "1" / "audit-certificate.json").read_text())
    assert proposal["certificate"]["threshold"] == out["certificate"]["threshold"]
    assert registry.live_version("digits") is None and registry.card("digits").triage.threshold == before
