"""A store outage in the dashboard (AppTest): every database call raises ``StoreUnavailable`` (the
pooled connection is what a dead server or an unreadable file fails at). The page shows one
message instead of Streamlit's error, the open item and what was typed stay, the background
lease keeper says the same, and everything works again once the store is back."""

from __future__ import annotations

import time
from contextlib import contextmanager

import pytest
from tests.dashboards.conftest import items_by_task, log_in, start_app

from auditstream.wire import VerdictKind
from dashboards import outage, workbench
from store.backend import Database, StoreUnavailable


@pytest.fixture
def outage_switch(monkeypatch):
    """Call it to take the store down (every connection refused), again to bring it back."""
    real = Database._connection
    down = {"on": False}

    @contextmanager
    def connection(self):
        if down["on"]:
            raise StoreUnavailable(self.url, "OperationalError: connection refused")
        with real(self) as cx:
            yield cx

    monkeypatch.setattr(Database, "_connection", connection)

    def switch(on: bool) -> None:
        down["on"] = on

    return switch


def messages(at) -> list[str]:
    return [e.value for e in at.error if e.value in (outage.STORE_DOWN_TEXT, outage.SIGN_IN_DOWN_TEXT)]


def unsent(at) -> list[str]:
    return [w.value for w in at.warning if "not recorded" in w.value]


def test_a_submit_while_the_store_is_down_keeps_the_form_and_records_after(store, store_url, tmp_path,
                                                                           outage_switch):  # fmt: skip
    store.ingest(items_by_task()["sequence"], time.time())
    at = log_in(start_app(store_url, tmp_path), "alice")
    at.button(key="next").click()
    at = at.run()
    claim, verdict_id = at.session_state[workbench.CLAIM], at.session_state[workbench.VERDICT_ID]
    at.text_input(key=f"answer-{verdict_id}").input("02739")
    outage_switch(True)
    at.button[0].click()  # Submit answer: the session check, the renewal and the write all fail
    at = at.run()
    assert not at.exception
    assert len(messages(at)) == 1  # one message, not Streamlit's error page
    assert at.session_state[workbench.CLAIM].item_id == claim.item_id  # the item stays open here
    assert at.text_input(key=f"answer-{verdict_id}").value == "02739"  # and what was typed
    at = at.run()  # another rerun while down (the retry's): still the same
    assert not at.exception and len(messages(at)) == 1
    assert at.text_input(key=f"answer-{verdict_id}").value == "02739"
    outage_switch(False)
    assert store.verdicts() == []  # nothing was recorded
    at = at.run()  # the retry finds the store back and reruns the app
    assert not at.exception and not messages(at)
    assert len(unsent(at)) == 1  # the page says the answer still has to be submitted
    at.button[0].click()
    at = at.run()
    assert not unsent(at)
    [verdict] = store.verdicts()
    assert (verdict.verdict_id, verdict.kind, verdict.corrected_output) == (verdict_id, VerdictKind.CORRECT, "02739")


def test_the_overview_and_the_login_page_say_the_store_is_down(store, store_url, tmp_path, outage_switch):
    at = log_in(start_app(store_url, tmp_path), "vic")
    outage_switch(True)
    at = at.run()
    assert not at.exception and len(messages(at)) == 1
    fresh = start_app(store_url, tmp_path)  # a new visitor: the login form, nothing else needs the store
    assert not fresh.exception and len(fresh.text_input) == 2
    fresh = log_in(fresh, "alice")
    assert not fresh.exception and messages(fresh) == [outage.SIGN_IN_DOWN_TEXT]  # not "nothing was recorded"
    assert fresh.text_input[0].value == "alice"  # the form keeps what was typed
    assert "Workbench" not in [t.value for t in fresh.title]  # nobody is let in without the store
    outage_switch(False)
    at = at.run()
    assert not at.exception and not messages(at) and [t.value for t in at.title] == ["Overview"]


def lease_keeper_app(store_url: str, models_dir: str) -> None:
    """The app; with ``st.session_state["solo"]`` set, only the workbench's lease keeper runs (as
    its timed fragment rerun does)."""
    import streamlit as st

    from dashboards import app, workbench
    from dashboards.config import DashboardConfig

    config = DashboardConfig(store_url=store_url, models_dir=models_dir, refresh_s=0.0)
    solo = st.session_state.pop("solo", None)
    if solo is not None:
        workbench.keep_lease(app.build_context(config), *solo)
    else:
        app.main(config)


def test_the_background_lease_keeper_says_the_store_is_down(store, store_url, tmp_path, outage_switch):
    from streamlit.testing.v1 import AppTest

    from store.accounts import Role, User

    store.ingest(items_by_task()["sequence"], time.time())
    at = AppTest.from_function(lease_keeper_app, kwargs={"store_url": store_url, "models_dir": str(tmp_path / "m")},
                               default_timeout=60).run()  # fmt: skip
    at = log_in(at, "alice")
    at.button(key="next").click()
    at = at.run()
    claim = at.session_state[workbench.CLAIM]
    outage_switch(True)
    at.session_state["solo"] = (User("alice", Role.AUDITOR), claim)
    at = at.run()
    assert not at.exception and len(messages(at)) == 1
    outage_switch(False)
    at.session_state["solo"] = (User("alice", Role.AUDITOR), claim)
    at = at.run()
    assert not at.exception and not messages(at)
    assert store.item(claim.item_id).lease_owner == "alice"
