"""The overview through AppTest: every role sees it, the numbers are the store's and the QC
history's, the model card's curves and the cost model draw, and the sliders move the optimum."""

from __future__ import annotations

import time

from tests.dashboards.conftest import elements, items_by_task, log_in, seed_card_and_history, start_app, texts

from auditstream.wire import VerdictKind
from store.accounts import Role, User

def seed(store, tmp_path) -> None:
    store.ingest_many(list(items_by_task().values()), time.time())
    seed_card_and_history(store, tmp_path)
    alice = User("alice", Role.AUDITOR)
    now = time.time()
    claim = store.claim(alice, 60.0, now)
    store.record_verdict(store.new_verdict_id(), claim.item_id, alice, VerdictKind.ACCEPT, None, now)


def test_every_role_sees_the_overview_with_live_numbers(store, store_url, tmp_path):
    seed(store, tmp_path)
    for name in ("alice", "ada"):  # writers land on the workbench; the overview is one click away
        at = log_in(start_app(store_url, tmp_path), name)
        assert [t.value for t in at.title] == ["Workbench"]
    at = log_in(start_app(store_url, tmp_path), "vic")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Waiting items"] == "4"  # five seeded, one decided
    assert metrics["Verdicts, last hour"] == "1"
    assert metrics["Auto-accept threshold"] == "0.700"
    assert metrics["Certified risk"] == "1.50%"
    shown = texts(at)
    assert "error bound 6.90% is over the certified 1.50%; suggested threshold 0.850" in shown
    charts = elements(at, "vega_lite_chart")
    # throughput, coverage, error interval, auditor throughput, risk-coverage, cost
    assert len(charts) == 6
    drift = [d.value for d in at.dataframe]
    assert any("CUSUM alarm" in d.columns and (d["CUSUM alarm"] == "ALARM").all() for d in drift)


def test_cost_sliders_move_the_optimum(store, store_url, tmp_path):
    seed(store, tmp_path)
    at = log_in(start_app(store_url, tmp_path), "vic")
    cheap = {m.label: m.value for m in at.metric}["Optimal threshold"]
    at.slider(key="cost-zip-error").set_value(200.0)
    at = at.run()
    dear = {m.label: m.value for m in at.metric}["Optimal threshold"]
    assert float(dear) > float(cheap)  # costlier errors: defer more, accept only the surest
    assert "humans only" in texts(at)
