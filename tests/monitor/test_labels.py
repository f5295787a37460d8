"""``auditstream labels export``: verdicts become a training set with inclusion probabilities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tests.store.store_factories import BACKENDS, add_users, audit_item, make_store

from auditstream.cli import main as cli_main
from auditstream.wire import ImageInput, Route, decode_input
from store import accounts
from store.accounts import Role
from monitor.labels import COLUMNS, export_labels, read_labels
from store import AuditStore, StoreConfig, open_store

T0 = 5_000.0


@pytest.fixture(autouse=True)
def _cheap_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accounts, "SCRYPT_N", 2**8)


def _seed(store: AuditStore) -> list[str]:
    """Five verdicts on two models (one skip, one gold); returns the exported verdict ids."""
    alice, bob = add_users(store, "alice", "bob")
    store.ingest_many([
        audit_item("h1", output="11111"),
        audit_item("q1", Route.AUTO_QC, output="22222", inclusion_prob=0.25, confidence=0.93),
        audit_item("d1", model="det", output={"boxes": [[0, 0, 4, 4]]}, image=True),
        audit_item("h2", output="33333"),
    ], T0)  # fmt: skip
    ada = store.accounts.add_user("ada", "ada-password", Role.ADMIN)
    store.add_gold(audit_item("gold", output="44444"), "44444", ada, T0)
    # Claims serve deferred items first (one batch: in request-id order) d1, h1, h2, then the QC sample q1.
    plan = [(alice, "accept", None), (alice, "correct", "11112"), (bob, "skip", None), (bob, "reject", None)]
    ids = []
    for user, kind, corrected in plan:
        claim = store.claim(user, 60, T0)
        result = store.record_verdict(store.new_verdict_id(), claim.item_id, user, kind, corrected, T0 + len(ids))
        if kind != "skip":
            ids.append(result.verdict.verdict_id)
    return ids


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_export_holds_every_decisive_verdict_with_its_input_and_weights(backend: str, fmt: str, tmp_path: Path) -> None:
    with make_store(backend, tmp_path, StoreConfig(gold_rate=0.0)) as store:
        ids = _seed(store)
        out = tmp_path / f"labels.{fmt}"
        assert export_labels(store, out, fmt=fmt, progress=False) == 3
        rows = read_labels(out)
        assert [r["verdict_id"] for r in rows] == ids and set(rows[0]) == set(COLUMNS)
        d1, h1, q1 = rows
        assert (h1["route"], h1["verdict_kind"], h1["model_output"], h1["human_label"], h1["inclusion_prob"]) == (
            "HUMAN", "correct", "11111", "11112", 1.0)
        assert (q1["route"], q1["verdict_kind"], q1["human_label"], q1["inclusion_prob"], q1["confidence"]) == (
            "AUTO_QC", "reject", None, 0.25, 0.93)
        assert q1["auditor"] == "bob" and (d1["auditor"], d1["model"]) == ("alice", "det")
        assert d1["human_label"] == d1["model_output"] == {"boxes": [[0, 0, 4, 4]]}
        assert decode_input(d1["input"]) == ImageInput(b"\x89PNG\r\n\x1a\n-not-really", "png")
        assert np.array_equal(decode_input(h1["input"]), np.arange(6, dtype=np.float32).reshape(2, 3))
        assert not (tmp_path / f"labels.{fmt}.tmp").exists()


def test_model_filter_gold_and_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    with open_store(url, StoreConfig(gold_rate=0.0)) as store:
        _seed(store)
    with open_store(url, StoreConfig(gold_rate=1.0)) as store:  # a dashboard process that mixes in gold
        alice = store.accounts.get("alice")
        claim = store.claim(alice, 60, T0 + 10)
        assert claim.is_gold
        store.record_verdict(store.new_verdict_id(), claim.item_id, alice, "accept", None, T0 + 10)
        assert export_labels(store, tmp_path / "no-gold.jsonl", progress=False) == 3
        assert export_labels(store, tmp_path / "all.jsonl", include_gold=True, progress=False) == 4
        gold = [r for r in read_labels(tmp_path / "all.jsonl") if r["is_gold"]]
        assert [(g["request_id"], g["human_label"]) for g in gold] == [("gold", "44444")]
    assert cli_main(["labels", "export", "--out", str(tmp_path / "det.csv"), "--model", "det", "--format", "csv",
                     "--store-url", url]) == 0  # fmt: skip
    assert [r["request_id"] for r in read_labels(tmp_path / "det.csv")] == ["d1"]
    assert "wrote 1 labels to" in capsys.readouterr().out
    assert cli_main(["labels", "export", "--out", str(tmp_path / "zip.jsonl"), "--model", "zip", "--store-url", url]) == 0
    assert [r["request_id"] for r in read_labels(tmp_path / "zip.jsonl")] == ["h1", "q1"]


def test_unknown_format_is_refused(tmp_path: Path) -> None:
    with make_store("sqlite", tmp_path) as store:
        with pytest.raises(ValueError, match="format 'parquet'"):
            export_labels(store, tmp_path / "x", fmt="parquet")
