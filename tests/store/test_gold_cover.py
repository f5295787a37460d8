"""Gold items are served only in place of real traffic, on SQLite and PostgreSQL.

A gold item must look like traffic in everything the workbench shows (docs/dashboard.md): a
claim that finds the queue empty serves no gold (the queue line said 0 items, yet an item came),
and a gold item stands in only for a traffic item of its model, version and route (so the badge,
and the order deferred-before-QC, are what the real item's would have been).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.store.store_factories import BACKENDS, add_users, audit_item, make_store

from auditstream.wire import Route
from store import StoreConfig
from store.accounts import Role

T0 = 1_000.0


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


def _admin(store):
    store.accounts.add_user("ada", "ada-password-1", Role.ADMIN)
    return store.accounts.get("ada")


def test_an_empty_queue_serves_no_gold(backend: str, tmp_path: Path, fast_hashes: None) -> None:
    with make_store(backend, tmp_path, StoreConfig(gold_rate=1.0)) as store:
        [alice] = add_users(store, "alice")
        store.add_gold(audit_item("g-1"), "12345", _admin(store), T0)
        assert store.claim(alice, 60, T0) is None
        store.ingest(audit_item("r-1"), T0 + 5)
        claim = store.claim(alice, 60, T0 + 5)
        assert claim is not None and claim.is_gold  # now it stands in for r-1
        store.record_verdict(store.new_verdict_id(), claim.item_id, alice, "accept", None, T0 + 6)
        assert store.claim(alice, 60, T0 + 7).item.request_id == "r-1"


def test_gold_stands_in_only_for_traffic_of_its_model_version_and_route(backend: str, tmp_path: Path,
                                                                        fast_hashes: None) -> None:  # fmt: skip
    with make_store(backend, tmp_path, StoreConfig(gold_rate=1.0)) as store:
        alice, bob, carol = add_users(store, "alice", "bob", "carol")
        admin = _admin(store)
        # Added first (lowest ids): gold of an old version, of another model, and a QC-sample gold.
        store.add_gold(audit_item("g-old", version="v1"), "12345", admin, T0)
        store.add_gold(audit_item("g-other", model="digits", version="v2"), "12345", admin, T0)
        store.add_gold(audit_item("g-qc", Route.AUTO_QC, version="v2"), "12345", admin, T0)
        store.add_gold(audit_item("g-live", version="v2"), "12345", admin, T0)
        store.ingest_many([audit_item("q-1", Route.AUTO_QC, version="v2"), audit_item("h-1", version="v2")], T0 + 1)
        claim = store.claim(alice, 60, T0 + 2)  # the queue's next item is h-1 (zip v2, deferred)
        assert (claim.item.request_id, claim.is_gold) == ("g-live", True)
        # With only the QC sample claimable (bob skipped h-1), its gold twin stands in for it.
        store.record_verdict(store.new_verdict_id(), store.claim(bob, 60, T0 + 2).item_id, bob, "skip", None, T0 + 2)
        assert store.claim(bob, 60, T0 + 3).item.request_id == "g-qc"
        # Filters hold for the gold item as for the traffic it stands in for.
        assert store.claim(carol, 60, T0 + 3, model="digits") is None
