"""A seeded temp SQLite store and AppTest helpers for the dashboard tests.

Items are built by hand as wire ``AuditItem``s, one per task kind, the way serving would send
them (auditstream/tasks' details), and ingested through the store API.
"""

from __future__ import annotations

import io
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from auditstream.wire import AuditItem, ImageInput, Prediction, Route
from dashboards.markup import JOINER
from store import open_store

PASSWORD = "correct horse battery"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
USERS = {"alice": "auditor", "bob": "auditor", "vic": "viewer", "ada": "admin"}


def store_with_users(store_url: str):
    """The store at ``store_url``, opened, with the test accounts (:data:`USERS`, :data:`PASSWORD`)."""
    from store import open_store

    store = open_store(store_url, create=True)
    for name, role in USERS.items():
        store.accounts.add_user(name, PASSWORD, role)
    return store


def png(width: int, height: int, draw_fn=None) -> ImageInput:
    image = Image.new("RGB", (width, height), "white")
    if draw_fn:
        draw_fn(ImageDraw.Draw(image))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return ImageInput(buffer.getvalue(), "png")


def envelope() -> np.ndarray:
    """A grayscale envelope crop with a handwritten-looking address line and the ZIP code."""
    from PIL import ImageFont

    image = Image.new("L", (160, 48), 232)
    draw = ImageDraw.Draw(image)
    draw.text((8, 4), "Cambridge MA", fill=70, font=ImageFont.load_default(size=12))
    draw.text((10, 18), "02 1 39", fill=25, font=ImageFont.load_default(size=24))
    return np.asarray(image, dtype=np.uint8)


def prediction(request_id: str, model: str, task: str, output, confidence: float, details: dict,
               route: Route = Route.HUMAN) -> Prediction:
    return Prediction(
        request_id=request_id, model=model, model_version="1", task=task, output=output, confidence=confidence,
        route=route, reason="test", qc_inclusion_prob=1.0 if route is Route.HUMAN else 0.05,
        created_at_s=time.time(), details=details,
    )


def items_by_task() -> dict[str, AuditItem]:
    """One realistic audit item per task kind."""
    digit = np.zeros((8, 8), dtype=np.float32)
    digit[1:7, 3:5] = 16.0  # a "1"
    return {
        "sequence": AuditItem(prediction("zip-1", "zip", "sequence", "02139", 0.61, {
            "char_confidences": [0.99, 0.98, 0.61, 0.97, 0.99],
            "runner_ups": [{"text": "02739", "position": 2, "relative_prob": 0.42}],
        }), envelope()),
        "classification": AuditItem(prediction("digit-1", "digits", "classification", "1", 0.55, {
            "index": 1, "runner_ups": [{"index": 7, "label": "7", "prob": 0.35}, {"index": 4, "label": "4", "prob": 0.05}],
        }), digit),
        "detection": AuditItem(prediction("det-1", "detector", "detection",
                                          [{"box": [4, 6, 30, 40], "label": "car", "score": 0.62}], 0.62, {}),
                               png(64, 48, lambda d: d.rectangle((4, 6, 30, 40), fill="#3355aa"))),
        "policy": AuditItem(prediction("cart-1", "cartpole", "policy", 1, 0.58, {"action_probs": [0.42, 0.58], "value": 21.5}),
                            np.array([0.1, 0.2, 0.05, -0.3], dtype=np.float32)),
        "caption": AuditItem(prediction("cap-1", "captioner", "caption", "a blue square on white", 0.5, {}),
                             png(64, 64, lambda d: d.rectangle((10, 10, 50, 50), fill="blue"))),
    }


# A curve whose error grows with coverage, so the cost-optimal threshold depends on the costs.
CURVE = [{"threshold": 1 - i / 50, "coverage": i / 50, "risk": 0.04 * (i / 50) ** 2} for i in range(1, 51)]


def seed_card_and_history(store, tmp_path: Path) -> None:
    """A model card for "zip" in ``tmp_path/models`` and five minutes of QC snapshots (over budget)."""
    from auditstream.registry import ModelCard, ModelRegistry, TriageSpec
    from qc.snapshot import ModelQC
    from store.qc_history import QCHistory

    card = ModelCard(name="zip", version="1", task="sequence", inputs=[], outputs=[], risk_coverage=CURVE,
                     triage=TriageSpec(threshold=0.7, target_risk=0.02, delta=0.05, certified_risk=0.015, coverage=0.6,
                                       method="sgr"))  # fmt: skip
    ModelRegistry(tmp_path / "models").publish(card, b"not an onnx file: the dashboard reads cards only")
    history = QCHistory(store)
    now = time.time()
    for k in range(5):
        history.save([ModelQC("zip", "1", 1000 * (k + 1), 700 * (k + 1), 300 * (k + 1), 0.66 + 0.01 * k, 300 + k, 12,
                              0.04, 0.021, 0.069, 0.015, True, 0.08, 1e-4, 3.5, True, 0.85, 300.0, "over budget",
                              budget=0.02, budget_state="over_budget")],
                     now - 300 + 60 * k)  # fmt: skip


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'audit.db'}"


@pytest.fixture
def store(store_url: str, monkeypatch: pytest.MonkeyPatch):
    from store import accounts

    monkeypatch.setattr(accounts, "SCRYPT_N", 2**10)  # logins in these tests need no production-strength hash
    store = open_store(store_url, create=True)
    for name, role in USERS.items():
        store.accounts.add_user(name, PASSWORD, role)
    yield store
    store.close()


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium (Debian's chromium and chromium-driver) for the ``browser`` tests."""
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs Debian's chromium and chromium-driver (scripts/test installs them)")
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1440,1000"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()


def app_script(store_url: str, models_dir: str, blind_qc: bool = True) -> None:
    """Runs inside AppTest (its source is copied into a script)."""
    from dashboards.app import main
    from dashboards.config import DashboardConfig

    main(DashboardConfig(store_url=store_url, models_dir=models_dir, refresh_s=0.0, blind_qc=blind_qc))


def start_app(store_url: str, tmp_path: Path, blind_qc: bool = True):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_function(app_script, kwargs={"store_url": store_url, "models_dir": str(tmp_path / "models"),
                                                    "blind_qc": blind_qc}, default_timeout=60)
    return at.run()


def log_in(at, name: str, password: str = PASSWORD):
    at.text_input[0].input(name)
    at.text_input[1].input(password)
    at.button[0].click()
    return at.run()


def elements(at, kind: str) -> list:
    """Every element of a proto type ("image", "metric", "arrow_vega_lite_chart", ...) in the tree."""
    found = []

    def walk(node) -> None:
        children = getattr(node, "children", None)
        for child in children.values() if isinstance(children, dict) else []:
            if child.type == kind:
                found.append(child)
            walk(child)

    walk(at._tree[0])
    return found


def unescaped(markdown: str) -> str:
    """Markdown with dashboards/markup.py's escapes taken out: the text a reader sees there."""
    return re.sub(r"\\([!-/:-@[-`{-~])", r"\1", str(markdown)).replace(JOINER, "")


def texts(at) -> str:
    """All markdown, captions, alerts and metric values on the page, as one string (escapes of
    item text taken out: :func:`unescaped`)."""
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [t.value for t in at.title]
    parts += [e.value for e in (*at.error, *at.warning, *at.info, *at.success)]
    parts += [f"{m.label}={m.value}" for m in at.metric]
    return unescaped("\n".join(str(p) for p in parts))
