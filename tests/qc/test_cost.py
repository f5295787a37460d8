"""The cost model: closed-form costs, the optimal threshold, curves from audits."""

from __future__ import annotations

import numpy as np
import pytest

from qc.cost import Costs, cost_per_item, cost_report, humans_only_cost, risk_coverage_from_audits

CURVE = [
    {"threshold": 0.99, "coverage": 0.5, "risk": 0.001},
    {"threshold": 0.95, "coverage": 0.8, "risk": 0.01},
    {"threshold": 0.80, "coverage": 0.95, "risk": 0.05},
    {"threshold": 0.00, "coverage": 1.0, "risk": 0.10},
]


def test_cost_per_item_closed_form():
    costs = Costs(human=1.0, audit=2.0, error=10.0, qc_rate=0.1, model=0.01)
    # 0.01 + 0.2 * 1 + 0.8 * (0.1 * 2 + 0.9 * 0.01 * 10)
    assert cost_per_item(0.8, 0.01, costs) == pytest.approx(0.01 + 0.2 + 0.8 * (0.2 + 0.09))
    assert cost_per_item(0.0, 0.5, costs) == pytest.approx(0.01 + humans_only_cost(costs))
    assert humans_only_cost(Costs(human=1.0, audit=0.0, error=10.0, human_error_rate=0.02)) == pytest.approx(1.2)


@pytest.mark.parametrize(
    ("error_cost", "max_risk", "threshold"),
    # cost = (1 - c) + c (0.02 + 0.98 r E), humans only = 1
    [(1.0, None, 0.80),  # cheap errors, accept a lot: 0.5105, 0.2238, 0.1156, 0.118
     (10.0, None, 0.95),  # dearer errors, be choosier: 0.5149, 0.2944, 0.5345, 1.0
     (1.0, 0.02, 0.95),  # a risk budget overrides the cheaper point
     (100.0, None, 0.99)],  # 0.559, 1.0, ...
)
def test_optimal_threshold_table(error_cost, max_risk, threshold):
    report = cost_report(CURVE, Costs(human=1.0, audit=1.0, error=error_cost, qc_rate=0.02), max_risk)
    assert report.optimal_threshold == threshold
    i = report.thresholds.index(threshold)
    assert report.optimal_cost == min(k for k, r in zip(report.cost_per_item, report.risk) if max_risk is None or r <= max_risk)
    assert report.savings_per_item == pytest.approx(report.humans_only - report.cost_per_item[i])
    assert len(report.cost_per_item) == len(CURVE)


def test_model_that_does_not_pay_and_impossible_budget():
    pricey = cost_report(CURVE, Costs(human=0.01, audit=1.0, error=1000.0))
    assert pricey.savings_per_item < 0 and "does not pay" in pricey.reason
    none = cost_report(CURVE, Costs(human=1.0, audit=1.0, error=1.0), max_risk=0.0001)
    assert none.optimal_threshold is None and "humans only" in none.reason


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="error=-1"):
        Costs(human=1.0, audit=1.0, error=-1)
    with pytest.raises(ValueError, match="empty"):
        cost_report([], Costs(human=1.0, audit=1.0, error=1.0))
    with pytest.raises(ValueError, match="'risk'"):
        cost_report([{"threshold": 0.9, "coverage": 0.5}], Costs(human=1.0, audit=1.0, error=1.0))


def test_risk_coverage_from_weighted_audits_recovers_the_truth():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.5, 1.0, 200_000)
    err = rng.random(conf.size) < (1.0 - conf)  # calibrated: error probability 1 - c
    pi = np.where(conf < 0.9, 1.0, 0.05)  # deferred items all audited, 5% QC above the threshold
    audited = rng.random(conf.size) < pi
    curve = risk_coverage_from_audits(conf, conf[audited], err[audited], pi[audited], [0.95, 0.9, 0.7, 0.5])
    by_t = {p["threshold"]: p for p in curve}
    assert by_t[0.9]["coverage"] == pytest.approx(0.2, abs=0.01)
    assert by_t[0.9]["risk"] == pytest.approx(0.05, abs=0.005)  # mean of 1 - c on [0.9, 1]
    assert by_t[0.5]["risk"] == pytest.approx(0.25, abs=0.005)
    assert risk_coverage_from_audits([0.5], [0.5], [0], [1.0], [0.9]) == []


def test_cost_command_reads_the_card_curve(tmp_path, monkeypatch, capsys):
    from auditstream.cli import main
    from auditstream.registry import ModelCard, ModelRegistry, TensorSpec, TriageSpec

    card = ModelCard(name="zip", version="0", task="classification", inputs=[TensorSpec("x", "float32", [None, 4])],
                     outputs=[TensorSpec("p", "float32", [None, 10])], triage=TriageSpec(threshold=0.95),
                     risk_coverage=CURVE)
    ModelRegistry(tmp_path).publish(card, b"not really onnx: the cost report never loads the graph")
    monkeypatch.setenv("AUDITSTREAM_MODELS_DIR", str(tmp_path))
    assert main(["cost", "--model", "zip", "--cost-error", "10", "--json"]) == 0
    out = capsys.readouterr()
    summary = __import__("json").loads(out.out.strip().splitlines()[-1])
    assert summary["optimal_threshold"] == 0.95 and summary["version"] == "1"
    assert summary["humans_only"] == 1.0 and len(summary["curve"]) == len(CURVE)
    assert "humans only" in out.err


def test_the_cheapest_threshold_within_budget_stays_where_the_certificate_holds():
    """The curve's risks are point estimates: below the certified threshold no delta covers the
    choice, so min_threshold keeps it above, and the reason says when a choice is below it."""
    costs = Costs(human=1.0, audit=1.0, error=1.0, qc_rate=0.02)
    free = cost_report(CURVE, costs, max_risk=0.05, certified_threshold=0.95)
    kept = cost_report(CURVE, costs, max_risk=0.05, min_threshold=0.95, certified_threshold=0.95)
    assert free.optimal_threshold < 0.95 and "not certified" in free.reason
    assert kept.optimal_threshold >= 0.95 and "not certified" not in kept.reason
    none = cost_report(CURVE, costs, max_risk=0.05, min_threshold=2.0)
    assert none.optimal_threshold is None and "at or above the certified threshold 2.0000" in none.reason
