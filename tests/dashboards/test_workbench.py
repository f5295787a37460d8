"""The workbench through Streamlit's AppTest against a seeded temp SQLite store: login, claims
and leases, every task kind's rendering and editor, verdicts (once under a double submit),
blind QC, skip, and role enforcement on write."""

from __future__ import annotations

import time

import pytest
from tests.dashboards.conftest import PASSWORD, elements, items_by_task, log_in, prediction, start_app, texts

from auditstream.errors import PermissionDenied
from auditstream.wire import AuditItem, Route, VerdictKind
from dashboards import workbench
from store.accounts import Role, User


def seed(store, *tasks: str) -> dict[str, int]:
    items = items_by_task()
    chosen = [items[t] for t in tasks or items]
    store.ingest_many(chosen, time.time())
    return {i.task: i.item_id for i in store.items(limit=100)}


def claim_model(at, model: str):
    at.sidebar.selectbox(key="wb_model").select(model)
    at.run()
    at.button(key="next").click()
    return at.run()


def test_login_required_and_no_data_before(store, store_url, tmp_path):
    seed(store, "sequence")
    at = start_app(store_url, tmp_path)
    assert not at.exception
    shown = texts(at)
    assert "sign in" in shown
    assert "waiting" not in shown and "zip" not in shown  # no queue, no items, no model names
    assert not elements(at, "image") and not elements(at, "metric") and not elements(at, "dataframe")
    at = log_in(at, "alice", "wrong password")
    assert "Wrong user name or password." in texts(at)
    assert "Workbench" not in [t.value for t in at.title]
    at = log_in(at, "nobody", PASSWORD)
    assert "Wrong user name or password." in texts(at)  # same message: names are not revealed
    at = log_in(at, "alice")
    assert [t.value for t in at.title] == ["Workbench"]
    assert "1** item waiting" in texts(at)


def test_refuses_to_run_without_xsrf_protection(store, store_url, tmp_path):
    from streamlit import config

    config.set_option("server.enableXsrfProtection", False)
    try:
        at = start_app(store_url, tmp_path)
    finally:
        config.set_option("server.enableXsrfProtection", True)
    assert "refuses to run with XSRF protection turned off" in texts(at)
    assert not at.text_input  # no login form either


def test_correct_a_zip_and_validation_keeps_the_input(store, store_url, tmp_path):
    ids = seed(store, "sequence")
    at = log_in(start_app(store_url, tmp_path), "alice")
    at = claim_model(at, "zip")
    assert ":orange-badge[:material/hourglass_top: Deferred" in texts(at)
    # no lease expiry drawn once (the page renews the lease, so it went stale): what holds instead
    assert any("yours while this page is open" in c.value for c in at.caption)
    zip_field = at.text_input(key=f"answer-{at.session_state[workbench.VERDICT_ID]}")
    assert zip_field.value == "02139"  # pre-filled with the model's answer
    zip_field.input("0273")
    at.button[0].click()  # "Submit answer" (the form's first button: what Enter presses)
    at = at.run()
    assert "a ZIP code is exactly 5 digits" in texts(at)
    assert store.verdicts() == []
    assert at.text_input(key=f"answer-{at.session_state[workbench.VERDICT_ID]}").value == "0273"  # nothing lost
    at.text_input(key=f"answer-{at.session_state[workbench.VERDICT_ID]}").input("02739")
    at.button[0].click()
    at = at.run()
    [verdict] = store.verdicts()
    assert (verdict.item_id, verdict.auditor, verdict.kind, verdict.corrected_output) == (ids["sequence"], "alice",
                                                                                         VerdictKind.CORRECT, "02739")
    assert "corrected → 02739" in texts(at)
    assert store.item(ids["sequence"]).state == "done"


def test_double_submit_records_one_verdict(store, store_url, tmp_path):
    ids = seed(store, "sequence", "classification")
    at = log_in(start_app(store_url, tmp_path), "alice")
    at = claim_model(at, "zip")
    claim, verdict_id = at.session_state[workbench.CLAIM], at.session_state[workbench.VERDICT_ID]
    at.button[0].click()  # accept as is
    at = at.run()
    assert len(store.verdicts()) == 1
    # The second click of a double click: its rerun interrupted the first run after the write,
    # so the session still holds the first form (same claim, same verdict id).
    at.session_state[workbench.CLAIM] = claim
    at.session_state[workbench.VERDICT_ID] = verdict_id
    at.sidebar.selectbox(key="wb_model").select("All models")  # the emptied zip filter stays picked
    at = at.run()
    assert "already recorded; kept once" in texts(at)
    [verdict] = store.verdicts()
    assert (verdict.verdict_id, verdict.item_id, verdict.kind) == (verdict_id, ids["sequence"], VerdictKind.ACCEPT)
    assert at.session_state[workbench.CLAIM].item_id == ids["classification"]  # moved on


def test_the_write_path_is_idempotent_on_the_verdict_id(store, tmp_path):
    from auditstream.registry import ModelRegistry
    from dashboards.config import DashboardConfig
    from dashboards.context import DashboardContext
    from store.qc_history import QCHistory

    ids = seed(store, "sequence")
    ctx = DashboardContext(DashboardConfig(), store, ModelRegistry(tmp_path / "models"), QCHistory(store))
    alice = User("alice", Role.AUDITOR)
    claim = store.claim(alice, 60.0, time.time())
    verdict_id = store.new_verdict_id()
    first = workbench.submit_verdict(ctx, alice, claim, verdict_id, VerdictKind.CORRECT, "02739")
    second = workbench.submit_verdict(ctx, alice, claim, verdict_id, VerdictKind.CORRECT, "02739")
    assert (first.recorded, second.recorded) == (True, False)
    assert [v.verdict_id for v in store.verdicts(item_id=ids["sequence"])] == [verdict_id]
    with pytest.raises(PermissionDenied):
        workbench.submit_verdict(ctx, User("vic", Role.VIEWER), claim, store.new_verdict_id(), VerdictKind.ACCEPT, None)


def test_viewer_cannot_write(store, store_url, tmp_path):
    ids = seed(store, "sequence")
    at = log_in(start_app(store_url, tmp_path), "vic")
    assert [t.value for t in at.title] == ["Overview"]
    assert "Next item" not in [b.label for b in at.button]
    # The write path itself refuses, on the page's side and inside the store's transaction.
    viewer = User("vic", Role.VIEWER)
    alice = User("alice", Role.AUDITOR)
    claim = store.claim(alice, 60.0, time.time())
    with pytest.raises(PermissionDenied):
        workbench.require_role(viewer, *workbench.WRITERS, action="record verdicts")
    with pytest.raises(PermissionDenied):
        store.record_verdict(store.new_verdict_id(), ids["sequence"], viewer, VerdictKind.ACCEPT, None, time.time())
    with pytest.raises(PermissionDenied):  # a forged session that claims to be an auditor
        store.record_verdict(store.new_verdict_id(), ids["sequence"], User("vic", Role.AUDITOR), VerdictKind.ACCEPT,
                             None, time.time())  # fmt: skip
    with pytest.raises(PermissionDenied):
        store.claim(viewer, 60.0, time.time())
    assert store.verdicts() == [] and claim is not None


def test_demoted_user_loses_the_workbench_at_once(store, store_url, tmp_path):
    seed(store, "sequence")
    at = log_in(start_app(store_url, tmp_path), "bob")
    assert [t.value for t in at.title] == ["Workbench"]
    store.accounts.set_role("bob", "viewer")
    at = at.run()
    assert [t.value for t in at.title] == ["Overview"]
    store.accounts.set_role("bob", "auditor", disabled=True)
    at = at.run()
    assert "no enabled account" in texts(at) and not at.title


@pytest.mark.parametrize(
    ("task", "model", "editor", "expected"),
    [
        ("sequence", "zip", "text_input", ["02139", "02739", "99%"]),
        ("classification", "digits", "radio", ["1", "Runner-up answers"]),
        ("policy", "cartpole", "radio", ["push right", "Action probabilities · state value +21.50"]),
        ("caption", "captioner", "text_area", ["a blue square on white"]),
        ("detection", "detector", "data_editor", ["1 box: car"]),
    ],
)
def test_each_task_kind_renders(store, store_url, tmp_path, task, model, editor, expected):
    seed(store)
    at = log_in(start_app(store_url, tmp_path), "alice")
    at = claim_model(at, model)
    assert not at.exception
    assert at.session_state[workbench.CLAIM].item.task == task
    [image] = elements(at, "image")
    assert image.proto.imgs[0].caption  # the input picture, with what it was made from
    assert len(getattr(at, editor)) >= 1  # the task's answer editor
    shown = texts(at) + str([d.value for d in at.dataframe]) + str([r.options for r in at.radio])
    for text in expected:
        assert text.lower() in shown.lower(), text
    if task in ("classification", "policy"):
        picker = at.radio(key=f"answer-{at.session_state[workbench.VERDICT_ID]}")
        assert picker.value == (1 if task == "policy" else 1)  # the model's answer is pre-selected
        picker.set_value(0)
        at.button[0].click()
        at = at.run()
        [verdict] = store.verdicts()
        assert verdict.kind is VerdictKind.CORRECT
        assert verdict.corrected_output == (0 if task == "policy" else "0")  # in the model's own form


def test_blind_qc_hides_the_answer_until_submitted(store, store_url, tmp_path):
    qc = AuditItem(prediction("zip-qc", "zip", "sequence", "90210", 0.97,
                              {"char_confidences": [0.99] * 5}, route=Route.AUTO_QC), items_by_task()["sequence"].input)
    store.ingest(qc, time.time())
    at = log_in(start_app(store_url, tmp_path), "alice")
    at = claim_model(at, "zip")
    shown = texts(at)
    assert "QC sample" in shown and "Blind: answer first" in shown
    assert "90210" not in shown and not [m for m in at.metric if m.label == "Model's answer"]
    field = at.text_input(key=f"answer-{at.session_state[workbench.VERDICT_ID]}")
    assert field.value == ""
    field.input("90210")
    at.button[0].click()
    at = at.run()
    [verdict] = store.verdicts()
    assert verdict.kind is VerdictKind.ACCEPT
    assert "you agreed with the model's 90210" in texts(at)


def test_skip_gives_the_item_back_and_reject_records(store, store_url, tmp_path):
    ids = seed(store, "sequence", "classification")
    at = log_in(start_app(store_url, tmp_path), "alice")
    at.button(key="next").click()
    at = at.run()
    first = at.session_state[workbench.CLAIM].item_id
    at.button(key=f"skip-{at.session_state[workbench.VERDICT_ID]}").click()
    at = at.run()
    assert store.item(first).lease_owner is None  # released
    second = at.session_state[workbench.CLAIM].item_id  # and the next one claimed
    assert second != first
    at.button[1].click()  # "Reject — no valid answer"
    at = at.run()
    kinds = {v.item_id: v.kind for v in store.verdicts()}
    assert kinds == {first: VerdictKind.SKIP, second: VerdictKind.REJECT}
    assert set(kinds) == set(ids.values())


def test_lease_renewed_while_open_and_a_lost_lease_is_dropped(store, store_url, tmp_path):
    ids = seed(store, "sequence")
    at = log_in(start_app(store_url, tmp_path), "alice")
    at = claim_model(at, "zip")
    first_expiry = store.item(ids["sequence"]).lease_expires_s
    at = at.run()  # any interaction renews
    assert store.item(ids["sequence"]).lease_expires_s >= first_expiry
    # Much later (alice walked away): her lease has run out and bob claims the item.
    bob = User("bob", Role.AUDITOR)
    assert store.claim(bob, 60.0, time.time() + 3600.0) is not None
    at = at.run()
    assert "ran out and another auditor has it now; nothing was recorded" in texts(at)
    assert "went back to the queue" not in texts(at)
    assert workbench.CLAIM not in at.session_state
    assert store.item(ids["sequence"]).lease_owner == "bob"
    assert store.verdicts() == []


def expire_lease(store, item_id: int, owner: str | None = "alice") -> None:
    """The lease ran out while the auditor typed (a sleeping laptop): what /tmp/review-ui's
    lease_sql.py does to the row."""
    with store._db.write() as cur:
        cur.run("UPDATE {p}items SET lease_owner = ?, lease_expires_s = ? WHERE id = ?",
                (owner, time.time() - 1.0, item_id))


@pytest.mark.parametrize("owner", ["alice", None])
def test_an_answer_typed_across_an_expired_lease_is_recorded(store, store_url, tmp_path, owner):
    """The lease ran out but nobody took the item: the submit takes it again and records the
    typed answer (no lost work), instead of dropping it "back to the queue"."""
    ids = seed(store, "sequence", "classification")
    at = log_in(start_app(store_url, tmp_path), "alice")
    at = claim_model(at, "zip")
    verdict_id = at.session_state[workbench.VERDICT_ID]
    at.text_input(key=f"answer-{verdict_id}").input("02739")
    expire_lease(store, ids["sequence"], owner)
    at.button[0].click()  # Submit answer
    at = at.run()
    assert not at.exception
    [verdict] = store.verdicts()
    assert (verdict.verdict_id, verdict.item_id, verdict.auditor, verdict.kind, verdict.corrected_output) == (
        verdict_id, ids["sequence"], "alice", VerdictKind.CORRECT, "02739")
    assert "corrected → 02739" in texts(at) and "ran out" not in texts(at)


def test_an_expired_lease_is_taken_again_by_the_background_renewal(store, store_url, tmp_path):
    ids = seed(store, "sequence")
    at = log_in(start_app(store_url, tmp_path), "alice")
    at = claim_model(at, "zip")
    expire_lease(store, ids["sequence"])
    claim = at.session_state[workbench.CLAIM]
    from dashboards.config import DashboardConfig
    from dashboards.context import DashboardContext
    from auditstream.registry import ModelRegistry
    from store.qc_history import QCHistory

    ctx = DashboardContext(DashboardConfig(), store, ModelRegistry(tmp_path / "models"), QCHistory(store))
    alice = User("alice", Role.AUDITOR)
    again, why = workbench.recover_lease(ctx, alice, claim)
    assert again is not None and again.item_id == ids["sequence"] and why == ""
    assert store.item(ids["sequence"]).lease_owner == "alice"
    assert store.item(ids["sequence"]).lease_expires_s > time.time() + 30
    # Someone else holds it now: not taken from them, and the reason says so.
    expire_lease(store, ids["sequence"])
    assert store.claim(User("bob", Role.AUDITOR), 60.0, time.time()) is not None
    assert workbench.recover_lease(ctx, alice, claim) == (None, "another auditor has it now")
    assert store.item(ids["sequence"]).lease_owner == "bob"


@pytest.mark.parametrize("lease_s", [10.0, 12.0, 14.9, 15.0, 300.0, 86_400.0])
def test_a_missed_background_renewal_still_leaves_the_lease_live(lease_s):
    """For every --lease-s the dashboard accepts, the renewal after a missed one still comes
    before the lease ends. The interval was max(5, lease_s / 3): a 10 s lease was renewed every
    5 s, so missing one renewal lost it."""
    from dashboards.config import MAX_LEASE_S, MIN_LEASE_S

    assert MIN_LEASE_S <= lease_s <= MAX_LEASE_S
    every = workbench.renew_every_s(lease_s)
    assert 0 < every and 2 * every < lease_s


def test_model_filter_keeps_a_choice_whose_queue_emptied(store, store_url, tmp_path):
    seed(store, "sequence", "classification")  # neither model has a registry card here
    at = log_in(start_app(store_url, tmp_path), "alice")
    at = claim_model(at, "zip")
    at.button[0].click()  # accept the only zip item: the zip queue is empty now
    at = at.run()
    box = at.sidebar.selectbox(key="wb_model")
    assert box.value == "zip" and "zip" in box.options  # not silently "All models"
    assert "**0** items waiting" in texts(at)
    at.button(key="next").click()
    at = at.run()
    assert workbench.CLAIM not in at.session_state or at.session_state[workbench.CLAIM] is None  # no digits item


def test_model_list_does_not_aggregate_the_verdict_history(store, store_url, tmp_path, monkeypatch):
    from store import AuditStore

    seed(store, "sequence", "classification")
    calls = []
    original = AuditStore.store_stats
    monkeypatch.setattr(AuditStore, "store_stats", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    at = log_in(start_app(store_url, tmp_path), "alice")
    assert {"zip", "digits"} <= set(at.sidebar.selectbox(key="wb_model").options)
    at = claim_model(at, "zip")
    assert not at.exception and calls == []


def test_no_other_page_while_an_item_is_open_and_put_back_offers_it_again(store, store_url, tmp_path, monkeypatch):
    """The verdict form sends what was typed only on submit: a visit to the Overview dropped it and
    the form came back with the model's answer, so Enter recorded an accept (review b1). While an
    item is open the Overview is not offered; "Put this item back" releases it and offers it again."""
    import streamlit as st

    offered: list[list[str]] = []
    navigation = st.navigation
    monkeypatch.setattr(st, "navigation", lambda pages, **kw: offered.append([p.title for p in pages])
                        or navigation(pages, **kw))  # fmt: skip
    seed(store, "sequence")
    at = log_in(start_app(store_url, tmp_path), "alice")
    assert offered[-1] == ["Workbench", "Overview"]
    at = claim_model(at, "zip")
    assert offered[-1] == ["Workbench"]  # the item is open: nowhere to lose the typed answer
    at.text_input(key=f"answer-{at.session_state[workbench.VERDICT_ID]}").input("02739")
    at.button[0].click()
    at = at.run()
    [verdict] = store.verdicts()
    assert (verdict.kind, verdict.corrected_output) == (VerdictKind.CORRECT, "02739")
    # Put back: released at once, no verdict, the Overview is offered again
    seed(store, "classification")
    at = claim_model(at, "All models")
    item_id = at.session_state[workbench.CLAIM].item_id
    assert offered[-1] == ["Workbench"] and store.item(item_id).lease_owner == "alice"
    at.sidebar.button(key="wb_put_back").click()
    at = at.run()
    assert store.item(item_id).lease_owner is None and len(store.verdicts()) == 1
    assert offered[-1] == ["Workbench", "Overview"] and at.session_state.get(workbench.CLAIM) is None


def test_logging_out_gives_the_open_item_back_at_once(store, store_url, tmp_path):
    ids = seed(store, "sequence")
    at = log_in(start_app(store_url, tmp_path), "alice")
    at = claim_model(at, "zip")
    assert store.item(ids["sequence"]).lease_owner == "alice"
    at.sidebar.button(key="logout").click()
    at = at.run()
    assert "sign in" in texts(at)
    item = store.item(ids["sequence"])
    assert (item.lease_owner, item.lease_expires_s) == (None, None) and store.verdicts() == []


def test_the_queue_line_says_how_many_items_next_item_can_give_you(store, store_url, tmp_path):
    """It counted items the auditor can never get (review r1): one she skipped read "1 item waiting"
    and "Next item" then found nothing."""
    seed(store, "sequence")
    at = log_in(start_app(store_url, tmp_path), "alice")
    assert "**1** item waiting for these filters." in texts(at)
    at.button(key="next").click()
    at = at.run()
    at.button(key=f"skip-{at.session_state[workbench.VERDICT_ID]}").click()
    at = at.run()
    assert "**1** item waiting for these filters, **0** of them available to you" in texts(at)
    bob = User("bob", Role.AUDITOR)
    store.ingest(items_by_task()["classification"], time.time())
    assert store.available_depth("alice", time.time()) == 1
    store.claim(bob, 300.0, time.time(), model="digits")  # held by another auditor: not hers either
    assert store.available_depth("alice", time.time()) == 0 and store.queue_depth() == 2


def test_idle_limit_rule_and_option():
    from dashboards.config import DashboardConfig, config_from_argv
    from auditstream.errors import ConfigError

    assert DashboardConfig().idle_s == 900.0  # 15 min
    assert workbench.idle_too_long(900.0, 1000.0, 1900.0) and not workbench.idle_too_long(900.0, 1000.0, 1899.0)
    assert not workbench.idle_too_long(0.0, 0.0, 1e9) and not workbench.idle_too_long(900.0, None, 1e9)
    assert config_from_argv(["--idle-s=60"]).idle_s == 60.0
    with pytest.raises(ConfigError, match="idle-s"):
        DashboardConfig(idle_s=-1.0)
