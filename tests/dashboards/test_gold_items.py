"""A gold item looks like traffic in the workbench: an auditor who is served one sees exactly
what the same prediction arriving as traffic would show, whatever its age in the store."""

from __future__ import annotations

import re
import time

from tests.dashboards.conftest import items_by_task, log_in, prediction

from auditstream.wire import AuditItem
from dashboards import workbench
from store.accounts import Role, User


def gold_app(store_url: str, models_dir: str) -> None:
    """The dashboard with every claim drawing gold (as the 5% draw does now and then)."""
    from dashboards import app
    from dashboards.config import DashboardConfig
    from store import StoreConfig

    app._open_store(store_url)[0].config = StoreConfig(gold_rate=1.0)
    app.main(DashboardConfig(store_url=store_url, models_dir=models_dir, refresh_s=0.0, blind_qc=False))


def item_texts(at, request_id: str) -> list[str]:
    """Everything the item's page says (notices left out), its request id and clock times masked."""
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [f"{m.label}={m.value}" for m in at.metric]
    parts += [e.value for e in (*at.error, *at.warning, *at.info)]
    return [re.sub(r"\d\d:\d\d:\d\d", "<time>", str(p).replace(request_id, "<request>")) for p in parts]


def test_a_gold_item_shows_what_the_same_item_as_traffic_shows(store, store_url, tmp_path):
    from streamlit.testing.v1 import AppTest

    seq = items_by_task()["sequence"]
    now = time.time()

    def twin(request_id: str) -> AuditItem:
        return AuditItem(prediction(request_id, "zip", "sequence", "02139", 0.61, seq.prediction.details), seq.input)

    # The admin added the gold item two days ago; the traffic item arrived a minute ago.
    store.add_gold(twin("7f3a9c01"), "02139", User("ada", Role.ADMIN), now - 2 * 86400)
    store.ingest(twin("b41e6d22"), now - 60)
    at = AppTest.from_function(gold_app, kwargs={"store_url": store_url, "models_dir": str(tmp_path / "models")},
                               default_timeout=60).run()  # fmt: skip
    at = log_in(at, "alice")
    at.button(key="next").click()
    at = at.run()
    assert at.session_state[workbench.CLAIM].is_gold  # the store's bookkeeping; never on the page
    gold_page = item_texts(at, "7f3a9c01")
    at.button[0].click()  # accept; the traffic item is claimed at once
    at = at.run()
    assert not at.session_state[workbench.CLAIM].is_gold
    gold_notice = [s.value for s in at.success]
    traffic_page = item_texts(at, "b41e6d22")
    assert gold_page == traffic_page
    at.button[0].click()
    at = at.run()
    assert gold_notice == [s.value for s in at.success] == ["Recorded: accepted."]


def test_a_refused_verdict_says_why_without_the_store_item_id():
    from auditstream.errors import LeaseNotHeld, VerdictConflict

    texts_ = [workbench._refused_text(e) for e in (LeaseNotHeld(4711, "alice", None, None, 10.0),
                                                   LeaseNotHeld(4711, "alice", "bob", 20.0, 10.0),
                                                   LeaseNotHeld(4711, "alice", "alice", 5.0, 10.0),
                                                   VerdictConflict("v-1", "it is 'bob''s verdict on item 4711"))]
    assert not any("4711" in t for t in texts_)
    assert texts_[1] == "Your verdict was not recorded: another auditor holds it now. Claim the next item."
