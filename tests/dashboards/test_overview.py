"""The overview through AppTest: every role sees it, the numbers are the store's and the QC
history's, the model card's curves and the cost model draw, and the sliders move the optimum."""

from __future__ import annotations

import time

from conftest import elements, items_by_task, log_in, start_app, texts

from auditstream.registry import ModelCard, ModelRegistry, TriageSpec
from auditstream.wire import VerdictKind
from monitor.accounts import Role, User
from monitor.qc import ModelQC
from monitor.qc_history import QCHistory

# A curve whose error grows with coverage, so the cost-optimal threshold depends on the costs.
CURVE = [{"threshold": 1 - i / 50, "coverage": i / 50, "risk": 0.04 * (i / 50) ** 2} for i in range(1, 51)]


def seed(store, tmp_path) -> None:
    store.ingest_many(list(items_by_task().values()), time.time())
    card = ModelCard(name="zip", version="1", task="sequence", inputs=[], outputs=[], risk_coverage=CURVE,
                     triage=TriageSpec(threshold=0.7, target_risk=0.02, delta=0.05, certified_risk=0.015, coverage=0.6,
                                       method="sgr"))  # fmt: skip
    ModelRegistry(tmp_path / "models").publish(card, b"not an onnx file: the overview reads cards only")
    history = QCHistory(store)
    now = time.time()
    for k in range(5):
        history.save([ModelQC("zip", "1", 1000 * (k + 1), 700 * (k + 1), 300 * (k + 1), 0.7, 300 + k, 12, 0.04,
                              0.021, 0.069, 0.015, True, 0.08, 1e-4, 3.5, True, 0.85, 300.0, "over budget")],
                     now - 300 + 60 * k)  # fmt: skip
    alice = User("alice", Role.AUDITOR)
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
