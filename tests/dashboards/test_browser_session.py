"""Sessions end where nobody clicks (headless Chromium, marker ``browser``): the overview
refreshes itself every second (a fragment on a timer, which skips ``current_user``); a password
reset, then a disabled account, must end what an open tab shows at the next tick, not at the
user's next click."""

from __future__ import annotations

import pytest
from tests.dashboards.conftest import PASSWORD, store_with_users
from tests.dashboards.test_browser import click, free_port, wait_for, wait_gone

from dashboards.config import DashboardConfig
from dashboards.launch import start_dashboard

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_an_open_overview_ends_at_a_password_reset_and_at_disabling(browser, tmp_path):
    from selenium.webdriver.common.keys import Keys

    store_url = f"sqlite:///{tmp_path / 'audit.db'}"
    store = store_with_users(store_url)
    config = DashboardConfig(models_dir=str(tmp_path / "models"), refresh_s=1.0)
    with start_dashboard(free_port(), store_url, config, log_path=tmp_path / "streamlit.log") as server:
        browser.get(server.url)
        wait_for(browser, "input[aria-label='User name']").send_keys("ada", Keys.TAB, PASSWORD, Keys.ENTER)
        click(browser, "a", "Overview")
        wait_for(browser, "h3", "Auditors")
        store.accounts.set_password("ada", "a brand new password")  # no click from here on
        wait_for(browser, "input[aria-label='User name']")
        wait_for(browser, "[data-testid=stAlertContentWarning]", "Your session has ended")
        wait_gone(browser, "h3")  # the overview is gone
        browser.get(server.url)  # a new session for the next account
        wait_for(browser, "input[aria-label='User name']").send_keys("alice", Keys.TAB, PASSWORD, Keys.ENTER)
        click(browser, "a", "Overview")
        wait_for(browser, "h3", "Auditors")
        store.accounts.set_role("alice", "auditor", disabled=True)
        wait_for(browser, "[data-testid=stAlertContentError]", "has no enabled account")
        wait_gone(browser, "h3")
    store.close()


def test_candidate_vs_live_follows_the_shadow_answers_without_a_click(browser, tmp_path):
    """The overview says Candidate vs live refreshes every --refresh-s; it was drawn outside the
    timed fragments and changed only on a click or reload."""
    import dataclasses
    import time

    from selenium.webdriver.common.keys import Keys
    from tests.dashboards.test_versions import seed_versions
    from tests.store.store_factories import audit_item

    from auditstream.wire import Route
    from store.shadow import ShadowAnswers

    store_url = f"sqlite:///{tmp_path / 'audit.db'}"
    store = store_with_users(store_url)
    seed_versions(store, tmp_path)  # zip v2 live, v3 in shadow with 40 answers kept
    config = DashboardConfig(models_dir=str(tmp_path / "models"), refresh_s=1.0)
    with start_dashboard(free_port(), store_url, config, log_path=tmp_path / "streamlit.log") as server:
        browser.get(server.url)
        wait_for(browser, "input[aria-label='User name']").send_keys("vic", Keys.TAB, PASSWORD, Keys.ENTER)
        wait_for(browser, "h3", "Candidate vs live")  # a viewer's only page
        wait_for(browser, "[data-testid='stMarkdownContainer']", "40 shadow answers kept")
        more = [audit_item(f"s{i}", Route.AUTO_QC, version="3").prediction for i in range(10)]
        ShadowAnswers(store).ingest([dataclasses.replace(p, shadow=True) for p in more], time.time())  # no click
        wait_for(browser, "[data-testid='stMarkdownContainer']", "50 shadow answers kept")
    store.close()


def test_an_idle_open_item_goes_back_to_the_queue(browser, tmp_path):
    """An open tab renewed its lease forever with nobody at it (review b1): after --idle-s with no
    click or submit the timed renewal gives the item back and the page says so."""
    import time

    from selenium.webdriver.common.keys import Keys
    from tests.dashboards.conftest import items_by_task

    store_url = f"sqlite:///{tmp_path / 'audit.db'}"
    store = store_with_users(store_url)
    store.ingest(items_by_task()["sequence"], time.time())
    config = DashboardConfig(models_dir=str(tmp_path / "models"), refresh_s=0.0, lease_s=10.0, idle_s=12.0)
    with start_dashboard(free_port(), store_url, config, log_path=tmp_path / "streamlit.log") as server:
        browser.get(server.url)
        wait_for(browser, "input[aria-label='User name']").send_keys("alice", Keys.TAB, PASSWORD, Keys.ENTER)
        click(browser, "button", "Next item")
        wait_for(browser, "input[aria-label='ZIP code (5 digits)']")
        [item] = store.items()
        assert store.item(item.item_id).lease_owner == "alice"
        time.sleep(8)  # a renewal came meanwhile (every lease_s / 3): still hers
        assert store.item(item.item_id).lease_owner == "alice"
        wait_for(browser, "[data-testid=stAlertContentWarning]", "went back to the queue")
        assert store.item(item.item_id).lease_owner is None and store.verdicts() == []
        wait_gone(browser, "input[aria-label='ZIP code (5 digits)']")
    store.close()
