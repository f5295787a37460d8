"""Who is using the dashboard: the login form, optional single sign-on, and the role gate.

Every page render starts with :func:`current_user`. It returns the signed-in user *as the store
knows them right now* (the session keeps the name and the account's credential generation at
sign-in; the role is read again on every render, and a password reset or disabling since ends
the session: ``store.accounts``), or draws the login form and stops the script, so an
unauthenticated visitor's session never reaches code that reads data. A fragment that reruns on
its own (the overview's auto-refresh, the workbench's lease keeper) does not pass through it, so
it calls :func:`recheck` first. Writes are checked once more inside the store's transaction
(``store.accounts.check_actor``); the checks here only decide what to show.

Local accounts live in the audit store (slow salted hashes, ``store/accounts.py``). Single
sign-on goes through Streamlit's ``st.login`` when an ``[auth]`` section is configured in
``.streamlit/secrets.toml``; the identity provider proves *who* someone is, and the store's
accounts table still decides their role (an unknown identity gets no access). An identity maps to
the local account named by its email only when the provider says the email is verified
(``email_verified``): an unverified address is one anybody could have typed in at the provider.

Failed logins are throttled per account in the store (``store.accounts``), not per browser
session: a new session or a new dashboard process sees the same lock.
"""

from __future__ import annotations

import math
from typing import Any

import streamlit as st

from dashboards.markup import md_text
from store.accounts import LoginBusy, LoginThrottled, Role, SignedIn, User

SESSION_USER = "auth_user"  # the signed-in name; the role is looked up on every render
SESSION_GENERATION = "auth_generation"  # the account's credential generation at sign-in (store.accounts)
SESSION_VERIFIED = "auth_verified"  # the User the store last confirmed (kept for a store outage only)


def oidc_configured() -> bool:
    """Whether ``[auth]`` is set in Streamlit's secrets (``st.login`` needs it)."""
    try:
        return "auth" in st.secrets
    except FileNotFoundError:  # no secrets.toml anywhere (StreamlitSecretNotFoundError is one)
        return False


def oidc_account_name(user: Any) -> str | None:
    """The local account an identity provider's user maps to: their email, and only when the
    provider asserts ``email_verified`` (a JSON true, or the string "true" some providers send).
    ``user`` is ``st.user`` (or anything with ``is_logged_in`` and ``get``); None otherwise."""
    if not getattr(user, "is_logged_in", False):
        return None
    email, verified = user.get("email"), user.get("email_verified")
    if not isinstance(email, str) or not email.strip():
        return None
    if verified is not True and not (isinstance(verified, str) and verified.strip().lower() == "true"):
        return None
    return email.strip()


def _oidc_identity() -> str | None:
    """The signed-in identity provider user's verified email, if any."""
    if not oidc_configured() or not st.user.is_logged_in:
        return None
    return oidc_account_name(st.user)


def current_user(accounts: Any) -> User:
    """The signed-in user, or the login form and ``st.stop()``. ``accounts``: ``store.accounts``."""
    ended = None
    name = st.session_state.get(SESSION_USER)
    if name is not None:
        user = signed_in_user(accounts)
        if user is not None:
            st.session_state[SESSION_VERIFIED] = user
            return user
        _forget_session()
        if accounts.get(name) is None:  # deleted or disabled since signing in
            _no_account(name)
        # Enabled, but a newer credential generation: a password reset (or a disabling since
        # undone) ended every session that signed in before it.
        ended = "Your session has ended: the password of this account was changed since you signed in. Sign in again."
    name = _oidc_identity()
    if name is None and oidc_configured() and st.user.is_logged_in:
        st.error("Your identity provider did not confirm a verified email address, so this dashboard cannot "
                 "tell which account is yours. Verify your email there, or sign in with a local account.")
        st.button("Log out of single sign-on", on_click=st.logout)
        st.stop()
    if name is not None:
        signed = accounts.session(name)
        if signed is None:  # an SSO identity with no enabled account here
            _no_account(name)
        _remember(signed)
        return signed.user
    if ended:
        st.warning(ended)
    login_ui(accounts)
    st.stop()
    raise AssertionError("st.stop() returned")  # pragma: no cover - st.stop raises


def _no_account(name: str) -> None:
    st.error(f"{md_text(repr(name))} has no enabled account on this dashboard; ask an admin to add it "
             f"(auditstream users add NAME --role auditor), or to enable it again if it was disabled "
             f"(auditstream users enable NAME).")
    if oidc_configured() and st.user.is_logged_in:
        st.button("Log out of single sign-on", on_click=st.logout)
    st.stop()


def _remember(signed: SignedIn) -> None:
    st.session_state[SESSION_USER] = signed.user.name
    st.session_state[SESSION_GENERATION] = signed.generation
    st.session_state[SESSION_VERIFIED] = signed.user


def last_verified_user() -> User | None:
    """The user the store last confirmed for this session (:func:`current_user`), for the time
    the store cannot be reached; None without a signed-in session."""
    user = st.session_state.get(SESSION_VERIFIED)
    return user if isinstance(user, User) and user.name == st.session_state.get(SESSION_USER) else None


def _forget_session() -> None:
    st.session_state.pop(SESSION_USER, None)
    st.session_state.pop(SESSION_GENERATION, None)
    st.session_state.pop(SESSION_VERIFIED, None)


def signed_in_user(accounts: Any) -> User | None:
    """The session's user as the store knows them now; None without a session, or when its
    account is gone or disabled, or its password was changed since it signed in."""
    name = st.session_state.get(SESSION_USER)
    return None if name is None else accounts.session_user(name, st.session_state.get(SESSION_GENERATION))


def recheck(accounts: Any, user: User) -> None:
    """First thing in a fragment. A fragment reruns alone, with the ``User`` of the last full run
    (``current_user`` does not run again), so an account disabled or demoted since would keep
    its view; when the store's answer differs from ``user``, the whole app reruns instead and
    :func:`current_user` decides."""
    if signed_in_user(accounts) != user:
        st.rerun(scope="app")


def login_ui(accounts: Any) -> None:
    """The login form (Tab moves name → password → Log in, Enter submits)."""
    left, middle, right = st.columns([1, 1.2, 1])
    with middle:
        st.title("auditstream")
        st.caption("Audit dashboard — sign in to continue")
        with st.form("login", enter_to_submit=True):
            name = st.text_input("User name", autocomplete="username")
            password = st.text_input("Password", type="password", autocomplete="current-password")
            submitted = st.form_submit_button("Log in", type="primary", width="stretch")
        if submitted:
            try:
                signed = accounts.sign_in(name.strip(), password) if name.strip() and password else None
            except LoginThrottled as e:  # counted per account in the store: a new session is no way around it
                st.error(f"Too many attempts; try again in {math.ceil(e.retry_after_s)} s.")
                return
            except LoginBusy:  # every password-hash slot taken (store.accounts.SCRYPT_SLOTS); counted too
                st.error("The server is busy checking other logins; try again in a moment.")
                return
            if signed is None:
                # One message for unknown names and wrong passwords: it must not tell which names exist.
                st.error("Wrong user name or password.")
                return
            _remember(signed)
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
    st.sidebar.markdown(f"**{md_text(user.name)}** · {user.role.value}")
    return st.sidebar.button("Log out", key="logout")


def can_write(user: User) -> bool:
    return user.role in (Role.AUDITOR, Role.ADMIN)
