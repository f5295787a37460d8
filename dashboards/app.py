"""The audit dashboard's entry point: ``streamlit run dashboards/app.py -- [options]``
(``auditstream dashboard`` runs exactly that, with the security options of ``launch.py``).

Every rerun goes the same way: refuse to run without XSRF protection, open the store, find the
signed-in user (or show the login form and stop: no page code runs for an anonymous visitor),
then show the pages this user's role may see — the workbench for auditors and admins, the
overview for everyone signed in. A store that cannot be reached shows one message and retries
(``dashboards/outage.py``) instead of Streamlit's error page.
"""

from __future__ import annotations

import sys

import streamlit as st
from PIL import Image, ImageDraw

from auditstream.registry import ModelRegistry
from auditstream.settings import Settings
from dashboards import auth_ui, outage, overview, workbench
from dashboards.config import DashboardConfig, config_from_argv
from dashboards.context import DashboardContext
from store.accounts import WRITERS
from store.qc_history import QCHistory
from store import AuditStore, open_store

XSRF_REFUSAL = (
    "This dashboard refuses to run with XSRF protection turned off "
    "(server.enableXsrfProtection = false). Remove that setting and restart it."
)


@st.cache_resource(show_spinner=False)
def _open_store(url: str) -> tuple[AuditStore, QCHistory]:
    store = open_store(url, create=False)  # the CLI checked it exists; a dashboard never creates one
    return store, QCHistory(store)


@st.cache_resource(show_spinner=False)
def _settings() -> Settings:
    # Built once per server process, like the store: the environment does not change under a
    # running server, and parsing it on every rerun (every click) is wasted work.
    return Settings.from_env()


@st.cache_resource(show_spinner=False)
def page_icon() -> Image.Image:
    """The tab's icon, drawn here and served by this server: a ``:material/...:`` icon made every
    page load fetch its font from fonts.gstatic.com (an error offline, a Google contact online)."""
    icon = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    draw = ImageDraw.Draw(icon)
    draw.rounded_rectangle((2, 2, 61, 61), radius=12, fill="#1f77b4")
    draw.line([(16, 33), (28, 45), (48, 20)], fill="white", width=8, joint="curve")  # a check mark
    return icon


def build_context(config: DashboardConfig) -> DashboardContext:
    """The store and registry the options point at (defaults: the process settings)."""
    settings = _settings()
    store_url = config.store_url or settings.resolved_store_url
    models_dir = config.models_dir or settings.models_dir
    store, history = _open_store(store_url)
    return DashboardContext(config, store, ModelRegistry(models_dir), history)


def main(config: DashboardConfig | None = None) -> None:
    st.set_page_config(page_title="auditstream · audit", page_icon=page_icon(), layout="wide")
    if not st.get_option("server.enableXsrfProtection"):
        st.error(XSRF_REFUSAL)
        st.stop()
    config = config or DashboardConfig()
    outage.new_run()
    try:
        ctx = build_context(config)
    except Exception as e:
        if not outage.is_store_down(e):
            raise
        outage.store_down_ui(e, retry=lambda: build_context(config), text=outage.SIGN_IN_DOWN_TEXT)  # nothing else
        st.stop()
    try:
        user = auth_ui.current_user(ctx.store.accounts)  # stops here for anyone not signed in
    except Exception as e:
        if not outage.is_store_down(e):
            raise
        # The store cannot say who this is now. A signed-in session keeps the user it last
        # verified, so an open item and its form stay (the store checks every write again, and
        # no account can change while it is down); anyone else sees only the message.
        user = auth_ui.last_verified_user()
        outage.store_down_ui(e, retry=lambda: ctx.store.accounts.get("-"),
                             text=outage.STORE_DOWN_TEXT if user is not None else outage.SIGN_IN_DOWN_TEXT)
        if user is None:
            st.stop()
    if auth_ui.user_badge_ui(user):
        workbench.release_at_logout(ctx, user)  # the open item goes back to the queue at once
        auth_ui.logout()
        st.rerun()
    pages = []
    # While an item is open on the workbench the Overview is not offered: the verdict form sends
    # what was typed only on submit, so leaving the page dropped it and the form came back with the
    # model's answer (Enter then recorded an accept). The workbench offers "Put this item back".
    if not workbench.item_open(user):
        pages.append(st.Page(lambda: overview.page(ctx, user), title="Overview", icon=":material/monitoring:",
                             url_path="overview", default=user.role not in WRITERS))  # fmt: skip
    if user.role in WRITERS:
        pages.insert(0, st.Page(lambda: workbench.page(ctx, user), title="Workbench", icon=":material/edit_note:",
                                url_path="workbench", default=True))  # fmt: skip
    try:
        st.navigation(pages, position="top").run()
    except Exception as e:
        if not outage.is_store_down(e):
            raise
        outage.store_down_ui(e, retry=lambda: ctx.store.accounts.get("-"))


if __name__ == "__main__":
    main(config_from_argv(sys.argv[1:]))
