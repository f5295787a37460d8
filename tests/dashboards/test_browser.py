"""A real browser against a real server: headless Chromium (Debian's ``chromium`` and
``chromium-driver``, installed by scripts/test) drives the dashboard started with
``streamlit run`` on a free loopback port against a seeded temp store. It logs in with the
keyboard, claims an item, corrects the ZIP code, and the test checks the verdict in the store.

Screenshots of the workbench and the overview go to ``artifacts/dashboard/`` (git-ignored).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from tests.dashboards.conftest import PASSWORD, store_with_users, items_by_task, seed_card_and_history

from auditstream.wire import VerdictKind
from dashboards.config import DashboardConfig
from dashboards.launch import start_dashboard
from stack import broker

pytestmark = [pytest.mark.browser, pytest.mark.slow]
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "dashboard"
WAIT_S = 60


def free_port() -> int:
    return broker.free_port()  # below the ephemeral range: no outgoing connection takes it meanwhile


def wait_for(driver, css: str, text: str | None = None):
    """The first visible element matching ``css`` (and containing ``text``), waiting for it.
    Streamlit redraws elements on every rerun, so a stale reference just means "look again"."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    def find(d):
        for element in d.find_elements("css selector", css):
            if element.is_displayed() and (text is None or text in element.text):
                return element
        return False

    wait = WebDriverWait(driver, WAIT_S, poll_frequency=0.2, ignored_exceptions=[StaleElementReferenceException])
    try:
        return wait.until(find, f"no visible {css!r} with {text!r}")
    except Exception:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "failure.png"))  # what the page showed instead
        raise


def value_of(driver, css: str) -> str:
    """The ``value`` of the first visible element matching ``css``, read again if a rerun redrew
    the element between finding it and reading it (a stale reference is not a failure)."""
    from selenium.common.exceptions import StaleElementReferenceException

    for _ in range(50):
        try:
            return wait_for(driver, css).get_attribute("value")
        except StaleElementReferenceException:
            time.sleep(0.2)
    raise AssertionError(f"{css!r} kept going stale")


def wait_gone(driver, css: str) -> None:
    """Until no element matches ``css``: a rerun draws the new page first and drops the previous
    run's elements only when it ends, so right after the new page shows, old ones may remain."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, WAIT_S, poll_frequency=0.2).until(
        lambda d: not d.find_elements("css selector", css), f"{css!r} still shown")


def click(driver, css: str, text: str) -> None:
    from selenium.common.exceptions import StaleElementReferenceException

    for _ in range(20):
        try:
            wait_for(driver, css, text).click()
            return
        except StaleElementReferenceException:
            time.sleep(0.2)
    raise AssertionError(f"{css!r} with {text!r} kept going stale")


def test_log_in_record_a_verdict_and_screenshot(browser, tmp_path):
    from selenium.webdriver.common.keys import Keys

    store_url = f"sqlite:///{tmp_path / 'audit.db'}"
    store = store_with_users(store_url)
    items = items_by_task()
    store.ingest(items["sequence"], time.time())  # claimed first (oldest first)
    store.ingest(items["classification"], time.time())
    seed_card_and_history(store, tmp_path)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    config = DashboardConfig(models_dir=str(tmp_path / "models"), refresh_s=0.0)
    with start_dashboard(free_port(), store_url, config, log_path=tmp_path / "streamlit.log") as server:
        browser.get(server.url)
        # Keyboard only: name, Tab, password, Enter.
        wait_for(browser, "input[aria-label='User name']").send_keys("alice", Keys.TAB, PASSWORD, Keys.ENTER)
        click(browser, "button", "Next item")
        zip_field = wait_for(browser, "input[aria-label='ZIP code (5 digits)']")
        wait_for(browser, "img")  # the envelope
        wait_for(browser, "[data-testid='stMetricValue']", "02139")  # the model's answer beside it
        time.sleep(1.0)  # let images and tables finish painting before the screenshot
        browser.save_screenshot(str(ARTIFACTS / "workbench.png"))
        zip_field.send_keys(Keys.CONTROL, "a")
        zip_field.send_keys("02739", Keys.ENTER)  # Enter submits the form
        wait_for(browser, "[data-testid='stAlertContentSuccess']", "corrected")
        deadline = time.monotonic() + WAIT_S
        while not store.verdicts() and time.monotonic() < deadline:
            time.sleep(0.2)
        [verdict] = store.verdicts()
        assert (verdict.auditor, verdict.kind, verdict.corrected_output) == ("alice", VerdictKind.CORRECT, "02739")
        wait_for(browser, "[role='radiogroup']")  # the next item (a digit) was claimed at once
        time.sleep(1.0)
        browser.save_screenshot(str(ARTIFACTS / "workbench-digit.png"))
        # No Overview link while an item is open (leaving dropped what was typed): put it back first.
        assert "Overview" not in [a.text for a in browser.find_elements("css selector", "a")]
        click(browser, "button", "Put this item back")
        click(browser, "a", "Overview")
        wait_for(browser, "h3", "Auditors")
        time.sleep(1.5)
        browser.set_window_size(1440, 3000)  # the whole page in one picture
        time.sleep(1.0)
        browser.save_screenshot(str(ARTIFACTS / "overview.png"))
    store.close()
