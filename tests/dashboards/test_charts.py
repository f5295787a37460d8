"""The overview's chart builders and row makers, by their Vega-Lite specs: bars rise from 0, a
bar chart gives every bar its own row, and a detector's whole-answer error is not drawn against
its boxes' budget; the budget text counts audits in the right number."""

from __future__ import annotations

import dataclasses

from dashboards import app, charts
from dashboards.overview import WHOLE_ANSWERS, budget_verdict, error_rows
from qc.snapshot import ModelQC


def test_throughput_bars_rise_from_zero():
    spec = charts.throughput_chart([(1_700_000_000.0, 3), (1_700_000_060.0, 5)], 60.0).to_dict()
    assert spec["encoding"]["y2"] == {"datum": 0}  # without it each bar was a dash at its height
    assert spec["encoding"]["x2"]["field"] == "end"


def test_bar_chart_gives_every_name_a_row():
    spec = charts.bar_chart({"qc-bot": 143, "ann": 4, "bea": 6}, "verdicts").to_dict()
    assert spec["height"] == {"step": charts.BAR_STEP}  # grows with the bars, names never dropped
    mark = spec["mark"]
    assert "size" not in (mark if isinstance(mark, dict) else {})  # a fixed 20 px overlapped the bars


def qc(**changes) -> ModelQC:
    base = ModelQC("zip", "1", 1000, 700, 300, 0.7, 300, 12, 0.04, 0.021, 0.069, 0.015, True, 0.08, 1e-4, 3.5, True,
                   0.85, 300.0, "ok", budget=0.02, budget_state="not_yet_known")
    return dataclasses.replace(base, **changes)


def test_a_detectors_whole_answer_error_is_not_drawn_against_its_box_budget():
    plain = qc()
    detector = qc(model="det", part_fdr_low=0.01, part_fdr_high=0.05, part_fdr_estimate=0.03, parts_audited=400)
    rows = {r["model"]: r for r in error_rows([plain, detector])}
    assert rows["zip v1"]["budget"] == 0.02
    assert rows["det v1" + WHOLE_ANSWERS]["budget"] is None and rows["det v1" + WHOLE_ANSWERS]["error"] == 0.04


def test_one_more_audit_is_singular():
    _, one = budget_verdict(qc(audits_to_settle=1))
    assert "about 1 more audit would settle it" in one
    _, many = budget_verdict(qc(audits_to_settle=1234))
    assert "about 1,234 more audits would" in many


def test_the_page_icon_is_drawn_here_not_fetched():
    icon = app.page_icon()
    assert icon.size == (64, 64)
    import inspect

    assert ":material/" not in inspect.getsource(app.main).split("set_page_config")[1].split("\n")[0]
