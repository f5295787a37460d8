"""The overview through AppTest: every role sees it, the numbers are the store's and the QC
history's, the model card's curves and the cost model draw, and the sliders move the optimum."""

from __future__ import annotations

import dataclasses
import time

from tests.dashboards.conftest import elements, items_by_task, log_in, seed_card_and_history, start_app, texts

from auditstream.wire import VerdictKind
from dashboards.overview import budget_verdict, part_fdr_rows
from qc.snapshot import ModelQC
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
    assert "Certified by" not in metrics  # a metric cut the method's name short ("coverage-gri…")
    shown = texts(at)
    assert "Certified by" in shown and "**sgr**" in shown  # the whole name, as text
    assert ("zip v1: **over budget** — the error rate is shown above 2.00% (2.10% ≤ error ≤ 6.90%, 304 audits); "
            "suggested threshold 0.850") in shown
    assert "Gold-item scores are shown to admins only." in shown  # vic is a viewer
    charts = elements(at, "vega_lite_chart")
    # throughput, coverage, error interval, auditor throughput, risk-coverage, cost, learning curve
    assert len(charts) == 7
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


def test_the_three_budget_states_read_as_what_the_audits_prove():
    def snap(state: str, to_settle: int | None = None) -> ModelQC:
        return ModelQC("zip", "3", 9000, 8000, 1000, 0.89, 400, 6, 0.015, 0.004, 0.031, 0.012, state == "over_budget",
                       None, None, None, False, None, 400.0, "", budget=0.02, budget_state=state,
                       audits_to_settle=to_settle)  # fmt: skip

    assert budget_verdict(snap("over_budget"))[0] == "error"
    kind, text = budget_verdict(snap("within_budget"))
    assert kind == "success" and "shown below 2.00%" in text
    kind, text = budget_verdict(snap("not_yet_known", 1234))
    assert kind == "info" and "not yet known" in text and "about 1,234 more audits" in text
    assert "not judged" in budget_verdict(dataclasses.replace(snap("not_judged"), budget=None))[1]
    held = dataclasses.replace(snap("within_budget"), audits_waiting=1200, qc_released_unaudited=3)
    assert budget_verdict(held)[1].endswith("400 audits; 1,200 more verdicts wait for an earlier QC sample's; "
                                            "3 QC samples released unaudited (the interval counts them wrong "
                                            "for its upper end, right for its lower))")
    assert "wait" not in budget_verdict(dataclasses.replace(snap("within_budget"), audits_waiting=None))[1]


def test_a_detectors_budget_reads_as_the_false_discovery_rate_of_its_boxes(store, store_url, tmp_path):
    from store.qc_history import QCHistory

    boxes = ModelQC("parcel", "2", 900, 800, 100, 0.89, 400, 30, 0.075, 0.05, 0.1, 0.02, False, None, None, None, False,
                    None, 400.0, "", budget=0.02, budget_state="within_budget", parts_audited=1800, parts_false=9,
                    part_fdr_estimate=0.005, part_fdr_low=0.001, part_fdr_high=0.0175)  # fmt: skip
    kind, text = budget_verdict(boxes)
    assert kind == "success" and text == ("parcel v2: **within budget, verified** — the false-discovery rate of "
                                          "accepted boxes is shown below 2.00% (0.10% ≤ FDR ≤ 1.75%, 1,800 boxes in "
                                          "400 audits)")
    assert part_fdr_rows([boxes]) == [{"model": "parcel v2", "error": 0.005, "ci_low": 0.001, "ci_high": 0.0175,
                                       "budget": 0.02, "audits": 1800}]  # fmt: skip
    seed(store, tmp_path)
    QCHistory(store).save([boxes], time.time())
    at = log_in(start_app(store_url, tmp_path), "vic")
    shown = texts(at)
    assert text in shown and "**False-discovery rate of auto-accepted boxes**" in shown
    assert len(elements(at, "vega_lite_chart")) == 8  # the seven of the overview and the boxes' rate


def _overview_of(store_url: str, tmp_path, name: str):
    """The app signed in as ``name``, on the Overview page (a writer lands on the workbench)."""
    at = log_in(start_app(store_url, tmp_path), name)
    overview = [h for h, info in at._registered_pages.items() if info.get("url_pathname") == "overview"
                or info.get("page_name") == "overview"]  # fmt: skip
    assert overview, at._registered_pages
    at._page_hash = overview[0]
    at = at.run()
    assert not at.exception and [t.value for t in at.title] == ["Overview"]
    return at


def _rendered(at) -> tuple:
    """What the page shows, without its clock ("Updated 12:34:56 UTC")."""
    shown = [line for line in texts(at).splitlines() if not line.startswith("Updated ")]
    return (shown, sorted((m.label, m.value) for m in at.metric), [d.value.to_dict() for d in at.dataframe],
            len(elements(at, "vega_lite_chart")))


def test_an_auditor_cannot_tell_a_gold_verdict_from_a_traffic_one(tmp_path):
    """The reviewer's comparison: one store, a verdict on a gold item in one copy and on a
    traffic item in the other. Waiting items, the outbox and the QC audits move differently;
    the auditor's overview is the same in both, an admin's (who knows the gold) is not."""
    import shutil

    from tests.dashboards.conftest import PASSWORD, USERS, prediction

    from store import StoreConfig, accounts, open_store

    accounts.SCRYPT_N, old_n = 2**10, accounts.SCRYPT_N
    try:
        base = tmp_path / "base.db"
        store = open_store(f"sqlite:///{base}", create=True)
        for n, r in USERS.items():
            store.accounts.add_user(n, PASSWORD, r)
        ada, alice = User("ada", Role.ADMIN), User("alice", Role.AUDITOR)
        now = time.time()
        sequence = items_by_task()["sequence"]
        store.ingest_many([dataclasses.replace(sequence, prediction=prediction(f"zip-{i}", "zip", "sequence", "02139",
                                                                               0.6, {})) for i in range(4)], now)  # fmt: skip
        store.add_gold(dataclasses.replace(sequence, prediction=prediction("zip-g", "zip", "sequence", "02139", 0.6, {})),
                       "02139", ada, now)  # fmt: skip
        seed_card_and_history(store, tmp_path)
        store.close()
        shown = {}
        for gold in (True, False):
            url = f"sqlite:///{tmp_path / f'gold-{gold}.db'}"
            shutil.copy(base, tmp_path / f"gold-{gold}.db")
            copy = open_store(url, StoreConfig(gold_rate=1.0 if gold else 0.0, seed=1), create=False)
            claim = copy.claim(alice, 60.0, now)
            assert claim.is_gold is gold
            copy.record_verdict(copy.new_verdict_id(), claim.item_id, alice, VerdictKind.ACCEPT, None, now)
            copy.close()
            shown[gold] = {name: _rendered(_overview_of(url, tmp_path, name)) for name in ("alice", "ada")}
    finally:
        accounts.SCRYPT_N = old_n
    assert shown[True]["alice"] == shown[False]["alice"]
    auditor = dict(shown[True]["alice"][1])
    assert not {"Waiting items", "Oldest item", "Unpublished verdicts"} & set(auditor)
    assert auditor["Verdicts, last hour"] == "1"  # gold and traffic count alike here
    assert "audits" not in "\n".join(shown[True]["alice"][0])  # nor what the QC audits prove
    admin = {gold: dict(shown[gold]["ada"][1]) for gold in (True, False)}
    assert (admin[True]["Waiting items"], admin[False]["Waiting items"]) == ("4", "3")
    assert admin[True]["Unpublished verdicts"] != admin[False]["Unpublished verdicts"]
    assert "304 audits" in "\n".join(shown[True]["ada"][0])
