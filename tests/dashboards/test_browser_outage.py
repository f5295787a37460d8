"""A real audit-store outage in a real browser (headless Chromium, marker ``browser``): the
dashboard runs on a PostgreSQL database of its own on the local server, which the test takes
down mid-session the way a server restart does — every open connection terminated, new ones
refused (``ALLOW_CONNECTIONS false``) — and brings back. The AppTest cases in
test_store_outage.py fake the outage at the pool; this one checks that psycopg's real errors,
Streamlit's real reruns and the retry fragment's timer give the same page: one message, no
error page, the typed answer kept, and the verdict recorded exactly once after the store returns.
"""

from __future__ import annotations

import time
import uuid
from contextlib import contextmanager
from typing import Callable, Iterator

import pytest
from tests.dashboards.conftest import PASSWORD, items_by_task, store_with_users
from tests.dashboards.test_browser import WAIT_S, click, free_port, value_of, wait_for, wait_gone
from tests.store.store_factories import POSTGRES_URL, postgres_unavailable

from auditstream.wire import VerdictKind
from dashboards import outage
from dashboards.config import DashboardConfig
from dashboards.launch import start_dashboard
from store import open_store

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.postgres]


def _admin(sql: str, *params) -> None:
    import psycopg

    with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5) as cx:
        cx.execute(sql, params)


@contextmanager
def own_database() -> Iterator[tuple[str, Callable[[bool], None]]]:
    """(url of a new database on the test server, ``down(bool)``), dropped afterwards."""
    why = postgres_unavailable()
    if why:
        pytest.skip(why)
    from psycopg.conninfo import conninfo_to_dict

    name = f"auditstream_outage_{uuid.uuid4().hex[:10]}"
    _admin(f'CREATE DATABASE "{name}"')
    parts = conninfo_to_dict(POSTGRES_URL)
    url = "postgresql://{user}@{host}:{port}/{db}".format(user=parts.get("user", "postgres"), host=parts.get("host", "127.0.0.1"),
                                                        port=parts.get("port", 5432), db=name)

    def down(on: bool) -> None:
        _admin(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS {"false" if on else "true"}')
        if on:  # what a restart does to the connections the dashboard holds in its pool
            _admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                   name)

    try:
        yield url, down
    finally:
        down(False)
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_submit_during_a_real_postgres_outage_is_kept_and_recorded_once_after(browser, tmp_path):
    from selenium.webdriver.common.keys import Keys

    with own_database() as (store_url, down):
        store = store_with_users(store_url)
        store.ingest(items_by_task()["sequence"], time.time())
        config = DashboardConfig(models_dir=str(tmp_path / "models"), refresh_s=0.0)
        try:
            with start_dashboard(free_port(), store_url, config, log_path=tmp_path / "streamlit.log") as server:
                browser.get(server.url)
                wait_for(browser, "input[aria-label='User name']").send_keys("alice", Keys.TAB, PASSWORD, Keys.ENTER)
                click(browser, "button", "Next item")
                zip_field = wait_for(browser, "input[aria-label='ZIP code (5 digits)']")
                store.close()  # the test's own connections must not outlive the outage either
                down(True)
                zip_field.send_keys(Keys.CONTROL, "a")
                zip_field.send_keys("02739", Keys.ENTER)  # submitted into the outage
                wait_for(browser, "[data-testid='stAlertContentError']", outage.STORE_DOWN_TEXT[:40])
                assert not browser.find_elements("css selector", "[data-testid='stException']")  # no error page
                assert len([e for e in browser.find_elements("css selector", "[data-testid='stAlertContentError']")
                            if outage.STORE_DOWN_TEXT[:40] in e.text]) == 1
                time.sleep(outage.RETRY_S + 1)  # a retry while still down changes nothing
                assert not browser.find_elements("css selector", "[data-testid='stException']")
                assert value_of(browser, "input[aria-label='ZIP code (5 digits)']") == "02739"  # what was typed is kept
                down(False)
                wait_for(browser, "[data-testid='stAlertContentWarning']", "not recorded")  # the retry's rerun
                wait_gone(browser, "[data-testid='stException']")
                assert value_of(browser, "input[aria-label='ZIP code (5 digits)']") == "02739"
                click(browser, "button", "Submit")
                wait_for(browser, "[data-testid='stAlertContentSuccess']", "corrected")
                store = open_store(store_url, create=True)
                deadline = time.monotonic() + WAIT_S
                while not store.verdicts() and time.monotonic() < deadline:
                    time.sleep(0.2)
                [verdict] = store.verdicts()  # exactly once
                assert (verdict.auditor, verdict.kind, verdict.corrected_output) == ("alice", VerdictKind.CORRECT, "02739")
        finally:
            store.close()
