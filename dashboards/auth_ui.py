"""Who is using the dashboard: the login form, optional single sign-on, and the role gate.

Every page render starts with :func:`current_user`. It returns the signed-in user *as the store
knows them right now* (the session keeps only the name, the role is read again on every render),
or draws the login form and stops the script, so an unauthenticated visitor's session never
reaches code that reads data. Writes are checked once more inside the store's transaction
(``monitor.accounts.check_actor``); the checks here only decide what to show.

Local accounts live in the audit store (slow salted hashes, ``monitor/accounts.py``). Single
sign-on goes through Streamlit's ``st.login`` when an ``[auth]`` section is configured in
``.streamlit/secrets.toml``; the identity provider proves *who* someone is, and the store's
accounts table still decides their role (an unknown identity gets no access).
"""

from __future__ import annotations

import time
from typing import Any

import streamlit as st

from monitor.accounts import Role, User

SESSION_USER = "auth_user"  # the signed-in name; the role is looked up on every render
SESSION_FAILURES = "auth_failures"
MAX_FAILURES = 5  # then the session must wait LOCKOUT_S before the next attempt
LOCKOUT_S = 30.0


def oidc_configured() -> bool:
    """Whether ``[auth]`` is set in Streamlit's secrets (``st.login`` needs it)."""
    try:
        return "auth" in st.secrets
    except FileNotFoundError:  # no secrets.toml anywhere (StreamlitSecretNotFoundError is one)
        return False


def _oidc_identity() -> str | None:
    """The signed-in identity provider user's email (or subject), if any."""
    if not oidc_configured() or not st.user.is_logged_in:
        return None
    return str(st.user.get("email") or st.user.get("sub") or "") or None


def current_user(accounts: Any) -> User:
    """The signed-in user, or the login form and ``st.stop()``. ``accounts``: ``store.accounts``."""
    name = st.session_state.get(SESSION_USER)
    if name is None:
        name = _oidc_identity()
    if name is not None:
        user = accounts.get(name)
        if user is not None:
            st.session_state[SESSION_USER] = user.name
            return user
        # deleted or disabled since signing in, or an SSO identity with no account here
        st.session_state.pop(SESSION_USER, None)
        st.error(f"{name!r} has no enabled account on this dashboard; ask an admin to add it "
                 f"(auditstream users add NAME --role auditor).")
        if oidc_configured() and st.user.is_logged_in:
            st.button("Log out of single sign-on", on_click=st.logout)
        st.stop()
    login_ui(accounts)
    st.stop()
    raise AssertionError("st.stop() returned")  # pragma: no cover - st.stop raises


def login_ui(accounts: Any) -> None:
    """The login form (Tab moves name → password → Log in, Enter submits)."""
    left, middle, right = st.columns([1, 1.2, 1])
    with middle:
        st.title("auditstream")
        st.caption("Audit dashboard — sign in to continue")
        failures, last = st.session_state.get(SESSION_FAILURES, (0, 0.0))
        wait_s = LOCKOUT_S - (time.time() - last) if failures >= MAX_FAILURES else 0.0
        with st.form("login", enter_to_submit=True):
            name = st.text_input("User name", autocomplete="username")
            password = st.text_input("Password", type="password", autocomplete="current-password")
            submitted = st.form_submit_button("Log in", type="primary", width="stretch")
        if submitted:
            if wait_s > 0:
                st.error(f"Too many failed attempts; wait {wait_s:.0f} s and try again.")
                return
            user = accounts.verify_password(name.strip(), password) if name.strip() and password else None
            if user is None:
                # One message for unknown names and wrong passwords: it must not tell which names exist.
                st.session_state[SESSION_FAILURES] = (failures + 1 if failures < MAX_FAILURES else 1, time.time())
                st.error("Wrong user name or password.")
                return
            st.session_state.pop(SESSION_FAILURES, None)
            st.session_state[SESSION_USER] = user.name
            st.rerun()
        if oidc_configured():
            st.divider()
            st.button("Log in with single sign-on", on_click=st.login, width="stretch")


def logout() -> None:
    """Forget the session's user (and its single sign-on cookie, if any)."""
    for key in list(st.session_state.keys()):
        del st.session_state[key]
    if oidc_configured() and st.user.is_logged_in:
        st.logout()


def user_badge_ui(user: User) -> bool:
    """Who is signed in, with a log-out button; returns True when it was pressed."""
    st.sidebar.markdown(f"**{user.name}** · {user.role.value}")
    return st.sidebar.button("Log out", key="logout")


def can_write(user: User) -> bool:
    return user.role in (Role.AUDITOR, Role.ADMIN)
