"""20 simulated auditors (threads) on one store, on SQLite and on PostgreSQL.

Every auditor logs, per claim, when it got the item (after the claim returned) and until when it
believed to hold it (when it submitted, or its lease's expiry when it walked away; a lease that
expired before the claim returned was never held). Afterwards,
per item, each holder must have got it no earlier than the previous holder's time ended (unless
it is the same auditor picking their own item back up): no item is ever leased to two auditors
at once.
Some auditors walk away from their item with a short lease; those items must come back and be
decided by someone else (expired leases are reclaimed). Every item ends with exactly one
decisive verdict, and no lock error ever reaches an auditor.
"""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest
from tests.store.store_factories import add_users, audit_item, make_store

from auditstream.errors import LeaseNotHeld
from auditstream.wire import Route
from store import AuditStore

pytestmark = pytest.mark.slow
N_AUDITORS, N_ITEMS = 20, 160
SHORT_LEASE_S, LONG_LEASE_S = 0.05, 60.0


def _auditor(store: AuditStore, user, seed: int, log: list, errors: list, lock: threading.Lock) -> None:
    rng = random.Random(seed)
    try:
        while True:
            walk_away = rng.random() < 0.15
            now = time.time()
            claim = store.claim(user, SHORT_LEASE_S if walk_away else LONG_LEASE_S, now)
            if claim is None:
                if store.queue_depth() == 0:
                    return
                time.sleep(0.01)  # items on short leases come back soon
                continue
            got_at = time.time()  # after the claim committed
            if walk_away:  # the lease expires; someone else must reclaim the item
                with lock:
                    log.append((claim.item_id, user.name, got_at, claim.lease_expires_s, True))
                continue
            kind = rng.choice(["accept", "correct", "reject", "skip"])
            with lock:  # this auditor believes it holds the item until it submits
                log.append((claim.item_id, user.name, got_at, time.time(), False))
            try:
                store.record_verdict(store.new_verdict_id(), claim.item_id, user, kind,
                                     "00000" if kind == "correct" else None, time.time())  # fmt: skip
            except LeaseNotHeld as e:  # cannot happen with a 60 s lease: report it
                errors.append(e)
    except Exception as e:  # noqa: BLE001 - any error (a lock error above all) fails the test
        errors.append(e)


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_twenty_auditors_never_share_a_lease_and_reclaim_expired_ones(backend: str, tmp_path: Path, fast_hashes: None) -> None:
    with make_store(backend, tmp_path) as store:
        items = [audit_item(f"r{i}", Route.HUMAN if i % 2 else Route.AUTO_QC) for i in range(N_ITEMS)]
        # Two monitor processes replaying the same records at once still make one item each.
        replays = [threading.Thread(target=store.ingest_many, args=(items, time.time())) for _ in range(2)]
        for t in replays:
            t.start()
        for t in replays:
            t.join()
        assert store.queue_depth() == N_ITEMS
        users = add_users(store, *(f"auditor{i:02d}" for i in range(N_AUDITORS)))
        log: list = []
        errors: list = []
        lock = threading.Lock()
        threads = [threading.Thread(target=_auditor, args=(store, u, i, log, errors, lock)) for i, u in enumerate(users)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=240)
        assert not any(t.is_alive() for t in threads)
        assert errors == []

        by_item = defaultdict(list)
        for item_id, auditor, start, end, _ in log:  # (got the item, held it until)
            # A short lease can expire before its claim even returns to the thread (20 threads
            # and a busy machine: the claim committed, then the thread waited its turn); that
            # auditor never held the item, and the next claim may rightly come before it arrived.
            if end > start:
                by_item[item_id].append((start, end, auditor))
        for item_id, claims in by_item.items():
            claims.sort()
            for (_, prev_end, prev_who), (start, _, who) in zip(claims, claims[1:]):
                assert start >= prev_end or who == prev_who, f"item {item_id} leased twice: {claims}"

        verdicts = store.verdicts()
        decisive = [v for v in verdicts if v.kind.value != "skip"]
        assert sorted(v.item_id for v in decisive) == sorted(i.item_id for i in store.items(limit=N_ITEMS))
        walked_away = {item_id for item_id, _, _, _, walked in log if walked}
        assert walked_away, "no auditor walked away: the reclaim path was not exercised"
        assert store.queue_depth() == 0
        print(f"{backend}: {len(log)} claims, {len(verdicts)} verdicts, {len(walked_away)} items reclaimed after expiry")


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_overlapping_batches_ingested_concurrently_in_any_order_make_one_item_each(backend: str, tmp_path: Path) -> None:
    """Two monitors replaying overlapping batches in opposite orders (a rebalance): no deadlock."""
    with make_store(backend, tmp_path) as store:
        items = [audit_item(f"r{i:03d}") for i in range(200)]
        batches = [items[:150], list(reversed(items[50:]))] * 3
        errors: list = []

        def ingest(batch: list) -> None:
            try:
                store.ingest_many(batch, time.time())
            except Exception as e:  # noqa: BLE001 - a deadlock error fails the test
                errors.append(e)

        threads = [threading.Thread(target=ingest, args=(b,)) for b in batches]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == [] and store.queue_depth() == 200


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_one_auditors_concurrent_claims_with_any_filters_leave_one_lease(backend: str, tmp_path: Path,
                                                                         fast_hashes: None) -> None:
    """Six tabs of one auditor claim at the same moment, each with its own queue filter: she
    holds one item afterwards, every round (her claims are serialised on her account row)."""
    filters = [None, Route.HUMAN, Route.AUTO_QC, None, Route.HUMAN, Route.AUTO_QC]
    with make_store(backend, tmp_path) as store:
        store.ingest_many([audit_item(f"r{i:03d}", Route.HUMAN if i % 2 else Route.AUTO_QC) for i in range(200)],
                          time.time())  # fmt: skip
        (alice,) = add_users(store, "alice")
        errors: list = []
        start = threading.Barrier(len(filters))

        def tab(route: Route | None) -> None:
            try:
                start.wait(timeout=30)
                store.claim(alice, 600, time.time(), route=route)
            except Exception as e:  # noqa: BLE001 - fails the test below
                errors.append(e)

        for round_ in range(40):
            threads = [threading.Thread(target=tab, args=(r,)) for r in filters]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=60)
            assert errors == []
            held = [i.request_id for i in store.items(limit=1000) if i.lease_owner == "alice"]
            assert len(held) == 1, f"round {round_}: alice holds {held}"
