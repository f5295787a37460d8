"""The overview's version sections through AppTest: candidate vs live (paired audits from the
store, what the gate would decide, the last recorded decision) and the learning curve (every
card's coverage and certified risk, cards without training facts included)."""

from __future__ import annotations

import dataclasses
import json
import time

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.dashboards.conftest import elements, log_in, seed_card_and_history, start_app, texts
from tests.store.store_factories import audit_item

from auditstream.registry import ModelRegistry
from auditstream.wire import Route, VerdictKind
from dashboards.versions import comparison_rows, curve_rows
from store.accounts import Role, User
from store.shadow import ShadowAnswers


def seed_versions(store, tmp_path) -> ModelRegistry:
    """zip v1 (from the shared seed), v2 live, v3 a shadow candidate with 40 paired audits."""
    seed_card_and_history(store, tmp_path)
    registry = ModelRegistry(tmp_path / "models")
    v1 = registry.card("zip", "1")
    for coverage, risk, training in ((0.75, 0.017, {}), (0.9, 0.012, {"verdicts_used": 1200, "base_version": "2"})):
        card = dataclasses.replace(v1, triage=dataclasses.replace(v1.triage, coverage=coverage, certified_risk=risk),
                                   training=training)
        registry.publish(card, b"cards only")
    registry.set_live("zip", "2")
    items = [audit_item(f"r{i}", Route.AUTO_QC, version="2", output="12345") for i in range(40)]
    store.ingest_many(items, time.time())
    ShadowAnswers(store).ingest([dataclasses.replace(i.prediction, model_version="3", shadow=True) for i in items],
                                time.time())
    alice = User("alice", Role.AUDITOR)
    for _ in items:
        claim = store.claim(alice, 60, time.time())
        store.record_verdict(store.new_verdict_id(), claim.item_id, alice, VerdictKind.ACCEPT, None, time.time())
    (registry.root / "zip" / "3" / "promotion.json").write_text(json.dumps({"decisions": [
        {"kind": "paired", "decision": {"code": "too_few_pairs", "reason": "recorded earlier"}}]}))
    (registry.root / "zip" / "2" / "audit-certificate.json").write_text(json.dumps({"certificate": {
        "certified": True, "estimated_coverage": 0.8, "target_risk": 0.02, "delta": 0.05, "n_audited": 640}}))
    (registry.root / "zip" / "3" / "audit-certificate.json").write_text('{"certificate": {"certified": tr')  # torn
    return registry


def test_candidate_vs_live_and_the_learning_curve(store, store_url, tmp_path):
    seed_versions(store, tmp_path)
    at = log_in(start_app(store_url, tmp_path), "vic")
    assert not at.exception
    shown = texts(at)
    assert "Candidate vs live" in [s.value for s in at.subheader] and "Learning curve" in [s.value for s in at.subheader]
    assert "would decide now: **too_few_pairs**" in shown and "more paired audits needed" in shown
    assert "Last recorded decision (paired): too_few_pairs — recorded earlier" in shown
    frames = [d.value for d in at.dataframe]
    paired = next(f for f in frames if "pairs" in f.columns)
    assert paired.to_dict("records")[0]["pairs"] == 40 and paired["candidate wrong, live right"].sum() == 0
    curve = next(f for f in frames if "certified coverage" in f.columns)
    assert curve["version"].tolist() == ["1", "2", "3"] and curve["live"].tolist() == ["", "LIVE", ""]
    assert curve["certified coverage"].tolist() == ["60.00%", "75.00%", "90.00%"]
    assert curve["training"].tolist()[0] == "—" and "verdicts_used" in curve["training"].tolist()[2]
    # v2's certificate from audits beside its card; v1 has none, v3's file is torn: a dash, no error
    assert curve["from audits"].tolist() == ["—", "80.00% at ≤ 2.00% (δ 0.05, 640 audited)", "—"]
    assert len(elements(at, "vega_lite_chart")) == 7  # the overview's six and the learning curve


def solo_candidates_app(store_url: str, models_dir: str) -> None:
    """The app; with ``st.session_state["solo"]`` set, only the overview's candidate fragment runs
    (for model zip) with that User: what its timed rerun does."""
    import streamlit as st

    from dashboards import app, overview
    from dashboards.config import DashboardConfig

    config = DashboardConfig(store_url=store_url, models_dir=models_dir, refresh_s=0.0)
    solo = st.session_state.pop("solo", None)
    if solo is not None:
        overview._live_candidates(app.build_context(config), solo, "zip")
    else:
        app.main(config)


def test_candidate_vs_live_is_a_live_section_that_rechecks_the_account(store, store_url, tmp_path):
    """Candidate vs live was drawn outside the overview's timed fragments, so it never refreshed
    by itself (tests/dashboards/test_browser_session.py shows it does now); its own fragment
    asks the store who the user is first, as the other live sections do."""
    from streamlit.testing.v1 import AppTest

    seed_versions(store, tmp_path)
    at = AppTest.from_function(solo_candidates_app, kwargs={"store_url": store_url,
                                                            "models_dir": str(tmp_path / "models")},
                               default_timeout=60).run()  # fmt: skip
    at = log_in(at, "vic")
    at.session_state["solo"] = User("vic", Role.VIEWER)
    at = at.run()
    assert [s.value for s in at.subheader] == ["Candidate vs live"]  # drawn by the fragment alone
    assert "would decide now: **too_few_pairs**" in texts(at) and not at.exception
    store.accounts.set_role("vic", "viewer", disabled=True)  # disabled while the page refreshes itself
    at.session_state["solo"] = User("vic", Role.VIEWER)
    at = at.run()
    assert "no enabled account" in texts(at) and "Candidate vs live" not in [s.value for s in at.subheader]


def test_rows_are_what_the_decision_and_the_cards_say(tmp_path):
    decision = {"strata": [{"stratum": "HUMAN", "n": 10, "candidate_only_wrong": 1, "live_only_wrong": 3,
                            "both_wrong": 2, "upper": 0.123456, "pairs_needed": None}]}
    assert comparison_rows(decision) == [{"pairs of": "HUMAN", "pairs": 10, "candidate wrong, live right": 1,
                                          "of which unaudited disagreements": 0,
                                          "live wrong, candidate right": 3, "both wrong": 2,
                                          "error increase ≤": 0.1235, "pairs needed": None}]
    from auditstream.registry import ModelCard, TriageSpec

    bare = ModelCard("m", "4", "classification", [], [], TriageSpec(0.5))  # an uncertified card: nothing to draw
    assert curve_rows([bare]) == []


def test_the_learning_curve_draws_the_audits_certificate_where_there_is_one():
    from auditstream.registry import ModelCard, TriageSpec

    card = ModelCard("m", "4", "classification", [], [], TriageSpec(0.5, coverage=0.6, certified_risk=0.02))
    cert = {"certified": True, "coverage": 0.85, "risk": 0.02, "delta": 0.05, "audited": 300}
    measures = {r["measure"]: r["value"] for r in curve_rows([card], {"4": cert})}
    assert measures["coverage certified from audits"] == 0.85 and measures["certified coverage"] == 0.6
    assert "coverage certified from audits" not in {r["measure"] for r in curve_rows([card], {"4": None})}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(
    st.text(max_size=80),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                 lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                 max_leaves=12).map(lambda v: json.dumps({"certificate": v})),
    st.fixed_dictionaries({k: st.one_of(st.none(), st.booleans(), st.floats(), st.integers(), st.text(max_size=4))
                           for k in ("certified", "estimated_coverage", "target_risk", "delta", "n_audited")})
    .map(lambda c: json.dumps({"certificate": c}))))
@example(text='{"certificate": {"certified": true, "estimated_coverage": 0.5, "target_risk": 0.1, "delta": 0.05, '
              '"n_audited": Infinity}}')
@example(text='[1, 2]')
def test_any_audit_certificate_file_reads_as_one_or_as_none(tmp_path, text):
    """Whatever the file beside a version holds, the page gets None or a well-formed certificate."""
    from types import SimpleNamespace

    from dashboards.versions import audit_certificate, version_row

    (tmp_path / "m" / "1").mkdir(parents=True, exist_ok=True)
    (tmp_path / "m" / "1" / "audit-certificate.json").write_text(text)
    found = audit_certificate(SimpleNamespace(registry=SimpleNamespace(root=tmp_path)), "m", "1")
    if found is not None:
        assert isinstance(found["certified"], bool) and found["audited"] >= 0
        assert all(0.0 <= found[k] <= 1.0 for k in ("coverage", "risk", "delta"))
    from auditstream.registry import ModelCard, TriageSpec

    version_row(ModelCard("m", "1", "classification", [], [], TriageSpec(0.5)), None, found)  # renders


def test_a_promotion_history_that_cannot_be_read_is_one_warning_and_the_page_stands(store, store_url, tmp_path):
    registry = seed_versions(store, tmp_path)
    (registry.root / "zip" / "3" / "promotion.json").write_bytes(b'{"decisions": [')  # torn by a crash
    at = log_in(start_app(store_url, tmp_path), "vic")
    assert not at.exception
    assert any("promotion history cannot be read" in w.value for w in at.warning)
    assert "Learning curve" in [s.value for s in at.subheader]
