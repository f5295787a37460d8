"""What the dashboard does while the audit store cannot be reached.

A store outage (the database server down, its file unreadable: :class:`store.backend.StoreUnavailable`,
or a connection that broke mid-query) must not replace the page with Streamlit's generic error nor
lose what an auditor typed. Every place that talks to the store on a rerun catches it
(:func:`is_store_down`) and shows one message, :data:`STORE_DOWN_TEXT`, instead of what it could not
get; the workbench keeps the open item and its form (the claim is in the session, the typed answer in
the form's widgets), and a small fragment retries every :data:`RETRY_S` seconds and reruns the app
once the store answers again.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable

import streamlit as st

from store.backend import StoreBusy, StoreUnavailable

log = logging.getLogger(__name__)

STORE_DOWN_TEXT = ("The audit store cannot be reached; nothing was recorded. The page checks again every few "
                   "seconds; once the store answers, submit again what you typed.")
SIGN_IN_DOWN_TEXT = "The audit store cannot be reached, so nobody can sign in now; the page checks again every few seconds."
RETRY_S = 5.0
SHOWN = "outage_shown"  # the message was drawn in this full run (main() clears it at the start)
RETRYING = "outage_retrying"  # the retry fragment was registered in this full run


def store_down_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean "the store is unreachable now", not "this request is wrong"."""
    errors: tuple[type[BaseException], ...] = (StoreUnavailable, StoreBusy)
    try:
        import psycopg
    except ImportError:
        return errors
    return (*errors, psycopg.OperationalError, psycopg.InterfaceError)


def is_store_down(e: BaseException) -> bool:
    return isinstance(e, store_down_errors())


def new_run() -> None:
    """Called by ``main()`` first: a full run draws the message at most once."""
    st.session_state[SHOWN] = False
    st.session_state[RETRYING] = False


def store_down_ui(e: BaseException, retry: Callable[[], Any] | None = None, text: str = STORE_DOWN_TEXT) -> None:
    """The one message (once per full run), and with ``retry`` (a cheap store read) a fragment
    that calls it every :data:`RETRY_S` seconds and reruns the whole app when it succeeds."""
    log.warning("audit store unreachable: %s", e)
    if not st.session_state.get(SHOWN):
        st.session_state[SHOWN] = True
        st.error(text)
    if retry is not None and not st.session_state.get(RETRYING):  # a first caller may have had none
        st.session_state[RETRYING] = True
        st.fragment(run_every=RETRY_S)(_retry)(retry)


def _retry(probe: Callable[[], Any]) -> None:
    try:
        probe()
    except Exception as e:  # noqa: BLE001 - anything else is for the rerun to show
        if is_store_down(e):
            return
    st.rerun(scope="app")


def _fragment_run() -> bool:
    """Whether this is a fragment's own rerun (not a full run of the app)."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    return bool(ctx is not None and ctx.fragment_ids_this_run)


def guarded_fragment(draw: Callable[..., None]) -> Callable[..., None]:
    """``draw`` for ``st.fragment``: a store outage in a timed rerun shows the message in the
    fragment's place instead of Streamlit's error; its next timed rerun tries again."""

    @functools.wraps(draw)
    def run(*args: Any, **kwargs: Any) -> None:
        try:
            draw(*args, **kwargs)
        except Exception as e:
            if not is_store_down(e):
                raise
            if _fragment_run():
                log.warning("audit store unreachable: %s", e)
                if not st.session_state.get(SHOWN):  # the page's own message, if drawn, is enough
                    st.error(STORE_DOWN_TEXT)  # in the fragment's place; its next timed rerun retries
            else:
                store_down_ui(e)  # drawn with the page: one message for the page

    return run
