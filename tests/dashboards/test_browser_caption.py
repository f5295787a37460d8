"""The caption editor in a real browser: headless Chromium against ``streamlit run`` (the browser
fixture of conftest.py, the helpers of test_browser.py).
An auditor opens a caption item, sees the scene with its caption and the
doubtful word marked, rewrites the caption in the text area with the keyboard and submits with
Ctrl+Enter; the test checks the corrected caption in the store."""

from __future__ import annotations

import time

import pytest
from tests.dashboards.conftest import PASSWORD, store_with_users
from tests.dashboards.test_browser import ARTIFACTS, WAIT_S, free_port, value_of, wait_for
from tests.dashboards.test_caption_view import MODEL_CAPTION, TRUE_CAPTION, caption_item, publish_captioner_card

from auditstream.wire import VerdictKind
from dashboards.config import DashboardConfig
from dashboards.launch import start_dashboard

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_correct_a_caption_with_the_keyboard(browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    store_url = f"sqlite:///{tmp_path / 'audit.db'}"
    store = store_with_users(store_url)
    publish_captioner_card(tmp_path / "models")
    store.ingest(caption_item(), time.time())
    config = DashboardConfig(models_dir=str(tmp_path / "models"), refresh_s=0.0)
    browser.set_window_size(1440, 1400)
    with start_dashboard(free_port(), store_url, config, log_path=tmp_path / "streamlit.log") as server:
        browser.get(server.url)
        wait_for(browser, "input[aria-label='User name']").send_keys("alice", Keys.TAB, PASSWORD, Keys.ENTER)
        wait_for(browser, "button", "Next item").click()
        picture = wait_for(browser, "[data-testid='stImage'] img")
        assert picture.size["width"] >= 256  # the 64x64 scene drawn large, the caption above it
        wait_for(browser, "[data-testid='stMarkdownContainer']", "Doubtful words")
        marked = wait_for(browser, "[data-testid='stMarkdownContainer'] span", "circle 55%")
        assert "circle" in marked.text
        assert value_of(browser, "textarea") == MODEL_CAPTION
        area = wait_for(browser, "textarea")
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", area)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "workbench-caption.png"))
        area.click()
        area.send_keys(Keys.CONTROL, "a")
        area.send_keys(TRUE_CAPTION.replace("blue square", "Blue  Square"))
        ActionChains(browser).key_down(Keys.CONTROL).send_keys(Keys.ENTER).key_up(Keys.CONTROL).perform()
        wait_for(browser, "[data-testid='stAlertContentSuccess']", "corrected")
        deadline = time.monotonic() + WAIT_S
        while not store.verdicts() and time.monotonic() < deadline:
            time.sleep(0.2)
        [verdict] = store.verdicts()
        assert (verdict.auditor, verdict.kind, verdict.corrected_output) == ("alice", VerdictKind.CORRECT, TRUE_CAPTION)
    store.close()
