"""The train/certify split of audited items is keyed by the audit store's own secret (store/schema.py,
``meta`` row ``audit_split_key``; qc/audit_split.py), on SQLite and PostgreSQL.

Review 2026-12 (/tmp/review-qc/audit_split_public_salt.py): the split hashed request ids with the
public constant "audit-split", so a client, who chooses its request ids, could compute before
sending which side each request lands on and send its hard inputs with ids on the train side:
``certify --from-audits``, the promotion gate's certify side and the exported verdict sets were
then no longer independent of the answer. Now a new store draws a random key once; a store that
already held audit items when upgraded keeps the public key, so no item changes side.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.store.store_factories import BACKENDS, audit_item, make_store

from auditstream.errors import ModelRefused
from monitor.labels import SPLIT_COLUMNS, export_labels, read_labels
from monitor.verdict_sets import UnsplittableRows, split_verdicts
from qc.audit_split import CERTIFY, LEGACY, SECRET, TRAIN, SplitKey, audit_part
from qc.triage import hash_uniform
from store import AuditStore, open_store
from store.schema import SCHEMA_VERSION, SPLIT_KEY_ROW

T0 = 1_000.0
IDS = [f"client-req-{i}" for i in range(2000)]


def public_part(request_id: str, share: float = 0.5) -> str:
    """What a client computed offline before: the split with the public constant."""
    return CERTIFY if hash_uniform(request_id, "audit-split") < share else TRAIN


def reopen(store: AuditStore) -> AuditStore:
    return open_store(store._db.url, table_prefix=store._db.prefix, create=True)


def stored_key(store: AuditStore) -> list[tuple]:
    return store._db.query("SELECT value FROM {p}meta WHERE key = ?", (SPLIT_KEY_ROW,))


def make_old(store: AuditStore) -> None:
    """The store as the release before schema 6 left it: no split key row, schema version 5."""
    with store._db.write() as cur:
        cur.run("DELETE FROM {p}meta WHERE key = ?", (SPLIT_KEY_ROW,))
        cur.run("UPDATE {p}meta SET value = '5' WHERE key = 'schema_version'")


def decide_all(store: AuditStore, n: int) -> list[str]:
    """``n`` deferred items ingested and accepted; their request ids."""
    from tests.store.store_factories import add_users

    ids = [f"r{i}" for i in range(n)]
    store.ingest_many([audit_item(r) for r in ids], T0)
    (auditor,) = add_users(store, "alice")
    t = T0
    while (claim := store.claim(auditor, 60.0, t)) is not None:
        t += 1
        store.record_verdict(store.new_verdict_id(), claim.item.item_id, auditor, "accept", None, t)
    return ids


def test_a_new_store_splits_by_its_own_secret_key_which_a_client_cannot_compute(store: AuditStore,
                                                                                  backend: str, tmp_path: Path) -> None:
    key = store.split_key
    assert key.kind == SECRET and len(key.secret) == 32
    assert stored_key(store) == [(key.stored(),)] and key.stored() == "secret:" + key.secret.hex()
    # what the reviewer's client predicted (the public constant) is a coin toss now: about half
    # of the ids it put on the train side are there, under any QC salt
    predicted_train = [r for r in IDS if public_part(r) == TRAIN]
    really_train = sum(audit_part(r, 0.5, key) == TRAIN for r in predicted_train)
    assert 0.44 < really_train / len(predicted_train) < 0.56
    # and another store (another key) splits the same ids differently: the side is the key's, not the id's
    with make_store(backend, tmp_path) as other:
        assert other.split_key.kind == SECRET and other.split_key != key and other.split_key.key_id != key.key_id
        agree = sum(audit_part(r, 0.5, key) == audit_part(r, 0.5, other.split_key) for r in IDS) / len(IDS)
        assert 0.44 < agree < 0.56
    # what is shown about the key never holds the secret
    assert key.secret.hex() not in repr(key) + key.key_id + key.rule() and "secret split key" in key.rule()


def test_the_split_is_the_same_at_every_open_of_the_store(store: AuditStore) -> None:
    sides = [audit_part(r, 0.3, store.split_key) for r in IDS]
    decide_all(store, 20)
    for _ in range(2):
        with reopen(store) as again:
            assert again.split_key == store.split_key and stored_key(again) == stored_key(store)
            assert [audit_part(r, 0.3, again.split_key) for r in IDS] == sides
            assert {r["request_id"]: r["audit_split"] for r in again.labels()} == {
                f"r{i}": store.split_key.uniform(f"r{i}") for i in range(20)}


def test_a_store_that_held_items_before_the_split_key_keeps_the_public_split(store: AuditStore) -> None:
    """Upgraded from schema 5 with audit items in it: the legacy key, written explicitly, so every
    item stays on the side the old release put it (a verdict that trained a version never judges it)."""
    ids = decide_all(store, 30)
    make_old(store)
    with reopen(store) as upgraded:
        key = upgraded.split_key
        assert key == SplitKey.legacy() and key.kind == LEGACY
        assert stored_key(upgraded) == [("legacy:audit-split",)]
        assert upgraded._db.query("SELECT value FROM {p}meta WHERE key = 'schema_version'") == [(str(SCHEMA_VERSION),)]
        assert [audit_part(r, 0.5, key) for r in IDS + ids] == [public_part(r) for r in IDS + ids]  # no item moved
        rows = list(upgraded.labels())
        assert {r["request_id"]: r["audit_split"] for r in rows} == {r: hash_uniform(r, "audit-split") for r in ids}
        assert {r["audit_split_key"] for r in rows} == {"legacy:audit-split"}
        sets = split_verdicts(rows, "zip", 0.5)
        assert sets.hygiene()["split_key"] == LEGACY and "legacy public key" in sets.hygiene()["split_rule"]
        assert {r["request_id"] for r in sets.train} == {r for r in ids if public_part(r) == TRAIN}
        upgraded.ingest_many([audit_item("later")], T0)
    with reopen(store) as again:  # stays legacy for the store's life, new items included
        assert again.split_key == SplitKey.legacy()


def test_an_old_store_without_items_gets_a_secret_key(store: AuditStore) -> None:
    make_old(store)
    with reopen(store) as upgraded:
        assert upgraded.split_key.kind == SECRET


def test_exports_carry_the_stores_side_and_training_reads_it_without_a_key(store: AuditStore, tmp_path: Path) -> None:
    ids = decide_all(store, 40)
    key = store.split_key
    for fmt in ("jsonl", "csv"):
        out = tmp_path / f"labels.{fmt}"
        export_labels(store, out, fmt=fmt, progress=False)
        text = out.read_text()
        assert key.secret.hex() not in text  # the export names the key, never holds it
        rows = read_labels(out)
        assert {r["request_id"]: (r["audit_split"], r["audit_split_key"]) for r in rows} == {
            r: (key.uniform(r), key.key_id) for r in ids}
        sets = split_verdicts(rows, "zip", 0.5)  # a training host: no key, no hashing of request ids
        assert {r["request_id"] for r in sets.certify} == {r for r in ids if audit_part(r, 0.5, key) == CERTIFY}
        assert sets.hygiene()["split_key"] == SECRET and sets.hygiene()["split_key_id"] == key.key_id
        assert key.secret.hex() not in json.dumps(sets.hygiene())
    # an export written before the per-row split cannot say which rows may train: refused, never re-hashed
    older = [{k: v for k, v in r.items() if k not in SPLIT_COLUMNS} for r in rows]
    with pytest.raises(UnsplittableRows, match="carries no audit_split.*export the labels again"):
        split_verdicts(older, "zip", 0.5)
    assert len(split_verdicts(older, "zip", 0.0).train) == 40  # certify share 0: every row trains, no key needed
    by_store = split_verdicts(older, "zip", 0.5, key=key)  # with the store at hand, its key decides
    assert [r["request_id"] for r in by_store.certify] == [r["request_id"] for r in sets.certify]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_card_split_by_another_stores_key_is_not_judged_here(backend: str, tmp_path: Path) -> None:
    from types import SimpleNamespace

    from monitor import promotion
    from stack.recertify import CannotCertify, may_judge

    with make_store(backend, tmp_path) as store, make_store(backend, tmp_path) as other:
        # what a card of a version retrained from the other store's export records (training/retrain.py)
        card = SimpleNamespace(name="zip", version="2", extra={"data_hygiene": {
            "certify_share": 0.5, "split_key_id": other.split_key.key_id}})

        class Pair:
            request_id = "r1"

        with pytest.raises(ModelRefused, match="another|splits by"):
            promotion.may_judge(card, [Pair()], store.split_key)
        with pytest.raises(CannotCertify, match="splits by"):
            may_judge(card, store.split_key)
        kept, _ = promotion.may_judge(card, [Pair()], other.split_key)  # its own store judges it
        assert len(kept) == (audit_part("r1", 0.5, other.split_key) == CERTIFY)


def test_an_old_store_holding_only_gold_items_gets_a_secret_key(store: AuditStore) -> None:
    """Gold items are never split: a store seeded with gold before the upgrade has no item whose
    side must stay where the public key put it."""
    from tests.store.store_factories import add_users

    (admin,) = add_users(store, "root", role="admin")
    store.add_gold(audit_item("gold-1"), "12345", admin, T0)
    make_old(store)
    with reopen(store) as upgraded:
        assert upgraded.split_key.kind == SECRET


def test_a_store_written_by_a_newer_release_is_refused_not_written_back(store: AuditStore) -> None:
    """An older release would write its own schema version back and split with what it knows
    (before schema 6: the public key). A newer version number refuses the open in one line."""
    from store.schema import StoreTooNew

    with store._db.write() as cur:
        cur.run("UPDATE {p}meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(StoreTooNew, match=f"schema version '{SCHEMA_VERSION + 1}', which this release"):
        reopen(store)
    assert store._db.query("SELECT value FROM {p}meta WHERE key = 'schema_version'") == [(str(SCHEMA_VERSION + 1),)]
    for odd in ("²", " 7.0", "-1", "abc"):  # no version number: refused too, never written over
        with store._db.write() as cur:
            cur.run("UPDATE {p}meta SET value = ? WHERE key = 'schema_version'", (odd,))
        with pytest.raises(StoreTooNew, match="does not know"):
            reopen(store)
        assert store._db.query("SELECT value FROM {p}meta WHERE key = 'schema_version'") == [(odd,)]
