"""A detector correction may name its classes ("a class index or a name"); the model answers with
class indices. Before 2026-12-05 the store recorded the name as given and every reader but the
COCO export compared it with the model's index by its JSON key: a correction ``"label": "3"`` on
the shipped detector card (labels "0".."9") was a different answer from the model's box of class
3 for certify, gold scoring, the QC reads, the gate and the live false-box count. Now a
prediction records the card's class names in its details, the store turns a correction's (and a
gold answer's) names into indices once, where it records them, refusing a name that is none of
the card's; and a rule that knows the names (bound to the card or to the details) compares a name
as its index, for verdicts recorded before."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.store.store_factories import BACKENDS, add_users, make_store

from auditstream import tasks
from auditstream.registry import ModelCard, TensorSpec, TriageSpec
from auditstream.tasks.detection import normalise_labels
from auditstream.wire import AuditItem, Prediction, Route, VerdictKind
from store.accounts import Role
from store.records import audit_error, audit_false_parts, gold_is_correct, item_rule

MODEL = [{"box": [10.0, 10.0, 20.0, 24.0], "label": 3, "score": 0.9}]
NAMED = [{"box": [10.0, 10.0, 20.0, 24.0], "label": "3"}]
T0 = 10_000.0


def card(labels: list[str]) -> ModelCard:
    return ModelCard(name="det", version="1", task="detection", inputs=[TensorSpec("x", "float32", [None, 4])],
                     outputs=[TensorSpec("boxes", "float32", [None, 2, 4]), TensorSpec("labels", "int64", [None, 2]),
                              TensorSpec("scores", "float32", [None, 2])],
                     triage=TriageSpec(0.9, target_risk=0.05), labels=labels,
                     extra={"threshold_low": 0.3, "max_boxes": 2})


def details_of(c: ModelCard) -> dict:
    """What serving records with the card's answer (Prediction.details)."""
    outputs = {"boxes": np.array([[[10, 10, 20, 24], [0, 0, 0, 0]]], np.float32), "labels": np.array([[0, 0]]),
               "scores": np.array([[0.9, 0.0]], np.float32)}
    (answer,) = tasks.lookup("detection").postprocess(c, outputs)
    return dict(answer.details)


DIGITS = card([str(i) for i in range(10)])


def test_a_named_class_is_the_models_index_for_every_rule_that_knows_the_cards_names() -> None:
    details = details_of(DIGITS)
    assert details["labels"] == [str(i) for i in range(10)]
    for rule in (tasks.rule_for("detection", DIGITS), item_rule("detection", details)):
        assert rule.same_answer(MODEL, NAMED) and rule.answer_key(MODEL) == rule.answer_key(NAMED)
        assert not audit_error(VerdictKind.CORRECT, rule, MODEL, NAMED)
        assert audit_false_parts(VerdictKind.CORRECT, rule, MODEL, NAMED) == 0
    assert gold_is_correct("detection", VerdictKind.ACCEPT, MODEL, None, NAMED, details)
    assert normalise_labels(NAMED, DIGITS.labels) == [{"box": [10.0, 10.0, 20.0, 24.0], "label": 3}]


@pytest.mark.parametrize("answer, message", [
    ([{"box": [1, 1, 2, 2], "label": "cat"}], "names no class of the model"),
    ([{"box": [1, 1, 2, 2], "label": 10}], "past the model's 10 classes"),
])
def test_a_class_the_card_does_not_have_is_refused(answer, message) -> None:
    with pytest.raises(ValueError, match=message):
        normalise_labels(answer, DIGITS.labels)
    with pytest.raises(ValueError, match="several classes"):
        normalise_labels([{"box": [1, 1, 2, 2], "label": "a"}], ["a", "a", "b"])


def item(rid: str, details: dict, route: Route = Route.HUMAN) -> AuditItem:
    prediction = Prediction(request_id=rid, model="det", model_version="1", task="detection", output=MODEL,
                            confidence=0.9, route=route, reason="test", qc_inclusion_prob=0.5, created_at_s=T0,
                            details=details)
    return AuditItem(prediction, np.zeros((2, 2), np.float32))


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_store_records_a_named_class_as_the_cards_index(backend: str, tmp_path: Path, fast_hashes: None) -> None:
    from store import StoreConfig

    details = details_of(DIGITS)
    with make_store(backend, tmp_path, StoreConfig(gold_rate=0.0)) as store:
        admin, alice = add_users(store, "admin", "alice")
        store.accounts.set_role("admin", Role.ADMIN)
        admin = store.accounts.get("admin")
        store.ingest_many([item("q1", details, Route.AUTO_QC), item("q2", details),
                           item("old", {"threshold_low": 0.3, "dropped": 1, "match_iou": 0.5})], T0)
        recorded = {}
        for t in range(3):
            claim = store.claim(alice, 60, T0 + t)
            if claim.item.request_id != "old":
                with pytest.raises(ValueError, match="'cat' names no class of the model.*refused, nothing recorded"):
                    store.record_verdict(store.new_verdict_id(), claim.item_id, alice, VerdictKind.CORRECT,
                                         [{"box": [10, 10, 20, 24], "label": "cat"}], T0 + t)
            result = store.record_verdict(store.new_verdict_id(), claim.item_id, alice, VerdictKind.CORRECT, NAMED,
                                          T0 + t)
            recorded[claim.item.request_id] = result.verdict.corrected_output
        assert recorded["q1"] == recorded["q2"] == [{"box": [10.0, 10.0, 20.0, 24.0], "label": 3}]
        # an item recorded before details carried the card's names: the name is kept as given
        assert recorded["old"] == NAMED
        # every reader sees the index: the stored rows, the QC read (no error), the labels export, the outbox
        labels = {r["request_id"]: r["human_label"] for r in store.labels("det")}
        assert labels["q1"][0]["label"] == labels["q2"][0]["label"] == 3
        (sample,) = [s for s in store.qc_stream() if s.request_id == "q1"]
        assert not sample.outcome.is_error and sample.outcome.false_parts == 0
        published = [json.loads(row.value) for row in store.pending_outbox() if row.key in (b"q1", b"q2")]
        assert published and '"3"' not in json.dumps(published)  # the verdicts and decisions carry the index
        # an admin's gold answer with names is stored with indices; a name not on the card is refused
        store.add_gold(item("g1", details), NAMED, admin, T0)
        assert store.gold_answers("det")[("g1", "1")] == [{"box": [10.0, 10.0, 20.0, 24.0], "label": 3}]
        with pytest.raises(ValueError, match="names no class"):
            store.add_gold(item("g2", details), [{"box": [1, 1, 2, 2], "label": "seven"}], admin, T0)


NAMES = st.sampled_from([("0", "1", "2"), ("zero", "one", "two"), ("2", "0", "1")])
BOX = st.builds(lambda x, y, w, h, label, score: {"box": [x, y, x + w, y + h], "label": label, "score": score},
                st.integers(0, 4), st.integers(0, 4), st.integers(1, 4), st.integers(1, 4), st.integers(0, 2),
                st.sampled_from([0.5, 0.7, 0.9]))


@settings(max_examples=200, deadline=None)
@given(ours=st.lists(BOX, max_size=5), theirs=st.lists(BOX, max_size=5), names=NAMES,
       named=st.lists(st.booleans(), min_size=5, max_size=5), iou=st.sampled_from([0.3, 0.5, 0.7]))
def test_property_naming_the_auditors_classes_changes_no_comparison(ours, theirs, names, named, iou) -> None:
    """Writing some of the auditor's classes by their card names: equal keys, equality and the
    false-box count of a rule that knows the names are those of the indices, and the store's
    normalisation gives back the indices exactly."""
    c = card(list(names))
    renamed = [{**d, "label": names[d["label"]]} if flag else d for d, flag in zip(theirs, named)]
    assert normalise_labels(renamed, names) == theirs
    for rule in (tasks.rule_for("detection", c), item_rule("detection", details_of(c))):
        rule = type(rule)(iou, rule.labels)
        assert rule.answer_key(renamed) == rule.answer_key(theirs)
        assert rule.same_answer(ours, renamed) == rule.same_answer(ours, theirs)
        assert rule.false_parts(ours, renamed) == rule.false_parts(ours, theirs)
