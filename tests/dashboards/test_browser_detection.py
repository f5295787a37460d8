"""The box editor in a real browser: headless Chromium against ``streamlit run`` (the browser
fixture of conftest.py, the helpers of test_browser.py).
An auditor opens a detection item, sees the picture and the box table,
widens box 3 with the keyboard alone and, the cell still selected, submits with Ctrl+Enter at once
(dashboards/table_shortcuts.py); the test checks the corrected boxes in the store.

The table is a canvas (glide-data-grid); its hidden accessible cells (``glide-cell-<col>-<row>``,
column 0 the row marker) say which cell has the focus and what it holds.
"""

from __future__ import annotations

import contextlib
import time
from typing import Iterator

import pytest
from tests.dashboards.conftest import PASSWORD, store_with_users
from tests.dashboards.test_browser import ARTIFACTS, WAIT_S, free_port, wait_for
from tests.dashboards.test_detection_view import MODEL_BOXES, detection_item, publish_detector_card

from auditstream.wire import VerdictKind
from dashboards.config import DashboardConfig
from dashboards.launch import start_dashboard
from dashboards.tasks.detection import COLUMNS

pytestmark = [pytest.mark.browser, pytest.mark.slow]
X1 = COLUMNS.index("x1") + 1  # grid column of x1 (after the row marker)


def focused_cell(driver) -> tuple[int, int] | None:
    """(column, row) of the grid cell that has the keyboard focus."""
    cell_id = driver.execute_script("return document.activeElement && document.activeElement.id") or ""
    if not cell_id.startswith("glide-cell-"):
        return None
    column, row = cell_id.removeprefix("glide-cell-").split("-")
    return int(column), int(row)


def cell_text(driver, column: int, row: int) -> str:
    return driver.execute_script(f"return document.getElementById('glide-cell-{column}-{row}').textContent")


def until(condition, what: str, poll_s: float = 0.1) -> None:
    """Wait for ``condition()`` (a redraw, a cell editor opening), failing after ``WAIT_S``."""
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"waited {WAIT_S} s for {what}"
        time.sleep(poll_s)


@contextlib.contextmanager
def detection_item_open(browser, tmp_path) -> Iterator[object]:
    """A store with one detection item and a dashboard on it, alice logged in and the item open;
    yields the store."""
    from selenium.webdriver.common.keys import Keys

    store_url = f"sqlite:///{tmp_path / 'audit.db'}"
    store = store_with_users(store_url)
    publish_detector_card(tmp_path / "models")
    store.ingest(detection_item(), time.time())
    config = DashboardConfig(models_dir=str(tmp_path / "models"), refresh_s=0.0)
    browser.set_window_size(1440, 1400)  # the table below the answer panel, in view without scrolling
    try:
        with start_dashboard(free_port(), store_url, config, log_path=tmp_path / "streamlit.log") as server:
            browser.get(server.url)
            wait_for(browser, "input[aria-label='User name']").send_keys("alice", Keys.TAB, PASSWORD, Keys.ENTER)
            wait_for(browser, "button", "Next item").click()
            yield store
    finally:
        store.close()


def test_correct_a_box_with_the_keyboard(browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    with detection_item_open(browser, tmp_path) as store:
        picture = wait_for(browser, "[data-testid='stImage'] img")
        assert picture.size["width"] >= 400  # the 64x64 label drawn large, boxes and legend in it
        wait_for(browser, "[data-testid='stMarkdownContainer']", "To check (red): boxes 3 and 4")
        canvas = wait_for(browser, "[data-testid='stDataFrame'] canvas")
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)
        time.sleep(1.0)  # let the picture and the grid finish painting before the screenshot
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "workbench-detection.png"))
        assert [cell_text(browser, 1, row) for row in range(4)] == ["3", "4", "1", "2"]  # to check first
        # Click into the first row (box 3), then keys only: over to x1, Enter, type 40, Enter.
        header, row_height = 35, 35  # pixels; the click is relative to the canvas centre
        first_row = -canvas.size["height"] // 2 + header + row_height // 2
        number_column = -canvas.size["width"] // 2 + 60  # past the row marker
        ActionChains(browser).move_to_element_with_offset(canvas, number_column, first_row).click().perform()
        until(lambda: focused_cell(browser) is not None, "a focused cell")
        column, row = focused_cell(browser)
        assert row == 0, f"the click focused {column, row}, not a cell of box 3's row"
        ActionChains(browser).send_keys(*[Keys.ARROW_RIGHT] * (X1 - column)).perform()
        until(lambda: focused_cell(browser) == (X1, 0), "the focus on box 3's x1")
        ActionChains(browser).send_keys(Keys.ENTER).perform()
        until(lambda: browser.switch_to.active_element.tag_name in ("input", "textarea"), "the cell editor")
        editor = browser.switch_to.active_element
        editor.send_keys(Keys.CONTROL, "a")
        editor.send_keys("40")
        # Enter only once the editor holds the new value: it saves what the editor last rendered.
        until(lambda: editor.get_attribute("value") == "40", "40 in the cell editor")
        editor.send_keys(Keys.ENTER)
        # Ctrl+Enter as soon as the selected cell has the keys again (the grid keeps them from the
        # page), as a fast auditor types: the submit must carry the edit the table has not handed
        # to the form yet (it did not: a 150 ms debounce; the correction was recorded as an accept).
        until(lambda: focused_cell(browser) is not None, "the focus back on a cell", poll_s=0.01)
        ActionChains(browser).key_down(Keys.CONTROL).send_keys(Keys.ENTER).key_up(Keys.CONTROL).perform()
        wait_for(browser, "[data-testid='stAlertContentSuccess']", "corrected")
        until(lambda: store.verdicts(), "the verdict in the store")
        [verdict] = store.verdicts()
        assert (verdict.auditor, verdict.kind) == ("alice", VerdictKind.CORRECT)
        assert verdict.corrected_output == [*MODEL_BOXES[:2], {**MODEL_BOXES[2], "box": [6.0, 36.0, 40.0, 54.0]},
                                            MODEL_BOXES[3]]  # fmt: skip


def test_reject_with_alt_x_while_a_table_cell_is_selected(browser, tmp_path):
    """The form's other shortcuts too, from a selected cell: Alt+X rejects; pressed twice at once,
    it rejects this item only (the next one waits in the queue)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    with detection_item_open(browser, tmp_path) as store:
        canvas = wait_for(browser, "[data-testid='stDataFrame'] canvas")
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)
        time.sleep(1.0)
        first_row = -canvas.size["height"] // 2 + 35 + 35 // 2
        ActionChains(browser).move_to_element_with_offset(canvas, -canvas.size["width"] // 2 + 60, first_row).click() \
            .perform()
        until(lambda: focused_cell(browser) is not None, "a focused cell")
        store.ingest(detection_item("det-parcel-2"), time.time())  # what a second click would reach
        ActionChains(browser).key_down(Keys.ALT).send_keys("x").send_keys("x").key_up(Keys.ALT).perform()
        until(lambda: store.verdicts(), "the verdict in the store")
        wait_for(browser, "[data-testid='stAlertContentSuccess']", "rejected")
        time.sleep(2.0)  # time for a second submission to land, if there were one
        [verdict] = store.verdicts()
        assert (verdict.auditor, verdict.kind, verdict.corrected_output) == ("alice", VerdictKind.REJECT, None)
