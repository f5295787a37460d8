"""``auditstream promote`` without a broker (decisions that move nothing): the command reads the
paired audits from a real SQLite store, prints the decision, records every look in
``promotion.json`` (each at the full delta: the bound is anytime-valid), and leaves ``LIVE`` alone
on a dry run or a refusal."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import tiny_card, tiny_classifier_onnx
from tests.store.store_factories import add_users, audit_item

from auditstream.registry import ModelRegistry
from auditstream.wire import Route, VerdictKind
from monitor.promotion import PROMOTION_FILE, decide_promotion
from qc.audit_split import CERTIFY, audit_part
from qc.paired import PairedGateConfig
from store import open_store
from store.shadow import ShadowAnswers

REPO = Path(__file__).resolve().parents[2]


def seeded(tmp_path: Path, pairs: int, candidate_extra: dict | None = None) -> tuple[ModelRegistry, str]:
    registry = ModelRegistry(tmp_path / "models")
    for extra in ({}, candidate_extra or {}):
        registry.publish(dataclasses.replace(tiny_card(), name="zip", task="sequence", extra=extra), tiny_classifier_onnx())
    registry.set_live("zip", "1")
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    with open_store(url, create=True) as store:
        items = [audit_item(f"r{i}", Route.AUTO_QC, version="1") for i in range(pairs)]
        store.ingest_many(items, time.time())
        ShadowAnswers(store).ingest([dataclasses.replace(i.prediction, model_version="2", shadow=True) for i in items],
                                    time.time())
        (alice,) = add_users(store, "alice")
        for _ in items:
            claim = store.claim(alice, 60, time.time())
            store.record_verdict(store.new_verdict_id(), claim.item_id, alice, VerdictKind.ACCEPT, None, time.time())
    return registry, url


def cli(registry: ModelRegistry, url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "AUDITSTREAM_MODELS_DIR": str(registry.root),
           "AUDITSTREAM_STORE_URL": url}
    return subprocess.run([sys.executable, "-m", "auditstream.cli", "promote", "--model", "zip", "--candidate", "2",
                           *args], env=env, capture_output=True, text=True, timeout=120)


def test_promote_prints_and_records_every_look_and_a_dry_run_moves_nothing(tmp_path):
    registry, url = seeded(tmp_path, pairs=60)
    first = cli(registry, url, "--margin", "0.1", "--dry-run")
    assert first.returncode == 0, first.stderr
    assert "(dry run) zip: v2 vs live v1: PROMOTE (not_worse)" in first.stderr
    assert json.loads(first.stdout)["look"] == 1
    too_few = cli(registry, url)  # margin 2%: 60 identical answers are not enough
    assert too_few.returncode == 1 and "KEEP LIVE (too_few_pairs)" in too_few.stderr
    decision = json.loads(too_few.stdout)
    assert decision["look"] == 2 and decision["delta_look"] == 0.05  # looking again spends nothing
    assert f"about {decision['pairs_needed']:,} more paired audits needed" in decision["reason"]
    assert registry.live_version("zip") == "1"
    history = json.loads((registry.root / "zip" / "2" / PROMOTION_FILE).read_text())["decisions"]
    assert [(r["kind"], r["decision"]["code"], r["dry_run"]) for r in history] == [
        ("paired", "not_worse", True), ("paired", "too_few_pairs", False)]
    with open_store(url, create=True) as store:  # the next decision is the third look
        assert decide_promotion(store, registry, "zip", "2").look == 3


def test_a_candidate_without_the_live_cards_certificate_is_refused(tmp_path):
    registry, url = seeded(tmp_path, pairs=5)
    live = registry.card("zip", "1")
    certified = dataclasses.replace(live, triage=dataclasses.replace(live.triage, target_risk=0.02, certified_risk=0.01))
    registry.publish(certified, tiny_classifier_onnx())  # v3, certified
    registry.set_live("zip", "3")
    refused = cli(registry, url)
    assert refused.returncode == 1 and "(no_certificate)" in refused.stderr and registry.live_version("zip") == "3"


def test_a_candidate_that_learnt_from_verdicts_is_judged_on_the_certify_side_only(tmp_path):
    """A retrained candidate's card carries ``data_hygiene``: the pairs on the train side of the
    request-id split (which it may have learnt from) do not count, and the reason says how many."""
    registry, url = seeded(tmp_path, pairs=60, candidate_extra={"data_hygiene": {"certify_share": 0.5}})
    with open_store(url, create=True) as store:
        certify_side = sum(audit_part(f"r{i}", 0.5, store.split_key) == CERTIFY for i in range(60))  # the store's key
        assert 0 < certify_side < 60
        decision = decide_promotion(store, registry, "zip", "2", config=PairedGateConfig(margin=0.1))
    assert [s["n"] for s in decision.strata] == [certify_side]
    assert f"{60 - certify_side} of 60 audited items fall on the train side" in decision.reason


@pytest.mark.parametrize("hygiene", ["yes", {"share": 0.5}, {"certify_share": "0.5"}, {"certify_share": float("nan")},
                                     {"certify_share": 2}, [0.5]])
def test_a_damaged_data_hygiene_record_is_refused_not_a_traceback(tmp_path, hygiene):
    """``extra.data_hygiene`` of the wrong shape raised TypeError/KeyError from the gate (a
    traceback from ``auditstream promote``); now a ModelRefused naming the field, and the
    candidate is not judged on pairs it may have learnt from."""
    from auditstream.errors import ModelRefused

    nan = isinstance(hygiene, dict) and hygiene.get("certify_share") != hygiene.get("certify_share")
    stand_in = {"certify_share": 0.123456} if nan else hygiene  # publish writes strict JSON: no NaN
    registry, url = seeded(tmp_path, pairs=10, candidate_extra={"data_hygiene": stand_in})
    if nan:  # a card.json written by hand (or by an older release) may still say NaN
        card = registry.root / "zip" / "2" / "card.json"
        card.write_text(card.read_text().replace("0.123456", "NaN"))
    with open_store(url, create=True) as store, \
            pytest.raises(ModelRefused, match=r"zip v2: card field extra.data_hygiene"):
        decide_promotion(store, registry, "zip", "2", config=PairedGateConfig(margin=0.1))


def test_audited_pairs_count_in_ingest_order_not_as_decided(tmp_path):
    """The candidate answers the first 10 QC samples differently from live; auditors skip those
    (hard) and accept the 240 after them. Counting the decided pairs promoted it (240 concordant
    pairs); counted in the store's ingest order the 10 still waiting come first, so nothing is
    shown yet: as b they are 4% of 250, the prefix before them is empty. Once decided (live right)
    they are 10 b's, and the candidate is worse."""
    registry = ModelRegistry(tmp_path / "models")
    for _ in range(2):
        registry.publish(dataclasses.replace(tiny_card(), name="zip", task="sequence"), tiny_classifier_onnx())
    registry.set_live("zip", "1")
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    config = PairedGateConfig(margin=0.02, delta=0.05)
    with open_store(url, create=True) as store:
        items = [audit_item(f"r{i:03d}", Route.AUTO_QC, version="1") for i in range(250)]
        store.ingest_many(items, time.time())
        ShadowAnswers(store).ingest([dataclasses.replace(item.prediction, model_version="2", shadow=True,
                                                         output="99999" if i < 10 else item.prediction.output)
                                     for i, item in enumerate(items)], time.time())
        alice, bob = add_users(store, "alice", "bob")
        for _ in items:  # alice skips the first 10 and accepts the rest
            claim = store.claim(alice, 60, time.time())
            kind = VerdictKind.SKIP if int(claim.item.request_id[1:]) < 10 else VerdictKind.ACCEPT
            store.record_verdict(store.new_verdict_id(), claim.item_id, alice, kind, None, time.time())
        stream = ShadowAnswers(store).paired_stream("zip", "1", "2")
        assert [a.request_id for a in stream] == [item.prediction.request_id for item in items]  # ingest order
        assert [a.waiting for a in stream] == [True] * 10 + [False] * 240
        assert len(ShadowAnswers(store).paired_audits("zip", "1", "2")) == 240  # the decided ones
        decision = decide_promotion(store, registry, "zip", "2", config=config, look=1)
        assert not decision.promote and decision.code == "too_few_pairs"
        (stratum,) = decision.strata
        assert (stratum["n"], stratum["not_counted"]) == (0, 250) and "250 later pairs not counted" in decision.reason
        for _ in range(10):  # bob decides them: live right, so the candidate's other answer is wrong
            claim = store.claim(bob, 60, time.time())
            store.record_verdict(store.new_verdict_id(), claim.item_id, bob, VerdictKind.ACCEPT, None, time.time())
        decision = decide_promotion(store, registry, "zip", "2", config=config, look=2)
        assert not decision.promote and decision.code == "worse"
        (stratum,) = decision.strata
        assert (stratum["n"], stratum["candidate_only_wrong"], stratum["waiting"]) == (250, 10, 0)


def test_compared_traffic_judges_a_candidate_without_waiting_for_audits_in_every_route(tmp_path):
    """A shadow that compared its answers with live's makes every request a pair: 297 compared
    requests on which the two agree let the candidate through, where the 3 audited pairs alone
    were far too few; disagreements nobody audited count against it."""
    registry, url = seeded(tmp_path, pairs=3)
    compared = [dataclasses.replace(audit_item(f"t{i}", Route.AUTO, version="1").prediction, model_version="2",
                                    shadow=True, details={"live_reference": {"version": "1", "same_answer": True}})
                for i in range(297)]
    config = PairedGateConfig(margin=0.02, delta=0.05)
    with open_store(url, create=True) as store:
        assert decide_promotion(store, registry, "zip", "2", config=config).code == "too_few_pairs"  # audits only
        ShadowAnswers(store).ingest(compared, time.time())
        decision = decide_promotion(store, registry, "zip", "2", config=config, look=1)
    # the seeded shadow answers of r0..r2 carry no comparison: the traffic stratum holds the 297
    assert decision.promote and decision.code == "not_worse"
    assert [(s["stratum"], s["n"], s["candidate_only_wrong"]) for s in decision.strata] == [("traffic", 297, 0)]
    disagreeing = [dataclasses.replace(p, request_id=f"d{i}", details={"live_reference": {
        "version": "1", "same_answer": False, "output": "54321"}}) for i, p in enumerate(compared[:15])]
    with open_store(url, create=True) as store:
        ShadowAnswers(store).ingest(disagreeing, time.time())
        decision = decide_promotion(store, registry, "zip", "2", config=config, look=1)
    assert not decision.promote
    (stratum,) = decision.strata
    assert stratum["n"] == 312 and stratum["candidate_only_wrong"] == stratum["unaudited_disagreements"] == 15


def test_a_promote_whose_announcement_fails_says_so_and_the_next_one_finishes_it(tmp_path, monkeypatch):
    """Review 2026-12-04: LIVE moved, announcing failed (broker down), nothing was recorded, and a
    second promote answered already_live and never announced: consumers started later served the
    candidate, running ones the old version, with no record of why. Now the failure says LIVE
    moved and is recorded, and the next promote announces (and only that)."""
    from auditstream.errors import BrokerUnavailable
    from auditstream.settings import Settings
    from monitor import promotion

    registry, url = seeded(tmp_path, pairs=60)
    settings = Settings(models_dir=registry.root, store_url=url, state_dir=tmp_path / "state")
    announced = []

    def broker_down(settings, rollout):
        raise BrokerUnavailable("127.0.0.1:1", "nothing answered")

    monkeypatch.setattr(promotion, "announce_rollout", broker_down)
    with pytest.raises(promotion.PromotionIncomplete, match="LIVE of zip names v2, but announcing it .* failed"):
        promotion.promote(settings, "zip", "2", config=PairedGateConfig(margin=0.1))
    assert registry.live_version("zip") == "2"
    last = json.loads((registry.root / "zip" / "2" / PROMOTION_FILE).read_text())["decisions"][-1]
    assert last["live_after"] == "2" and last["announced"] is False and "nothing answered" in last["announce_error"]

    monkeypatch.setattr(promotion, "announce_rollout", lambda settings, rollout: announced.append(rollout))
    again = promotion.promote(settings, "zip", "2", config=PairedGateConfig(margin=0.1))
    assert again.code == "already_live" and [(r.live_version, r.canary_version) for r in announced] == [("2", None)]
    third = promotion.promote(settings, "zip", "2", config=PairedGateConfig(margin=0.1))  # announced: nothing to finish
    assert third.code == "already_live" and len(announced) == 1


@pytest.mark.parametrize("content", [b'{"decisions": [', b'{"decisions": [1]}', b"\xff\xfe", b"[1, 2]"])
def test_a_promotion_history_that_cannot_be_read_stops_promote_before_live_moves(tmp_path, content):
    registry, url = seeded(tmp_path, pairs=60)
    (registry.root / "zip" / "2" / PROMOTION_FILE).write_bytes(content)
    done = cli(registry, url, "--margin", "0.1")
    assert done.returncode == 2 and "promotion history" in done.stderr and "Traceback" not in done.stderr
    assert registry.live_version("zip") == "1"


def test_a_nan_an_older_release_recorded_is_written_back_as_null(tmp_path):
    """An older ``rl promote`` recorded ``"agreement": NaN`` for a shadow that compared nothing;
    appending to that history must leave strict JSON, not carry the NaN on for ever."""
    from monitor.promotion import append_record

    path = tmp_path / PROMOTION_FILE
    path.write_text('{"decisions": [{"kind": "rl_promote", "shadow": {"agreement": NaN, "compared": 0}}]}')
    append_record(path, {"kind": "promote", "rate": float("inf"), "code": "canary"})

    def refuse(name):
        raise AssertionError(f"{name} in the history")
    history = json.loads(path.read_text(), parse_constant=refuse)["decisions"]
    assert history == [{"kind": "rl_promote", "shadow": {"agreement": None, "compared": 0}},
                       {"kind": "promote", "rate": None, "code": "canary"}]
