"""Signing in: the failed-login throttle lives in the store (a new browser session does not reset
it), single sign-on maps only verified emails to accounts, and the app builds its settings once."""

from __future__ import annotations

import pytest
from tests.dashboards.conftest import log_in, start_app, texts

from dashboards.auth_ui import oidc_account_name
from store import accounts


def test_lockout_is_per_account_and_survives_a_new_session(store, store_url, tmp_path):
    at = start_app(store_url, tmp_path)
    for _ in range(accounts.MAX_FAILURES - 1):
        at = log_in(at, "alice", "wrong password")
        assert "Wrong user name or password." in texts(at)
    at = log_in(at, "alice", "wrong password")  # the failure that locks
    assert "Too many attempts; try again in 30 s." in texts(at)
    fresh = start_app(store_url, tmp_path)  # a new browser session: nothing in its session state
    fresh = log_in(fresh, "alice")  # even the right password waits
    assert "Too many attempts; try again in" in texts(fresh)
    assert [t.value for t in fresh.title] == ["auditstream"]  # still the login page
    assert store.accounts.login_state("alice")[0] == accounts.MAX_FAILURES
    # The lock is on this account only.
    assert [t.value for t in log_in(start_app(store_url, tmp_path), "bob").title] == ["Workbench"]


class FakeUser(dict):
    """What ``st.user`` offers the mapping: ``is_logged_in`` and ``get`` of the token's claims."""

    def __init__(self, is_logged_in: bool, **claims: object) -> None:
        super().__init__(claims)
        self.is_logged_in = is_logged_in


@pytest.mark.parametrize("user, expected", [
    (FakeUser(True, email="alice@example.org", email_verified=True, sub="1"), "alice@example.org"),
    (FakeUser(True, email=" alice@example.org ", email_verified="true"), "alice@example.org"),  # some IdPs send a string
    (FakeUser(True, email="alice@example.org", email_verified=False, sub="1"), None),
    (FakeUser(True, email="alice@example.org", email_verified="false"), None),
    (FakeUser(True, email="alice@example.org"), None),  # no claim: not verified
    (FakeUser(True, email="alice@example.org", email_verified=1), None),  # only a real true counts
    (FakeUser(True, sub="alice", email_verified=True), None),  # the subject is never an account name
    (FakeUser(True, email="", email_verified=True), None),
    (FakeUser(False, email="alice@example.org", email_verified=True), None),
])  # fmt: skip
def test_single_sign_on_maps_only_a_verified_email(user, expected):
    assert oidc_account_name(user) == expected


def test_settings_are_built_once_per_server_not_per_rerun(store, store_url, tmp_path, monkeypatch):
    from auditstream.settings import Settings
    from dashboards import app

    calls = []
    real = Settings.from_env.__func__

    def counting(cls, *args, **kwargs):
        calls.append(1)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(Settings, "from_env", classmethod(counting))
    app._settings.clear()
    at = start_app(store_url, tmp_path)
    at = log_in(at, "alice")
    at.run()
    assert not at.exception and len(calls) == 1
    app._settings.clear()


def solo_fragment_app(store_url: str, models_dir: str) -> None:
    """The app; with ``st.session_state["solo"]`` set, only the overview's live sections run, with
    that User: what the fragment's timed rerun does (it keeps the User of the last full run)."""
    import streamlit as st

    from dashboards import app, overview
    from dashboards.config import DashboardConfig

    config = DashboardConfig(store_url=store_url, models_dir=models_dir, refresh_s=0.0)
    solo = st.session_state.pop("solo", None)
    if solo is not None:
        overview._live_sections(app.build_context(config), solo)
    else:
        app.main(config)


def test_the_overview_refresh_serves_only_the_account_as_it_is_now(store, store_url, tmp_path):
    from streamlit.testing.v1 import AppTest

    from store.accounts import Role, User

    at = AppTest.from_function(solo_fragment_app, kwargs={"store_url": store_url, "models_dir": str(tmp_path / "m")},
                               default_timeout=60).run()  # fmt: skip
    at = log_in(at, "ada")
    at.session_state["solo"] = User("ada", Role.ADMIN)
    at = at.run()
    assert "No gold item answered yet." in texts(at)  # the admin's gold section, drawn by the fragment alone
    store.accounts.set_role("ada", "viewer")  # demoted while the page refreshes itself
    at.session_state["solo"] = User("ada", Role.ADMIN)
    at = at.run()
    assert "Gold-item scores are shown to admins only." in texts(at) and "No gold item" not in texts(at)
    store.accounts.set_role("ada", "admin", disabled=True)
    at.session_state["solo"] = User("ada", Role.VIEWER)
    at = at.run()
    assert "no enabled account" in texts(at) and "Queue" not in [s.value for s in at.subheader]
    assert "auditstream users enable" in texts(at)  # a disabled account is enabled, not added (refused)


def test_a_login_without_a_free_hash_slot_says_busy_for_any_name(store, store_url, tmp_path, monkeypatch):
    import threading

    accounts._dummy_hash()
    monkeypatch.setattr(accounts, "SCRYPT_WAIT_S", 0.01)
    slots = threading.BoundedSemaphore(accounts.SCRYPT_SLOTS)
    monkeypatch.setattr(accounts, "_scrypt_slots", slots)
    for _ in range(accounts.SCRYPT_SLOTS):  # other sessions' logins hold every slot
        slots.acquire()
    for name in ("alice", "nobody"):
        at = log_in(start_app(store_url, tmp_path), name)
        assert "The server is busy checking other logins; try again in a moment." in texts(at)
        assert [t.value for t in at.title] == ["auditstream"] and not at.exception
    assert store.accounts.login_state("alice") == (1, None)  # counted like a wrong password


def test_a_password_reset_ends_a_live_session_at_its_next_click(store, store_url, tmp_path):
    at = log_in(start_app(store_url, tmp_path), "alice")  # say, the one who stole alice's password
    assert [t.value for t in at.title] == ["Workbench"]
    store.accounts.set_password("alice", "a brand new password")  # the admin's answer
    at = at.run()
    assert [t.value for t in at.title] == ["auditstream"] and "Your session has ended" in texts(at)
    assert not at.sidebar.button  # no log-out button: nobody is signed in
    at = log_in(at, "alice", "a brand new password")
    assert [t.value for t in at.title] == ["Workbench"]


def test_a_password_reset_ends_the_overview_refresh_too(store, store_url, tmp_path):
    from streamlit.testing.v1 import AppTest

    from store.accounts import Role, User

    at = AppTest.from_function(solo_fragment_app, kwargs={"store_url": store_url, "models_dir": str(tmp_path / "m")},
                               default_timeout=60).run()  # fmt: skip
    at = log_in(at, "vic")
    store.accounts.set_password("vic", "a brand new password")
    at.session_state["solo"] = User("vic", Role.VIEWER)  # the refresh's User: unchanged
    at = at.run()
    assert [t.value for t in at.title] == ["auditstream"] and "Your session has ended" in texts(at)
