"""The cost model on the overview: sliders for what a human decision, an audit and an
undetected error cost, and the cost per item of model + humans against humans only along the
model card's risk-coverage curve (``qc.cost.cost_report`` does the arithmetic).
"""

from __future__ import annotations

import streamlit as st

from auditstream.registry import ModelCard
from dashboards import charts
from qc.cost import CostReport, Costs, cost_report


def costs_ui(key: str) -> Costs:
    """The cost sliders; returns the chosen costs (one currency unit of your choice)."""
    left, right = st.columns(2)
    human = left.slider("Human decision", 0.0, 5.0, 0.50, 0.05, key=f"{key}-human",
                        help="Cost of one human decision on a deferred item")  # fmt: skip
    audit = left.slider("QC audit", 0.0, 5.0, 0.50, 0.05, key=f"{key}-audit",
                        help="Cost of auditing one auto-accepted answer")  # fmt: skip
    error = right.slider("Undetected error", 0.0, 200.0, 20.0, 1.0, key=f"{key}-error",
                         help="Cost of one wrong answer that nobody caught")  # fmt: skip
    qc_rate = right.slider("QC rate", 0.0, 0.2, 0.02, 0.005, key=f"{key}-qc", format="%.3f",
                           help="Share of auto-accepted answers sampled for audit")  # fmt: skip
    return Costs(human=human, audit=audit, error=error, qc_rate=qc_rate)


def report_rows(report: CostReport) -> list[dict]:
    """The report's curves as chart rows: model + humans per threshold, humans only flat."""
    rows = [{"threshold": t, "policy": "model + humans", "cost_per_item": c}
            for t, c in zip(report.thresholds, report.cost_per_item)]  # fmt: skip
    rows += [{"threshold": t, "policy": "humans only", "cost_per_item": report.humans_only} for t in report.thresholds]
    return rows


def cost_section(card: ModelCard) -> None:
    st.markdown("**Cost model** · green: cost-optimal threshold · grey: the card's threshold")
    if not card.risk_coverage:
        st.caption("Needs the card's risk-coverage curve.")
        return
    costs = costs_ui(f"cost-{card.name}")
    budget = card.triage.target_risk if card.triage.target_risk is not None else card.triage.certified_risk
    # The curve's risks are point estimates: within the budget means at or above the certified
    # threshold too, where the certificate holds (qc/cost.py).
    respect = st.checkbox(f"Only certified thresholds (≥ {card.triage.threshold:.3f}, risk budget {budget:.2%})"
                          if budget is not None else "Only certified thresholds", value=budget is not None,
                          disabled=budget is None, key=f"cost-{card.name}-budget")  # fmt: skip
    report = cost_report(card.risk_coverage, costs, max_risk=budget if respect else None,
                         min_threshold=card.triage.threshold if respect else None,
                         certified_threshold=card.triage.threshold)
    st.altair_chart(charts.cost_chart(report_rows(report), report.optimal_threshold, card.triage.threshold),
                    width="stretch")  # fmt: skip
    cols = st.columns(3)
    cols[0].metric("Humans only, per item", f"{report.humans_only:.3f}")
    cols[1].metric("Model + humans, per item", "—" if report.optimal_cost is None else f"{report.optimal_cost:.3f}",
                   help="at the cost-optimal threshold",
                   delta=None if report.savings_per_item is None else f"{-report.savings_per_item:+.3f}",
                   delta_color="inverse")  # fmt: skip
    cols[2].metric("Optimal threshold", "—" if report.optimal_threshold is None else f"{report.optimal_threshold:.3f}",
                   help=None if report.optimal_coverage is None else f"coverage {report.optimal_coverage:.1%}")  # fmt: skip
    st.caption(report.reason)
