"""The audit store's semantics, each test on SQLite and on PostgreSQL: idempotent ingest, claim
order and leases, verdicts (idempotent, compare-and-set, kinds, history), roles inside writes,
the outbox, gold items and double review, and the read models."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import pytest
from tests.store.store_factories import add_users, audit_item, make_store

from auditstream import topics
from auditstream.errors import LeaseNotHeld, PermissionDenied, VerdictConflict
from auditstream.wire import Decision, Route, Verdict, VerdictKind, decode_input
from store.accounts import Role
from store import AuditStore, StoreConfig

T0 = 10_000.0


def _decide(store: AuditStore, user, kind=VerdictKind.ACCEPT, corrected=None, now=T0, **claim_kw):
    claim = store.claim(user, 60, now, **claim_kw)
    assert claim is not None
    return claim, store.record_verdict(store.new_verdict_id(), claim.item_id, user, kind, corrected, now + 1)


# --- ingest -----------------------------------------------------------------------------------


def test_replaying_the_same_audit_records_twice_yields_one_item_each(store: AuditStore) -> None:
    items = [audit_item(f"r{i}", Route.HUMAN if i % 3 else Route.AUTO_QC) for i in range(30)]
    assert store.ingest_many(items, T0) == [True] * 30
    assert store.ingest_many(items, T0 + 5) == [False] * 30
    assert [store.ingest(item, T0 + 6) for item in items[:5]] == [False] * 5
    assert store.queue_depth() == 30
    assert sorted(i.request_id for i in store.items(limit=100)) == sorted(f"r{i}" for i in range(30))


def test_a_new_model_version_of_the_same_request_is_a_new_item(store: AuditStore) -> None:
    assert store.ingest(audit_item("r1", version="v1"), T0)
    assert store.ingest(audit_item("r1", version="v2"), T0)
    assert store.queue_depth() == 2 and store.queue_depth(model="zip") == 2


def test_an_item_keeps_everything_the_auditor_and_training_need(store: AuditStore) -> None:
    original = audit_item("r1", Route.AUTO_QC, output={"box": [1, 2, 3, 4]}, confidence=0.97, inclusion_prob=0.125)
    store.ingest(original, T0)
    item = store.items()[0]
    assert store.item(item.item_id) == item
    p = original.prediction
    assert (item.route, item.confidence, item.qc_inclusion_prob, item.output, item.details, item.task) == (
        Route.AUTO_QC, 0.97, 0.125, {"box": [1, 2, 3, 4]}, p.details, "sequence")
    assert (decode_input(item.input) == original.input).all()
    assert (item.created_at_s, item.ingested_at_s, item.state, item.lease_owner) == (1000.0, T0, "open", None)


@pytest.mark.parametrize("route, prob", [(Route.AUTO, 0.05), (Route.AUTO_QC, 0.0), (Route.AUTO_QC, 1.5)])
def test_items_that_should_not_be_audited_are_refused(store: AuditStore, route: Route, prob: float) -> None:
    with pytest.raises(ValueError, match="route|inclusion probability"):
        store.ingest(audit_item("bad", route, inclusion_prob=prob), T0)
    assert store.queue_depth() == 0


# --- claims and leases ------------------------------------------------------------------------


def test_claims_serve_deferred_items_first_then_oldest_and_honour_filters(store: AuditStore) -> None:
    (alice,) = add_users(store, "alice")
    store.ingest_many([audit_item("qc1", Route.AUTO_QC), audit_item("h1"), audit_item("h2", model="det"),
                       audit_item("qc2", Route.AUTO_QC, model="det")], T0)  # fmt: skip
    assert store.claim(alice, 60, T0, model="det", route="AUTO_QC").item.request_id == "qc2"
    assert store.release(store.items(model="det", route=Route.AUTO_QC)[0].item_id, alice)
    order = []
    while (claim := store.claim(alice, 60, T0)) is not None:
        order.append(claim.item.request_id)
        store.record_verdict(store.new_verdict_id(), claim.item_id, alice, "accept", None, T0)
    assert order == ["h1", "h2", "qc1", "qc2"]


def test_a_held_lease_comes_back_on_reload_and_renews_releases_and_expires(store: AuditStore) -> None:
    alice, bob = add_users(store, "alice", "bob")
    store.ingest_many([audit_item("r1"), audit_item("r2")], T0)
    first = store.claim(alice, 30, T0)
    assert (first.item.lease_owner, first.item.lease_expires_s, first.lease_expires_s) == ("alice", T0 + 30, T0 + 30)
    assert store.claim(alice, 30, T0 + 10).item_id == first.item_id  # a page reload: same item, lease extended
    assert store.claim(bob, 30, T0 + 10).item_id != first.item_id
    assert store.renew(first.item_id, alice, 30, T0 + 20)
    assert not store.renew(first.item_id, bob, 30, T0 + 20)
    assert store.item(first.item_id).lease_expires_s == T0 + 50
    assert store.claim(bob, 30, T0 + 60).item_id == first.item_id  # alice's lease expired at T0 + 50
    assert not store.renew(first.item_id, alice, 30, T0 + 61)
    assert not store.release(first.item_id, alice)
    assert store.release(first.item_id, bob)
    assert store.item(first.item_id).lease_owner is None


def test_reclaim_takes_back_an_expired_lease_only_while_nobody_else_has_it(store: AuditStore) -> None:
    alice, bob = add_users(store, "alice", "bob")
    store.ingest_many([audit_item("r1"), audit_item("r2"), audit_item("r3")], T0)
    first = store.claim(alice, 30, T0)
    assert not store.renew(first.item_id, alice, 30, T0 + 40)  # ran out at T0 + 30
    again = store.reclaim(first.item_id, alice, 30, T0 + 40)
    assert (again.item_id, again.lease_expires_s, again.review_round) == (first.item_id, T0 + 70, 1)
    assert store.item(first.item_id).lease_owner == "alice"
    assert store.reclaim(first.item_id, bob, 30, T0 + 41) is None  # alice's live lease: not taken
    assert store.claim(bob, 30, T0 + 100).item_id == first.item_id  # expired at T0 + 70, bob took it
    assert store.reclaim(first.item_id, alice, 30, T0 + 101) is None
    assert store.item(first.item_id).lease_owner == "bob"
    store.record_verdict(store.new_verdict_id(), first.item_id, bob, "reject", None, T0 + 102)
    assert store.reclaim(first.item_id, alice, 30, T0 + 200) is None  # decided
    other = store.claim(alice, 30, T0 + 200)
    store.record_verdict(store.new_verdict_id(), other.item_id, alice, "skip", None, T0 + 201)
    assert store.reclaim(other.item_id, alice, 30, T0 + 202) is None  # she answered (skipped) it


def test_reclaim_never_frees_the_auditors_newer_item(store: AuditStore) -> None:
    """Review 2026-12-05: two tabs of one auditor -- tab B claimed q1 (which released h1), tab A
    then reclaimed h1, which freed q1; their renewals took the lease from each other every few
    seconds, each time leaving the other item to anyone. A reclaim is refused while she holds
    another live lease."""
    alice, bob = add_users(store, "alice", "bob")
    store.ingest_many([audit_item("h1"), audit_item("q1", Route.AUTO_QC)], T0)
    first = store.claim(alice, 60, T0, route=Route.HUMAN)
    second = store.claim(alice, 60, T0 + 1, route=Route.AUTO_QC)  # another tab: h1 goes back to the queue
    assert store.reclaim(first.item_id, alice, 60, T0 + 2) is None
    assert store.item(second.item_id).lease_owner == "alice" and store.item(first.item_id).lease_owner is None
    assert store.claim(bob, 60, T0 + 3).item.request_id == "h1"


def test_reclaim_waits_for_and_sees_her_own_verdict_committing_meanwhile(store: AuditStore, monkeypatch) -> None:
    """Review 2026-12-05: on PostgreSQL (READ COMMITTED) a reclaim waiting on the item's row while
    the same auditor's verdict (another tab) committed still read the older snapshot in its
    subquery: she got the item back and recorded a second verdict on it (round 2 of a double
    review by herself). The reclaim now locks the row first and its UPDATE sees the verdict."""
    import threading
    import time

    import store.store as store_module
    from store import StoreConfig, open_store

    alice, _ = add_users(store, "alice", "bob")
    store = open_store(store._db.url, StoreConfig(gold_rate=0.0, double_review_rate=1.0),  # stays open after one
                       table_prefix=store._db.prefix, create=True)
    store.ingest_many([audit_item("r1")], T0)
    claim = store.claim(alice, 30, T0)
    assert store.item(claim.item_id).reviews_needed == 2
    real, entered = store_module.outbox_records, threading.Event()

    def slow_outbox(*args, **kwargs):  # the verdict's transaction holds the item's row a while
        entered.set()
        time.sleep(1.0)
        return real(*args, **kwargs)

    monkeypatch.setattr(store_module, "outbox_records", slow_outbox)
    verdict = threading.Thread(target=store.record_verdict,
                               args=(store.new_verdict_id(), claim.item_id, alice, "reject", None, T0 + 5))
    verdict.start()
    assert entered.wait(10)
    monkeypatch.setattr(store_module, "outbox_records", real)
    result = {}
    reclaim = threading.Thread(target=lambda: result.update(r=store.reclaim(claim.item_id, alice, 30, T0 + 40)))
    reclaim.start()
    verdict.join()
    reclaim.join()
    assert result["r"] is None
    assert [v.auditor for v in store.verdicts(item_id=claim.item_id)] == ["alice"]
    store.close()


def test_an_auditor_holds_one_lease_and_switching_filters_releases_the_held_item(store: AuditStore) -> None:
    """The held lease used to be looked up with the claim's filters: alice holding h1 and
    claiming with route AUTO_QC got q1 and kept both, h1 hidden from everyone until it expired."""
    alice, bob = add_users(store, "alice", "bob")
    store.ingest_many([audit_item("h1"), audit_item("q1", Route.AUTO_QC), audit_item("q2", Route.AUTO_QC)], T0)
    first = store.claim(alice, 60, T0)
    assert first.item.request_id == "h1"
    assert store.claim(alice, 60, T0 + 1, route=Route.HUMAN).item_id == first.item_id  # it matches: back
    switched = store.claim(alice, 60, T0 + 2, route=Route.AUTO_QC)
    assert switched.item.request_id == "q1"
    assert [(i.request_id, i.lease_owner) for i in store.items() if i.lease_owner] == [("q1", "alice")]
    assert store.claim(bob, 60, T0 + 3).item.request_id == "h1"  # free at once, not after alice's lease
    assert store.claim(alice, 60, T0 + 4, model="det") is None  # nothing there: and nothing held either
    assert store.item(switched.item_id).lease_owner is None
    assert store.claim(alice, 60, T0 + 5, route=Route.AUTO_QC).item.request_id == "q1"  # released, not skipped
    assert {(i.request_id, i.lease_owner) for i in store.items() if i.lease_owner} == {("q1", "alice"), ("h1", "bob")}


def test_lease_must_be_positive(store: AuditStore) -> None:
    (alice,) = add_users(store, "alice")
    with pytest.raises(ValueError, match="lease_s=0"):
        store.claim(alice, 0, T0)


# --- verdicts ---------------------------------------------------------------------------------


def test_a_double_submit_records_one_verdict(store: AuditStore) -> None:
    (alice,) = add_users(store, "alice")
    store.ingest(audit_item("r1"), T0)
    claim = store.claim(alice, 60, T0)
    vid = store.new_verdict_id()
    first = store.record_verdict(vid, claim.item_id, alice, VerdictKind.CORRECT, "12346", T0 + 1)
    again = store.record_verdict(vid, claim.item_id, alice, VerdictKind.CORRECT, "12346", T0 + 2)
    assert first.recorded and first.item_done and not again.recorded
    assert again.verdict == first.verdict and again.item_done
    with pytest.raises(LeaseNotHeld, match="nobody holds a lease"):  # a second form on the same item
        store.record_verdict(store.new_verdict_id(), claim.item_id, alice, VerdictKind.ACCEPT, None, T0 + 3)
    assert len(store.verdicts()) == 1 and len(store.pending_outbox()) == 2


def test_concurrent_submits_of_one_form_record_one_verdict(store: AuditStore) -> None:
    (alice,) = add_users(store, "alice")
    store.ingest(audit_item("r1"), T0)
    claim = store.claim(alice, 60, T0)
    vid, barrier, results, errors = store.new_verdict_id(), threading.Barrier(8), [], []

    def submit(verdict_id: str) -> None:
        barrier.wait()
        try:
            results.append(store.record_verdict(verdict_id, claim.item_id, alice, "accept", None, T0 + 1))
        except LeaseNotHeld as e:
            errors.append(e)

    threads = [threading.Thread(target=submit, args=(vid if i < 6 else store.new_verdict_id(),)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.recorded for r in results) == 1  # one winner among all eight submits
    assert len(store.verdicts()) == 1
    assert len(results) + len(errors) == 8 and all(r.verdict == results[0].verdict for r in results if r.verdict.verdict_id == vid)


def test_only_the_live_lease_holder_can_submit(store: AuditStore) -> None:
    alice, bob = add_users(store, "alice", "bob")
    store.ingest(audit_item("r1"), T0)
    claim = store.claim(alice, 30, T0)
    with pytest.raises(LeaseNotHeld, match="leased by 'alice'"):
        store.record_verdict(store.new_verdict_id(), claim.item_id, bob, "accept", None, T0 + 1)
    with pytest.raises(LeaseNotHeld, match="lease expired 5.0 s ago"):
        store.record_verdict(store.new_verdict_id(), claim.item_id, alice, "accept", None, T0 + 35)
    with pytest.raises(LookupError, match="no audit item 999"):
        store.record_verdict(store.new_verdict_id(), 999, alice, "accept", None, T0 + 1)
    assert store.verdicts() == [] and store.pending_outbox() == []


def test_a_verdict_id_cannot_be_reused_for_another_item(store: AuditStore) -> None:
    (alice,) = add_users(store, "alice")
    store.ingest_many([audit_item("r1"), audit_item("r2")], T0)
    first = store.claim(alice, 60, T0)
    vid = store.new_verdict_id()
    store.record_verdict(vid, first.item_id, alice, "accept", None, T0)
    second = store.claim(alice, 60, T0)
    with pytest.raises(VerdictConflict, match="verdict on item"):
        store.record_verdict(vid, second.item_id, alice, "accept", None, T0)


@pytest.mark.parametrize("kind, corrected", [("correct", None), ("accept", "1"), ("reject", "1"), ("skip", "1")])
def test_corrected_output_goes_with_correct_only(store: AuditStore, kind: str, corrected) -> None:
    (alice,) = add_users(store, "alice")
    store.ingest(audit_item("r1"), T0)
    claim = store.claim(alice, 60, T0)
    with pytest.raises(ValueError, match="corrected output"):
        store.record_verdict(store.new_verdict_id(), claim.item_id, alice, kind, corrected, T0)


def test_a_correction_too_large_to_publish_is_refused_and_nothing_is_recorded(store: AuditStore) -> None:
    # Recorded, its verdict would sit first in the outbox and every publishing round would fail on
    # it (the producer refuses records over MAX_PRODUCE_BYTES): nothing after it would be published.
    from store.records import MAX_CORRECTION_BYTES

    (alice,) = add_users(store, "alice")
    store.ingest(audit_item("r1"), T0)
    claim = store.claim(alice, 60, T0)
    huge = "7" * (MAX_CORRECTION_BYTES + 1)
    with pytest.raises(ValueError, match=f"over {MAX_CORRECTION_BYTES}") as info:
        store.record_verdict(store.new_verdict_id(), claim.item_id, alice, "correct", huge, T0)
    assert len(str(info.value)) < 300  # the message does not quote the value
    assert store.verdicts(item_id=claim.item_id) == [] and store.pending_outbox() == []
    # the lease still holds: the same auditor answers within the limit
    result = store.record_verdict(store.new_verdict_id(), claim.item_id, alice, "correct", "7" * 1000, T0 + 1)
    assert result.recorded and len(store.pending_outbox()) >= 1


@pytest.mark.parametrize("corrected, says", [("7\x00", "NUL"), ({"text": "\ud800"}, "surrogate"),
                                             ([{"label\x00": 1}], "NUL")])
def test_a_correction_no_reader_takes_is_refused_and_nothing_is_recorded(store: AuditStore, corrected, says) -> None:
    # Every wire reader refuses a NUL or a lone surrogate (strict_loads): recorded, its verdict and
    # decision would be refused by the monitor's own observer and stop it, on both backends.
    (alice,) = add_users(store, "alice")
    store.ingest(audit_item("r1"), T0)
    claim = store.claim(alice, 60, T0)
    with pytest.raises(ValueError, match=says):
        store.record_verdict(store.new_verdict_id(), claim.item_id, alice, "correct", corrected, T0)
    assert store.verdicts(item_id=claim.item_id) == [] and store.pending_outbox() == []


def test_skip_releases_the_item_to_another_auditor_and_is_kept_in_history(store: AuditStore) -> None:
    alice, bob = add_users(store, "alice", "bob")
    store.ingest(audit_item("r1"), T0)
    claim = store.claim(alice, 60, T0)
    result = store.record_verdict(store.new_verdict_id(), claim.item_id, alice, "skip", None, T0 + 1)
    assert result.recorded and not result.item_done and result.verdict.review_round == 0
    assert store.claim(alice, 60, T0 + 2) is None  # a skipped item goes to someone else
    _, decided = _decide(store, bob, VerdictKind.REJECT, now=T0 + 3)
    assert decided.item_done and store.queue_depth() == 0
    assert [v.kind for v in store.verdicts(item_id=claim.item_id)] == [VerdictKind.SKIP, VerdictKind.REJECT]
    assert store.verdict_counts() == {VerdictKind.ACCEPT: 0, VerdictKind.CORRECT: 0, VerdictKind.REJECT: 1, VerdictKind.SKIP: 1}


def test_available_depth_counts_by_the_claim_rule(store: AuditStore) -> None:
    """What the workbench says "Next item" can give: not skipped or answered by her, not held by
    another auditor, no gold; the model and route filters as in claim."""
    alice, bob = add_users(store, "alice", "bob")
    store.ingest_many([audit_item("r1"), audit_item("r2"), audit_item("r3", model="other")], T0)
    assert store.available_depth("alice", T0) == 3 and store.available_depth("alice", T0, model="zip") == 2
    store.claim(bob, 60, T0, model="zip")  # one zip item, held by bob
    claim = store.claim(alice, 60, T0, model="zip")  # the other, skipped by alice
    store.record_verdict(store.new_verdict_id(), claim.item_id, alice, "skip", None, T0 + 1)
    assert store.queue_depth(model="zip") == 2 and store.available_depth("alice", T0 + 2, model="zip") == 0
    assert store.available_depth("bob", T0 + 2, model="zip") == 1  # alice's skip, not his own lease
    assert store.available_depth("alice", T0 + 100, model="zip") == 1  # bob's lease ran out
    assert store.claim(alice, 60, T0 + 100, model="zip") is not None


# --- roles inside writes ----------------------------------------------------------------------


def test_a_viewer_can_never_write(store: AuditStore) -> None:
    (viewer,) = add_users(store, "vera", role=Role.VIEWER)
    (alice,) = add_users(store, "alice")
    store.ingest(audit_item("r1"), T0)
    with pytest.raises(PermissionDenied, match="'vera' \\(role 'viewer'\\) may not claim"):
        store.claim(viewer, 60, T0)
    claim = store.claim(alice, 60, T0)
    forged = type(viewer)("vera", Role.AUDITOR)  # a session that lies about the role
    for write in (lambda u: store.record_verdict(store.new_verdict_id(), claim.item_id, u, "accept", None, T0),
                  lambda u: store.renew(claim.item_id, u, 60, T0), lambda u: store.release(claim.item_id, u)):  # fmt: skip
        for user in (viewer, forged):
            with pytest.raises(PermissionDenied):
                write(user)
    with pytest.raises(PermissionDenied, match="add gold items"):
        store.add_gold(audit_item("g1"), "12345", alice, T0)
    assert store.verdicts() == [] and store.item(claim.item_id).lease_owner == "alice"


def test_a_demoted_or_disabled_auditor_cannot_submit_with_an_old_session(store: AuditStore) -> None:
    alice, bob = add_users(store, "alice", "bob")
    store.ingest_many([audit_item("r1"), audit_item("r2")], T0)
    claim_a, claim_b = store.claim(alice, 60, T0), store.claim(bob, 60, T0)
    store.accounts.set_role("alice", Role.VIEWER)
    store.accounts.set_role("bob", Role.AUDITOR, disabled=True)
    with pytest.raises(PermissionDenied, match="role 'viewer'"):
        store.record_verdict(store.new_verdict_id(), claim_a.item_id, alice, "accept", None, T0)
    with pytest.raises(PermissionDenied, match="no account"):
        store.record_verdict(store.new_verdict_id(), claim_b.item_id, bob, "accept", None, T0)


# --- outbox -----------------------------------------------------------------------------------


def test_verdicts_put_their_records_on_the_outbox(store: AuditStore) -> None:
    (alice,) = add_users(store, "alice")
    store.ingest_many([audit_item("h1", output="11111"), audit_item("q1", Route.AUTO_QC, inclusion_prob=0.25)], T0)
    _, human = _decide(store, alice, VerdictKind.CORRECT, "22222")
    _, qc = _decide(store, alice, VerdictKind.REJECT)
    rows = store.pending_outbox()
    assert [(r.topic, r.key) for r in rows] == [(topics.VERDICTS, b"h1"), (topics.DECISIONS, b"h1"), (topics.VERDICTS, b"q1")]
    verdict = Verdict.from_bytes(rows[0].value)
    assert (verdict.verdict_id, verdict.kind, verdict.model_output, verdict.corrected_output, verdict.auditor) == (
        human.verdict.verdict_id, VerdictKind.CORRECT, "11111", "22222", "alice")
    decision = Decision.from_bytes(rows[1].value)
    assert (decision.source, decision.output, decision.request_id) == ("human", "22222", "h1")
    qc_verdict = Verdict.from_bytes(rows[2].value)
    assert (qc_verdict.item_route, qc_verdict.inclusion_prob, qc_verdict.kind) == (Route.AUTO_QC, 0.25, VerdictKind.REJECT)
    assert store.mark_published([rows[0].id, rows[1].id], T0 + 5) == 2
    assert store.mark_published([rows[0].id], T0 + 6) == 0  # already marked
    assert [r.id for r in store.pending_outbox()] == [rows[2].id]
    assert store.store_stats(T0).outbox_pending == 1


def test_a_human_decision_on_an_episode_is_keyed_like_the_episode(store: AuditStore) -> None:
    """The model's decisions for an RL episode are keyed by the episode key (serving keys them
    with ``InferenceRequest.key``); the human's decision on a deferred step must land on the same
    partition, or the episode's decisions arrive out of order. Verdicts stay keyed by request id."""
    import dataclasses

    import numpy as np

    from auditstream.wire import InferenceRequest

    (alice,) = add_users(store, "alice")
    item = audit_item("step-7")
    item = dataclasses.replace(item, prediction=dataclasses.replace(item.prediction, episode_key="ep-42", step=7))
    store.ingest_many([item, audit_item("plain")], T0)
    _decide(store, alice, VerdictKind.CORRECT, "1")
    _decide(store, alice)
    keys = {(r.topic, r.key) for r in store.pending_outbox()}
    request = InferenceRequest("step-7", "zip", np.zeros(3, dtype=np.float32), T0, episode_key="ep-42", step=7)
    assert request.key == b"ep-42"
    assert keys == {(topics.VERDICTS, b"step-7"), (topics.DECISIONS, request.key),
                    (topics.VERDICTS, b"plain"), (topics.DECISIONS, b"plain")}  # fmt: skip
    (decision,) = [Decision.from_bytes(r.value) for r in store.pending_outbox() if r.key == b"ep-42"]
    assert (decision.request_id, decision.episode_key, decision.step, decision.source) == ("step-7", "ep-42", 7, "human")


@pytest.mark.parametrize("url", ["postgresqlx://auditor:s3cret@h/db", "mysql://auditor:s3cret@db.example.org/audit"])
def test_a_bad_store_url_is_reported_without_its_password(url: str) -> None:
    from auditstream.errors import ConfigError
    from store import open_store

    with pytest.raises(ConfigError, match="auditor") as e:
        open_store(url, create=True)
    assert "s3cret" not in str(e.value) and "s3cret" not in repr(e.value.value)


# --- gold items and double review -------------------------------------------------------------


def test_gold_items_are_mixed_in_scored_per_auditor_and_never_repeated(backend: str, tmp_path: Path, fast_hashes: None) -> None:
    with make_store(backend, tmp_path, StoreConfig(gold_rate=1.0)) as store:
        admin, alice, bob = add_users(store, "ada", "alice", "bob")
        store.accounts.set_role("ada", Role.ADMIN)
        admin = store.accounts.get("ada")
        store.add_gold(audit_item("gold-1", output="12345"), "12345", admin, T0)  # the model was right
        store.add_gold(audit_item("gold-2", output="99999"), None, admin, T0)  # unreadable: should be rejected
        with pytest.raises(ValueError, match="already exists"):
            store.add_gold(audit_item("gold-1"), "1", admin, T0)
        store.ingest(audit_item("real"), T0)
        answers = {"alice": {"gold-1": ("accept", None), "gold-2": ("reject", None)},
                   "bob": {"gold-1": ("correct", "12845"), "gold-2": ("accept", None)}}  # fmt: skip
        for user in (alice, bob):
            served = []
            for _ in range(2):
                claim = store.claim(user, 60, T0)
                served.append(claim.item.request_id)
                kind, corrected = answers[user.name][claim.item.request_id]
                store.record_verdict(store.new_verdict_id(), claim.item_id, user, kind, corrected, T0)
            assert sorted(served) == ["gold-1", "gold-2"]
            assert store.claim(user, 60, T0).item.request_id == "real"  # gold exhausted for this user
            store.release(store.items()[0].item_id, user)
        scores = store.gold_accuracy()
        assert (scores["alice"].n, scores["alice"].correct, scores["alice"].accuracy) == (2, 2, 1.0)
        assert (scores["bob"].n, scores["bob"].correct) == (2, 0)
        assert store.queue_depth() == 1 and sum(store.verdict_counts().values()) == 0  # gold is not about the model
        assert all(Verdict.from_bytes(r.value).is_gold for r in store.pending_outbox())
        assert {r.topic for r in store.pending_outbox()} == {topics.VERDICTS}  # no decision for a gold item


def test_gold_accuracy_of_one_model_counts_only_its_gold_items(backend: str, tmp_path: Path, fast_hashes: None) -> None:
    """Review 2026-12-05: certify --model zip-reader bounded the auditors' error with their digits
    gold record too (gold_accuracy took no model): the bound against the truth was per store."""
    with make_store(backend, tmp_path, StoreConfig(gold_rate=1.0)) as store:
        admin, alice = add_users(store, "ada", "alice")
        store.accounts.set_role("ada", Role.ADMIN)
        admin = store.accounts.get("ada")
        for i in range(3):
            store.add_gold(audit_item(f"zip-{i}", model="zip", output="12345"), "12345", admin, T0)
            store.add_gold(audit_item(f"digit-{i}", model="digits", output=7), 7, admin, T0)
        # gold stands in for a traffic item of its model (version, route)
        store.ingest_many([audit_item("real-zip", model="zip"), audit_item("real-digit", model="digits", output=7)], T0)
        for model in ["zip"] * 3 + ["digits"] * 3:  # right on every digits item, wrong on every zip item
            claim = store.claim(alice, 60, T0, model=model)
            assert claim.item.request_id.startswith(model[:3]), claim.item.request_id
            wrong = claim.item.model == "zip"
            store.record_verdict(store.new_verdict_id(), claim.item_id, alice, "correct" if wrong else "accept",
                                 "99999" if wrong else None, T0)
        every = store.gold_accuracy()["alice"]
        assert (every.n, every.correct) == (6, 3)
        assert (store.gold_accuracy("zip")["alice"].n, store.gold_accuracy("zip")["alice"].correct) == (3, 0)
        assert (store.gold_accuracy("digits")["alice"].n, store.gold_accuracy("digits")["alice"].correct) == (3, 3)
        assert store.gold_accuracy("captioner") == {}


def test_double_review_needs_two_different_auditors_and_measures_agreement(backend: str, tmp_path: Path, fast_hashes: None) -> None:
    with make_store(backend, tmp_path, StoreConfig(double_review_rate=1.0)) as store:
        alice, bob = add_users(store, "alice", "bob")
        labels = [("accept", None, "accept", None), ("correct", "2", "correct", "2"), ("reject", None, "accept", None),
                  ("accept", None, "accept", None), ("correct", "3", "reject", None), ("accept", None, "accept", None)]  # fmt: skip
        store.ingest_many([audit_item(f"r{i}", output="1") for i in range(len(labels))], T0)
        for a_kind, a_fix, b_kind, b_fix in labels:
            claim_a = store.claim(alice, 60, T0)
            first = store.record_verdict(store.new_verdict_id(), claim_a.item_id, alice, a_kind, a_fix, T0)
            assert not first.item_done and claim_a.review_round == 1
            assert store.claim(alice, 60, T0) is None or store.release(store.claim(alice, 60, T0).item_id, alice)
            claim_b = store.claim(bob, 60, T0)
            assert claim_b.item_id == claim_a.item_id and claim_b.review_round == 2
            assert store.record_verdict(store.new_verdict_id(), claim_b.item_id, bob, b_kind, b_fix, T0).item_done
        agreement = store.agreement()
        # labels: first rater 1,2,None,1,3,1; second 1,2,1,1,None,1 -> 4 of 6 agree
        p_o, p_e = 4 / 6, (3 * 4 + 1 * 1 + 1 * 1 + 1 * 0) / 36  # "1": 3 and 4 times, "2", null, "3"
        assert agreement.n_items == 6 and agreement.percent == pytest.approx(p_o)
        assert agreement.kappa == pytest.approx((p_o - p_e) / (1 - p_e))
        decisions = [r for r in store.pending_outbox() if r.topic == topics.DECISIONS]
        assert len(decisions) == 6  # one decision per item, from its first review
        assert len(store.verdicts()) == 12 and store.queue_depth() == 0


# --- read models ------------------------------------------------------------------------------


def test_read_models(store: AuditStore) -> None:
    alice, bob = add_users(store, "alice", "bob")
    store.ingest_many([audit_item(f"h{i}") for i in range(3)], T0)
    store.ingest_many([audit_item(f"q{i}", Route.AUTO_QC, version="v2", inclusion_prob=0.1 * (i + 1), confidence=0.9)
                       for i in range(4)], T0 + 100)  # fmt: skip
    assert math.isnan(store.agreement().kappa) and store.throughput_series(60) == []
    assert store.queue_depth() == 7 and store.queue_depth(route="AUTO_QC") == 4
    assert store.oldest_pending_age_s(T0 + 130) == 130 and store.oldest_pending_age_s(T0 + 130, route="AUTO_QC") == 30
    _decide(store, alice, now=T0 + 200)
    _decide(store, alice, VerdictKind.CORRECT, "54321", now=T0 + 210)
    _decide(store, bob, now=T0 + 400)  # last HUMAN item
    _decide(store, bob, VerdictKind.REJECT, now=T0 + 410, route="AUTO_QC")  # q0
    _decide(store, bob, now=T0 + 420, route="AUTO_QC")  # q1
    assert store.queue_depth() == 2 and store.oldest_pending_age_s(T0 + 500) == 400
    assert store.auditor_throughput(since_s=0) == {"alice": 2, "bob": 3}
    assert store.auditor_throughput(since_s=T0 + 300) == {"bob": 3}
    assert store.throughput_series(bucket_s=100, since_s=0) == [(T0 + 200, 2), (T0 + 300, 0), (T0 + 400, 3)]
    outcomes = store.audited_qc_outcomes("zip", "v2")
    assert [(o.request_id, o.is_error, o.inclusion_prob) for o in outcomes] == [("q0", True, 0.1), ("q1", False, 0.2)]
    assert store.audited_qc_outcomes("zip", "v1") == [] and len(store.audited_qc_outcomes("zip")) == 2
    stats = store.store_stats(T0 + 500, throughput_window_s=150)
    assert {(q.model_version, q.route, q.depth, q.oldest_age_s) for q in stats.queue} == {("v2", Route.AUTO_QC, 2, 400.0)}
    assert stats.verdicts == {("zip", "v1", "HUMAN", "accept"): 2, ("zip", "v1", "HUMAN", "correct"): 1,
                              ("zip", "v2", "AUTO_QC", "reject"): 1, ("zip", "v2", "AUTO_QC", "accept"): 1}  # fmt: skip
    assert stats.auditor_throughput == {"bob": 3}
    assert [i.state for i in store.items(state="done", limit=10)] == ["done"] * 5
    assert len(store.items(limit=2, offset=6)) == 1
    labels = list(store.labels())
    assert len(labels) == store.count_labels() == 5
    assert [row["human_label"] for row in labels][:2] == ["12345", "54321"]
    assert json.dumps(labels)  # plain JSON all the way down
