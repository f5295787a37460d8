"""The overview (every signed-in role): is the system keeping its promise, and are the humans
keeping up?

Sections, top to bottom: the queue (depth, oldest age, throughput), quality (coverage over time,
the audited error of auto-accepted answers with its 95% interval against the certified budget,
and for a detector the false-discovery rate of its auto-accepted boxes, which its budget judges;
drift), the model card's risk-coverage curve and the cost model, the model's versions (candidate
vs live, the learning curve: dashboards/versions.py), and the auditors (throughput, gold
accuracy, agreement). Every number comes from ``monitor`` — the store's read models, the
QC snapshots the monitor process records, the cost model — so this page only lays them out.
An auditor sees none of the live figures that move differently after a verdict on a gold item
than after one on traffic (queue depth and age, the outbox, the QC audits and what they prove,
candidate vs live pairs, gold accuracy): seen before and after their own verdict, they would tell
which item was gold. Admins know the gold items; viewers record no verdicts.
The live sections (queue, quality, auditors, and candidate vs live) rerun every
``DashboardConfig.refresh_s`` seconds (``st.fragment``); the model card, the cost model and the
learning curve come from the registry's cards and are drawn again on the page's next full run.
"""

from __future__ import annotations

import math
import time

import streamlit as st

from dashboards import auth_ui, charts, outage, versions
from dashboards.cost_ui import cost_section
from dashboards.context import DashboardContext
from dashboards.markup import md_text
from dashboards.render import human_duration
from store.accounts import ADMINS, Role, User
from qc.snapshot import ModelQC

THROUGHPUT_BUCKET_S = 60.0
WINDOW_S = 3600.0  # "last hour" figures


AUDITOR_HIDDEN = ("Shown to admins and viewers only: it moves differently after a verdict on a gold item "
                  "than after one on traffic.")


def shows_gold_telling_counts(user: User) -> bool:
    """Whether ``user`` may see the live figures that a verdict on a gold item moves differently
    from one on traffic (module docstring): not an auditor."""
    return user.role is not Role.AUDITOR


def page(ctx: DashboardContext, user: User) -> None:
    st.title("Overview")
    refresh = ctx.config.refresh_s or None
    st.caption(f"Live: refreshes every {ctx.config.refresh_s:g} s." if refresh else "Auto-refresh is off.")
    st.fragment(run_every=refresh)(outage.guarded_fragment(_live_sections))(ctx, user)
    model = model_ui(ctx)
    if model is not None:
        _model_card_sections(ctx, model)
        st.fragment(run_every=refresh)(outage.guarded_fragment(_live_candidates))(ctx, user, model)
        versions.learning_curve_section(ctx, model)


def model_ui(ctx: DashboardContext) -> str | None:
    models = ctx.models()
    if not models:
        st.info("No model in the registry or the store yet.")
        return None
    with_card = [m for m in models if ctx.card(m) is not None]
    ordered = with_card + [m for m in models if m not in with_card]  # models with a card first
    return st.selectbox("Model card", ordered, key="ov_model", help="Whose risk-coverage curve and cost model to show")


# --------------------------------------------------------------------------------------------
# live sections (rerun by the fragment)


def _live_sections(ctx: DashboardContext, user: User) -> None:
    auth_ui.recheck(ctx.store.accounts, user)  # a timed rerun skips current_user: who is this now?
    now = time.time()
    counts = shows_gold_telling_counts(user)
    _queue_section(ctx, now, counts)
    _quality_section(ctx, now, counts)
    _auditor_section(ctx, now, show_gold=user.role in ADMINS)
    st.caption(f"Updated {time.strftime('%H:%M:%S', time.gmtime(now))} UTC · charts in UTC")


def _live_candidates(ctx: DashboardContext, user: User, model: str) -> None:
    """Candidate vs live, rerun on its own timer: its pairs and what the gate would decide move
    with the audits (the gate on a few thousand pairs takes tens of milliseconds)."""
    auth_ui.recheck(ctx.store.accounts, user)  # a timed rerun skips current_user: who is this now?
    if not shows_gold_telling_counts(user):  # its pairs count the audits of traffic, not gold
        st.subheader("Candidate vs live")
        st.caption(AUDITOR_HIDDEN)
        return
    versions.candidate_section(ctx, model)


def _queue_section(ctx: DashboardContext, now: float, counts: bool = True) -> None:
    """``counts``: the queue's depth and age and the outbox too (an auditor's verdict on traffic
    moves them, one on gold does not); verdicts count gold and traffic alike."""
    st.subheader("Queue")
    stats = ctx.store.store_stats(now, throughput_window_s=WINDOW_S)
    if not counts:
        st.metric("Verdicts, last hour", f"{sum(stats.auditor_throughput.values()):,}",
                  help="Accept, correct and reject (skips not counted)")
        st.caption(f"Waiting items, their age and unpublished verdicts: {AUDITOR_HIDDEN[0].lower()}{AUDITOR_HIDDEN[1:]}")
        _throughput_chart(ctx, now)
        return
    depth = sum(q.depth for q in stats.queue)
    oldest = max((q.oldest_age_s for q in stats.queue), default=0.0)
    decided = sum(stats.auditor_throughput.values())
    cols = st.columns(4)
    cols[0].metric("Waiting items", f"{depth:,}", help="Deferred items and QC samples without a verdict (gold excluded)")
    cols[1].metric("Oldest item", human_duration(oldest), help="How long the oldest waiting item has been in the store")
    cols[2].metric("Verdicts, last hour", f"{decided:,}", help="Accept, correct and reject (skips not counted)")
    cols[3].metric("Unpublished verdicts", f"{stats.outbox_pending:,}", help="Recorded, not yet acknowledged by Kafka")
    if stats.queue:
        st.dataframe(
            [{"model": q.model, "version": q.model_version, "route": q.route.value, "waiting": q.depth,
              "oldest": human_duration(q.oldest_age_s)} for q in sorted(stats.queue, key=lambda q: (q.model, q.model_version))],
            hide_index=True,
        )  # fmt: skip
    _throughput_chart(ctx, now)


def _throughput_chart(ctx: DashboardContext, now: float) -> None:
    series = ctx.store.throughput_series(THROUGHPUT_BUCKET_S, since_s=now - WINDOW_S)
    if series:
        st.markdown("**Verdicts per minute**, last hour")
        st.altair_chart(charts.throughput_chart(series, THROUGHPUT_BUCKET_S, (now - WINDOW_S, now)), width="stretch")


def _quality_section(ctx: DashboardContext, now: float, counts: bool = True) -> None:
    """``counts``: the audits and what they prove too (error, false-discovery rate, budget,
    CUSUM); without, coverage and the KS drift of confidences, which no verdict moves."""
    st.subheader("Quality of auto-accepted answers")
    history = ctx.qc_history(since_s=now - 24 * 3600.0)
    if not history:
        st.info("No QC statistics yet: the monitor process records them while the stream runs.")
        return
    latest = {(p.qc.model, p.qc.version): p.qc for p in history}  # oldest first: the newest wins
    coverage_rows = [{"t_s": p.t_s, "model": f"{p.qc.model} v{p.qc.version}", "coverage": p.qc.coverage}
                     for p in history if p.qc.coverage is not None]  # fmt: skip
    if not counts:
        st.markdown("**Coverage** (share auto-accepted)")
        st.altair_chart(charts.coverage_chart(coverage_rows), width="stretch")
        st.caption(f"The audited error, the budget and the CUSUM on audited errors: {AUDITOR_HIDDEN[0].lower()}"
                   f"{AUDITOR_HIDDEN[1:]}")
        st.markdown("**Drift** · KS test of live confidences against the card's reference")
        st.dataframe([{k: v for k, v in _drift_row(q).items() if k in DRIFT_WITHOUT_AUDITS} for q in latest.values()],
                     hide_index=True)  # fmt: skip
        return
    left, right = st.columns(2)
    with left:
        st.markdown("**Coverage** (share auto-accepted)")
        st.altair_chart(charts.coverage_chart(coverage_rows), width="stretch")
    with right:
        st.markdown("**Audited error** with its 95% confidence sequence (valid at every audit) · red tick: budget")
        rows = error_rows(latest.values())
        if rows:
            st.altair_chart(charts.error_interval_chart(rows), width="stretch")
            if any(r["model"].endswith(WHOLE_ANSWERS) for r in rows):
                st.caption(f"{WHOLE_ANSWERS.strip(' ()')}: a detector's answers with any box wrong, shown without a "
                           "budget tick — its budget is the false-discovery rate of its boxes, below.")
        else:
            st.info("No QC sample audited yet.")
        part_rows = part_fdr_rows(latest.values())
        if part_rows:
            st.markdown("**False-discovery rate of auto-accepted boxes** (a detector's card promises this rate) "
                        "with its 95% confidence sequence · red tick: budget")
            st.altair_chart(charts.error_interval_chart(part_rows, "false-discovery rate of auto-accepted boxes"),
                            width="stretch")
        for q in latest.values():
            kind, text = budget_verdict(q)
            getattr(st, kind)(text)
    st.markdown("**Drift** · KS test of live confidences against the card's reference, CUSUM on audited errors")
    st.dataframe([_drift_row(q) for q in latest.values()], hide_index=True)


WHOLE_ANSWERS = " (whole answers)"
DRIFT_WITHOUT_AUDITS = ("model", "predictions", "KS statistic", "KS p-value")  # the drift columns no verdict moves


def error_rows(snapshots) -> list[dict]:
    """Chart rows of the audited error of whole answers. A version whose budget judges the
    false-discovery rate of its boxes (a detector) is labelled so and drawn without a budget tick:
    its whole-answer error is not what that budget bounds."""
    rows = []
    for q in snapshots:
        if not q.audited:
            continue
        on_parts = q.part_fdr_low is not None
        rows.append({"model": f"{q.model} v{q.version}" + (WHOLE_ANSWERS if on_parts else ""), "error": q.error_estimate,
                     "ci_low": q.ci_low, "ci_high": q.ci_high, "budget": None if on_parts else q.budget,
                     "audits": q.audited})  # fmt: skip
    return rows


def part_fdr_rows(snapshots) -> list[dict]:
    """Chart rows of the versions whose budget judges the false-discovery rate of accepted parts
    (a detector's boxes) and that have audited parts."""
    return [{"model": f"{q.model} v{q.version}", "error": q.part_fdr_estimate, "ci_low": q.part_fdr_low,
             "ci_high": q.part_fdr_high, "budget": q.budget, "audits": q.parts_audited}
            for q in snapshots if q.parts_audited and q.part_fdr_low is not None]


def budget_verdict(q: ModelQC) -> tuple[str, str]:
    """(Streamlit message kind, text): what the audits prove about the version's error budget (for
    a detector: the false-discovery rate of its auto-accepted boxes)."""
    name = md_text(f"{q.model} v{q.version}")  # drawn as markdown; model names come with the items
    if q.budget is None or q.budget_state in (None, "not_judged"):
        return "info", f"{name}: no error budget on its card (target risk): not judged"
    if q.part_fdr_low is not None:
        rate, low, high = "false-discovery rate of accepted boxes", q.part_fdr_low, q.part_fdr_high
        counted = f"{q.parts_audited or 0:,} boxes in {q.audited:,} audits"
    else:
        rate, low, high, counted = "error rate", q.ci_low, q.ci_high, f"{q.audited:,} audits"
    between = f"{low:.2%} ≤ {'FDR' if q.part_fdr_low is not None else 'error'} ≤ {high:.2%}, {counted}{order_note(q)}"
    if q.budget_state == "over_budget":
        tip = f"; suggested threshold {q.suggested_threshold:.3f}" if q.suggested_threshold is not None else ""
        return "error", f"{name}: **over budget** — the {rate} is shown above {q.budget:.2%} ({between}){tip}"
    if q.budget_state == "within_budget":
        return "success", f"{name}: **within budget, verified** — the {rate} is shown below {q.budget:.2%} ({between})"
    more = (f"; about {q.audits_to_settle:,} more audit{'' if q.audits_to_settle == 1 else 's'} would settle it if the {rate} stays where it is"
            if q.audits_to_settle else "; the estimate sits on the budget: many more audits are needed")
    return "info", f"{name}: budget {q.budget:.2%} **not yet known** ({between}){more}"


def order_note(q: ModelQC) -> str:
    """What the stream order of the audits holds back or gave up (docs/qc-statistics.md, "The
    order of the audits"); empty when nothing."""
    notes = []
    if q.audits_waiting:
        notes.append(f"{q.audits_waiting:,} more verdicts wait for an earlier QC sample's")
    if q.qc_released_unaudited:
        notes.append(f"{q.qc_released_unaudited:,} QC samples released unaudited (the interval counts them "
                     "wrong for its upper end, right for its lower)")
    if q.audits_unplaced:
        notes.append(f"{q.audits_unplaced:,} verdicts without a place in the stream left out")
    return "".join(f"; {n}" for n in notes)


def _drift_row(q: ModelQC) -> dict:
    return {
        "model": f"{q.model} v{q.version}",
        "predictions": q.predictions,
        "audits": q.audited,
        "KS statistic": q.ks_statistic,
        "KS p-value": q.ks_pvalue,
        "CUSUM (nats)": q.cusum_statistic,
        "CUSUM alarm": "ALARM" if q.cusum_alarm else "ok",
        "status": q.reason,
    }


def _model_card_sections(ctx: DashboardContext, model: str) -> None:
    card = ctx.card(model)
    if card is None:
        st.info(f"{md_text(model)} has no model card in the registry ({md_text(ctx.registry.root)}).")
        return
    triage = card.triage
    st.subheader(f"{card.name} v{card.version} · {card.task}")
    cols = st.columns(4)
    cols[0].metric("Auto-accept threshold", f"{triage.threshold:.3f}", help=f"confidence kind: {triage.confidence_kind}")
    cols[1].metric("Certified risk", "—" if triage.certified_risk is None else f"{triage.certified_risk:.2%}",
                   help=f"method: {triage.method}; target {triage.target_risk}, delta {triage.delta}")  # fmt: skip
    cols[2].metric("Certified coverage", "—" if triage.coverage is None else f"{triage.coverage:.1%}")
    # Text, not a metric: a metric's value is cut to the column ("coverage-gri…"), and the method's
    # whole name is what tells how the threshold was chosen.
    cols[3].caption("Certified by", help="how the threshold was chosen (see docs/qc-statistics.md)")
    cols[3].markdown(f"**{md_text(triage.method)}**")
    left, right = st.columns(2)
    with left:
        st.markdown("**Risk–coverage curve** (held-out test split, measured at training) · red: risk budget · "
                    "grey: certified operating point")
        if card.risk_coverage:
            budget = triage.target_risk if triage.target_risk is not None else triage.certified_risk
            st.altair_chart(charts.risk_coverage_chart(card.risk_coverage, triage.coverage, budget), width="stretch")
        else:
            st.caption("This card carries no risk-coverage curve.")
    with right:
        cost_section(card)


def _auditor_section(ctx: DashboardContext, now: float, show_gold: bool) -> None:
    """Throughput and agreement for everyone; gold-item scores for admins only (an auditor who
    saw their gold count move after a verdict would know which item was gold)."""
    st.subheader("Auditors")
    throughput = ctx.store.auditor_throughput(now - WINDOW_S)
    gold = ctx.store.gold_accuracy() if show_gold else {}
    agreement = ctx.store.agreement()
    left, right = st.columns(2)
    with left:
        st.markdown("**Verdicts per auditor, last hour**")
        if throughput:
            st.altair_chart(charts.bar_chart(throughput, "verdicts"), width="stretch")
        else:
            st.caption("No verdicts in the last hour.")
    with right:
        st.markdown("**Gold-item accuracy**")
        scored = {f"{g.auditor} (n={g.n})": g.accuracy for g in gold.values() if g.n}
        if not show_gold:
            st.caption("Gold-item scores are shown to admins only.")
        elif scored:
            st.altair_chart(charts.bar_chart(scored, "share of gold items answered right", percent=True),
                            width="stretch")  # fmt: skip
        else:
            st.caption("No gold item answered yet.")
    cols = st.columns(3)
    cols[0].metric("Double-reviewed items", f"{agreement.n_items:,}")
    cols[1].metric("Agreement", "—" if not agreement.n_items else f"{agreement.percent:.1%}")
    cols[2].metric("Cohen's kappa", "—" if not agreement.n_items or math.isnan(agreement.kappa) else f"{agreement.kappa:.2f}",
                   help="Agreement beyond chance: 1 perfect, 0 no better than chance")  # fmt: skip

