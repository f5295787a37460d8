"""Shadow answers on SQLite and PostgreSQL: idempotent ingest, the join with first verdicts by the
kind's answer equality, and pruning of answers whose request was never audited."""

from __future__ import annotations

import dataclasses

import pytest
from tests.store.store_factories import add_users, audit_item

from auditstream import tasks
from auditstream.wire import Route, VerdictKind
from store.shadow import PairedAudit, ShadowAnswers, TrafficPair, live_reference, wrong_answers


def shadow_of(item, version: str, output):  # the candidate's prediction for the item's request
    return dataclasses.replace(item.prediction, model_version=version, output=output, route=Route.AUTO, shadow=True)


def test_shadow_answers_pair_with_first_verdicts(store):
    shadow = ShadowAnswers(store)
    items = [audit_item(f"r{i}", Route.HUMAN if i < 2 else Route.AUTO_QC, version="1", output="12345") for i in range(4)]
    store.ingest_many(items, 10.0)
    # candidate: right where live was corrected (r0), wrong where live was accepted (r2), r3 unanswered
    answers = [shadow_of(items[0], "2", "12346"), shadow_of(items[1], "2", "12345"), shadow_of(items[2], "2", "99999")]
    assert shadow.ingest(answers + [items[3].prediction], 11.0) == 3  # a live prediction is not a shadow answer
    assert shadow.ingest(answers, 12.0) == 0  # redelivered: nothing new
    (alice,) = add_users(store, "alice")
    verdicts = {"r0": (VerdictKind.CORRECT, "12346"), "r1": (VerdictKind.REJECT, None),
                "r2": (VerdictKind.ACCEPT, None), "r3": (VerdictKind.ACCEPT, None)}
    for t in range(4):
        claim = store.claim(alice, 60, 20.0 + t)
        kind, corrected = verdicts[claim.item.request_id]
        store.record_verdict(store.new_verdict_id(), claim.item_id, alice, kind, corrected, 20.0 + t)
    pairs = {p.request_id: p for p in shadow.paired_audits("zip", "1", "2")}
    assert pairs == {
        "r0": PairedAudit("r0", "HUMAN", True, False),
        "r1": PairedAudit("r1", "HUMAN", True, True),  # rejected: no answer is right
        "r2": PairedAudit("r2", "AUTO_QC", False, True),
        "r3": PairedAudit("r3", "AUTO_QC", False, None),
    }
    assert shadow.candidates("zip") == {"2": 3}
    assert shadow.paired_audits("zip", "7", "2") == []  # another live version's items


def test_paired_stream_keeps_the_ingest_order_and_the_items_still_waiting(store):
    shadow = ShadowAnswers(store)
    items = [audit_item(f"r{i}", Route.AUTO_QC, version="1") for i in range(3)]
    store.ingest_many(items, 10.0)
    shadow.ingest([shadow_of(items[0], "2", "12345"), shadow_of(items[1], "2", "12345")], 11.0)  # r2 unanswered
    alice, bob = add_users(store, "alice", "bob")
    claim = store.claim(alice, 60, 20.0)  # r0: skipped, so still waiting
    store.record_verdict(store.new_verdict_id(), claim.item_id, alice, VerdictKind.SKIP, None, 20.0)
    claim = store.claim(bob, 60, 21.0)
    assert claim.item.request_id == "r0"
    claim = store.claim(alice, 60, 21.0)  # r1 decided (a lease of bob's on r0 is still open)
    store.record_verdict(store.new_verdict_id(), claim.item_id, alice, VerdictKind.ACCEPT, None, 21.0)
    assert shadow.paired_stream("zip", "1", "2") == [
        PairedAudit("r0", "AUTO_QC", False, True, waiting=True),  # answered: counted as b while it waits
        PairedAudit("r1", "AUTO_QC", False, False),
        PairedAudit("r2", "AUTO_QC", False, None, waiting=True),  # not answered: counts for nothing
    ]
    assert shadow.paired_audits("zip", "1", "2") == [PairedAudit("r1", "AUTO_QC", False, False)]


def test_unaudited_shadow_answers_are_pruned_after_the_retention(store):
    shadow = ShadowAnswers(store)
    audited = audit_item("a", Route.HUMAN, version="1")
    store.ingest_many([audited], 0.0)
    shadow.ingest([shadow_of(audited, "2", "1"), shadow_of(audit_item("u", version="1"), "2", "1")], 100.0)
    assert shadow.prune(now_s=150.0, retention_s=60.0) == 0  # both younger than the retention
    assert shadow.prune(now_s=200.0, retention_s=60.0) == 1  # the unaudited one goes
    assert shadow.candidates("zip") == {"2": 1}


BOX = {"box": [4.0, 6.0, 30.0, 40.0], "label": "7", "score": 0.9}


@pytest.mark.parametrize("task, live, verdict, corrected, candidate, expected", [
    # a detector's candidate whose box is a pixel off is right (IoU matching), a missing box is wrong
    ("detection", [BOX], VerdictKind.ACCEPT, None, [{**BOX, "box": [5.0, 6.0, 30.0, 41.0], "score": 0.7}], (False, False)),
    ("detection", [BOX], VerdictKind.ACCEPT, None, [], (False, True)),
    # a caption re-spaced and re-cased is the same caption
    ("caption", "a red circle", VerdictKind.CORRECT, "a blue circle", "A  blue circle", (True, False)),
    ("sequence", "02139", VerdictKind.CORRECT, "02138", "02139", (True, True)),
    ("policy", 1, VerdictKind.CORRECT, 0, 0, (True, False)),
    ("classification", 3, VerdictKind.REJECT, None, 3, (True, True)),  # nothing is right on a reject
])
def test_each_kind_judges_both_answers_with_its_own_equality(task, live, verdict, corrected, candidate, expected):
    assert wrong_answers(tasks.lookup(task), verdict, live, corrected, candidate) == expected


def compared(item, version: str, output, live_version: str, live_output):
    """A shadow prediction that compared its answer with ``live_version``'s (serving/consumer.py)."""
    same = tasks.lookup(item.prediction.task).same_answer(output, live_output)
    reference = {"version": live_version, "same_answer": same, **({} if same else {"output": live_output})}
    return dataclasses.replace(shadow_of(item, version, output), details={"live_reference": reference})


def test_traffic_pairs_count_every_compared_request_and_settle_disagreements_by_verdict(store):
    shadow = ShadowAnswers(store)
    # live v1 answered five requests; two were audited (r0 deferred, r1 QC), three were not
    items = {rid: audit_item(rid, route, version="1", output="12345")
             for rid, route in [("r0", Route.HUMAN), ("r1", Route.AUTO_QC), ("r2", Route.AUTO), ("r3", Route.AUTO),
                                ("r4", Route.AUTO)]}
    store.ingest_many([items["r0"], items["r1"]], 10.0)
    answers = [compared(items["r0"], "2", "12346", "1", "12345"),  # differs; the verdict says live was wrong
               compared(items["r1"], "2", "12345", "1", "12345"),  # same: concordant whatever the verdict
               compared(items["r2"], "2", "12345", "1", "12345"),  # same, never audited
               compared(items["r3"], "2", "99999", "1", "12345"),  # differs, never audited
               shadow_of(items["r4"], "2", "12345")]  # a shadow without a reference: no comparison
    assert shadow.ingest(answers, 11.0) == 5
    assert shadow.ingest(answers, 12.0) == 0  # redelivered: nothing new, no second comparison
    (alice,) = add_users(store, "alice")
    for t in range(2):
        claim = store.claim(alice, 60, 20.0 + t)
        kind, corrected = {"r0": (VerdictKind.CORRECT, "12346"), "r1": (VerdictKind.ACCEPT, None)}[claim.item.request_id]
        store.record_verdict(store.new_verdict_id(), claim.item_id, alice, kind, corrected, 20.0 + t)
    assert shadow.compared("zip", "2") == 4
    assert shadow.traffic_pairs("zip", "1", "2") == [
        TrafficPair("r0", False, (True, False)), TrafficPair("r1", True), TrafficPair("r2", True),
        TrafficPair("r3", False, None)]
    assert shadow.traffic_pairs("zip", "3", "2") == []  # compared with another live version
    # pruning the unaudited shadow answers keeps the comparisons
    assert shadow.prune(now_s=1000.0, retention_s=60.0) == 3
    assert len(shadow.traffic_pairs("zip", "1", "2")) == 4


@pytest.mark.parametrize("details", [
    None, {}, {"live_reference": "yes"}, {"live_reference": {"version": 1, "same_answer": True}},
    {"live_reference": {"version": "1", "same_answer": "true"}}, {"live_reference": {"version": "", "same_answer": True}},
    {"live_reference": {"same_answer": False}},
])
def test_a_malformed_live_reference_is_no_comparison_and_no_error(store, details):
    shadow = ShadowAnswers(store)
    prediction = dataclasses.replace(shadow_of(audit_item("r0", version="1"), "2", "1"), details=details)
    assert live_reference(prediction) is None
    assert shadow.ingest([prediction], 1.0) == 1  # the answer is kept; there is just no comparison
    assert shadow.compared("zip", "2") == 0


def review(store, auditor, kind, corrected, now_s):
    claim = store.claim(auditor, 60, now_s)
    store.record_verdict(store.new_verdict_id(), claim.item_id, auditor, kind, corrected, now_s)
    return claim.item.request_id


def test_a_double_reviewed_item_is_judged_by_its_adjudication_as_certify_labels_it(backend, tmp_path, fast_hashes):
    """Round 1 accepts live's "12345", round 2 (the adjudication) corrects it to "12845": retrain and
    certify take "12845" as the label (split_verdicts), so the gate must too -- live wrong, a
    candidate that answers "12845" right -- and until round 2 the item waits."""
    from monitor.verdict_sets import split_verdicts
    from store import StoreConfig
    from tests.store.store_factories import make_store

    with make_store(backend, tmp_path, StoreConfig(gold_rate=0.0, double_review_rate=1.0)) as store:
        shadow = ShadowAnswers(store)
        items = [audit_item("r0", Route.HUMAN, version="1", output="12345"),
                 audit_item("r1", Route.HUMAN, version="1", output="12345")]
        store.ingest_many(items, 10.0)
        shadow.ingest([compared(items[0], "2", "12845", "1", "12345"),
                       compared(items[1], "2", "12845", "1", "12345")], 11.0)
        alice, bob = add_users(store, "alice", "bob")
        first = {review(store, alice, VerdictKind.ACCEPT, None, 20.0), review(store, alice, VerdictKind.ACCEPT, None, 21.0)}
        assert first == {"r0", "r1"}
        # only the first review is in: both wait (the candidate answered, so counted as b meanwhile)
        assert shadow.paired_stream("zip", "1", "2") == [PairedAudit("r0", "HUMAN", False, True, waiting=True),
                                                          PairedAudit("r1", "HUMAN", False, True, waiting=True)]
        assert shadow.traffic_pairs("zip", "1", "2") == [TrafficPair("r0", False, None), TrafficPair("r1", False, None)]
        rid = review(store, bob, VerdictKind.CORRECT, "12845", 30.0)  # the adjudication of r0
        other = "r1" if rid == "r0" else "r0"
        stream = {a.request_id: a for a in shadow.paired_stream("zip", "1", "2")}
        assert stream[rid] == PairedAudit(rid, "HUMAN", True, False)
        assert stream[other].waiting
        traffic = {p.request_id: p for p in shadow.traffic_pairs("zip", "1", "2")}
        assert traffic[rid] == TrafficPair(rid, False, (True, False))
        assert traffic[other] == TrafficPair(other, False, None)
        label = {r["request_id"]: r["human_label"] for r in split_verdicts(store.labels("zip"), "zip", 0.0).train}
        assert label[rid] == "12845"  # the label the gate judged by
        review(store, bob, VerdictKind.ACCEPT, None, 31.0)  # round 2 confirms the other: both right
        stream = {a.request_id: a for a in shadow.paired_stream("zip", "1", "2")}
        assert stream[other] == PairedAudit(other, "HUMAN", False, True)
        assert {p.request_id: p for p in shadow.traffic_pairs("zip", "1", "2")}[other] == TrafficPair(other, False, (False, True))
