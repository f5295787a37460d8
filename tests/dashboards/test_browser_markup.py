"""Escaped text in Streamlit's own renderer (headless Chromium, marker ``browser``): a corpus of
hostile and random strings, each drawn through dashboards/markup.py the ways the pages draw item
text — markdown, a caption with a code span, a badge, a metric value, an error — shows exactly
its text (dashboards.markup.shown), holds no link, image, icon, math or formatting element, and
makes the browser fetch nothing from the URL it names. Then the real workbench with a hostile
request id: the header shows the id as text, and the trap server is never asked for its pixel.
"""

from __future__ import annotations

import http.server
import json
import os
import random
import string
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from tests.dashboards.conftest import PASSWORD, store_with_users, items_by_task, prediction
from tests.dashboards.test_browser import click, free_port, wait_for

from auditstream.wire import AuditItem
from dashboards.config import DashboardConfig
from dashboards.launch import SERVER_OPTIONS, start_dashboard
from dashboards.markup import JOINER, shown

pytestmark = [pytest.mark.browser, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
KINDS = ("md", "code", "badge", "metric", "error")
PAGE = '''
import json, sys
import streamlit as st
from dashboards.markup import md_code, md_text

st.set_page_config(layout="wide")
for i, text in enumerate(json.loads(open(sys.argv[1], encoding="utf-8").read())):
    with st.container(key=f"md-{i}"):
        st.markdown(md_text(text))
    with st.container(key=f"code-{i}"):
        st.caption(f"Request {md_code(text)} · lease")
    with st.container(key=f"badge-{i}"):
        st.markdown(f":gray-badge[{md_text(text) or 'empty'}]")
    with st.container(key=f"metric-{i}"):
        st.metric("answer", md_text(text))
    with st.container(key=f"error-{i}"):
        st.error(f"Cannot show: {md_text(text)}")  # as the workbench does (a leading emoji is an alert's icon)
st.markdown("corpus-end")
'''
# Elements no escaped text may produce (the code container holds its one code span).
FORBIDDEN = "a, img, svg image, .katex, math, [role=img], em, strong, del, h1, h2, h3, h4, h5, h6, ul, ol, blockquote, " \
            "table, hr, input, pre"
READ = '''
const out = [];
for (let i = 0; i < arguments[0]; i++) {
  const row = {};
  for (const kind of ["md", "code", "badge", "metric", "error"]) {
    const box = document.querySelector(`.st-key-${kind}-${i}`);
    if (!box) { row[kind] = null; continue; }
    const text = kind === "metric" ? box.querySelector("[data-testid=stMetricValue]")
               : kind === "code" ? box.querySelector("[data-testid=stCaptionContainer]")
                                   : box.querySelector("[data-testid=stMarkdownContainer]");
    row[kind] = {text: text ? text.innerText : null,
                 forbidden: Array.from(box.querySelectorAll(arguments[1])).map(e => e.outerHTML.slice(0, 120)),
                 codes: Array.from(box.querySelectorAll("code")).map(e => e.innerText)};
  }
  out.push(row);
}
return out;
'''


class Trap(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - the handler's name
        Trap.hits.append(self.path)
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def trap():
    Trap.hits = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Trap)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def corpus(trap_url: str, n: int = 160) -> list[str]:
    """Hostile strings, then ``n`` random ones stitched from markdown's pieces (seeded)."""
    from tests.dashboards.test_markup import HOSTILE

    pieces = ["![", "](", "[", "]", "(", ")", f"{trap_url}/p.png", "<img src=", ">", "<", ":material/face:",
              ":material_face:", ":streamlit:", ":smile:", ":red[", ":blue-badge[", "$", "$$", "\\(", "->", "<-",
              "--", ">=", "~~", "**", "_", "`", "```", "|", "#", "> ", "1. ", "- ", "\n", "\n\n", "  ", "\t", "&amp;",
              "&#60;", "\\", "é", "漢字", "😀", "\u202e", "\x00", "x", "42", " "]  # fmt: skip
    rng = random.Random(20240611)
    randoms = ["".join(rng.choice(pieces) if rng.random() < 0.7 else rng.choice(string.printable)
                       for _ in range(rng.randint(1, 12))) for _ in range(n)]  # fmt: skip
    return [*(h.replace("http://127.0.0.1:9", trap_url) for h in HOSTILE),
            f"![]({trap_url}/a.png) [x]({trap_url}/b) <img src='{trap_url}/c.png'>", *randoms]


def test_escaped_text_renders_as_its_text_in_streamlit(browser, trap, tmp_path):
    samples = corpus(trap)
    (tmp_path / "samples.json").write_text(json.dumps(samples), encoding="utf-8")
    (tmp_path / "page.py").write_text(PAGE, encoding="utf-8")
    port = free_port()
    flags = [f"--{k}={v}" for k, v in {**SERVER_OPTIONS, "server.port": str(port), "server.address": "127.0.0.1"}.items()]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    with open(tmp_path / "streamlit.log", "wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(tmp_path / "page.py"), *flags, "--",
                                   str(tmp_path / "samples.json")], stdout=log, stderr=subprocess.STDOUT, env=env)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2):
                    break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "streamlit.log").read_text()
                time.sleep(0.3)
        browser.get(f"http://127.0.0.1:{port}")
        wait_for(browser, "[data-testid=stMarkdownContainer]", "corpus-end")
        deadline = time.monotonic() + 30  # lazily loaded renderer plugins (math, emoji) show skeletons first
        while browser.find_elements("css selector", "[data-testid=stSkeleton]") and time.monotonic() < deadline:
            time.sleep(0.2)
        rows = browser.execute_script(READ, len(samples), FORBIDDEN)
    finally:
        server.terminate()
        server.wait(10)
    problems = []
    for text, row in zip(samples, rows):
        want = shown(text)
        expected = {"md": want, "code": f"Request {want} · lease".replace("  ", " "), "badge": want or "empty",
                    "metric": want, "error": f"Cannot show: {want}".strip()}  # fmt: skip
        for kind in KINDS:
            got = row[kind]
            seen = None if got is None or got["text"] is None else " ".join(got["text"].replace(JOINER, "").split())
            if seen != expected[kind] or got["forbidden"] or len(got["codes"]) != (kind == "code" and bool(want)):
                problems.append((kind, text, seen, got and got["forbidden"]))
    assert not problems, "\n".join(repr(p) for p in problems[:40])
    assert Trap.hits == []


def test_a_hostile_request_id_is_text_in_the_real_workbench(browser, trap, tmp_path):
    from selenium.webdriver.common.keys import Keys

    store_url = f"sqlite:///{tmp_path / 'audit.db'}"
    store = store_with_users(store_url)
    rid = f"r1 ![]({trap}/pixel.png?auditor-saw-item) [**Session expired: sign in again**]({trap}/login)"
    seq = items_by_task()["sequence"]
    store.ingest(AuditItem(prediction(rid, "zip", "sequence", "02139", 0.6, seq.prediction.details), seq.input),
                 time.time())  # fmt: skip
    config = DashboardConfig(models_dir=str(tmp_path / "models"), refresh_s=0.0)
    with start_dashboard(free_port(), store_url, config, log_path=tmp_path / "streamlit.log") as server:
        browser.get(server.url)
        wait_for(browser, "input[aria-label='User name']").send_keys("alice", Keys.TAB, PASSWORD, Keys.ENTER)
        click(browser, "button", "Next item")
        header = wait_for(browser, "[data-testid=stCaptionContainer]", "Request")
        wait_for(browser, "[data-testid=stMetricValue]", "02139")
        assert rid in header.text
        assert not header.find_elements("css selector", "a, img, strong")
        assert not browser.find_elements("css selector", f"img[src^='{trap}'], a[href^='{trap}']")
    store.close()
    assert Trap.hits == []
