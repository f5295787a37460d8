"""The overview's model-version sections: candidate vs live, and the learning curve.

**Candidate vs live**: for each version that answered in shadow (or is newer than the live one),
its certificate beside the live card's, its pairs (every request it compared with live's answer,
or without such comparisons the paired audits per route: candidate-only wrong, live-only wrong,
disagreements nobody audited, the anytime-valid upper bound of the increase of the error rate) and what
``auditstream promote`` would decide now -- computed by ``monitor.promotion.decide_promotion``, shown,
never recorded -- plus the last decision its ``promotion.json`` records. The bound is a confidence
sequence (qc/paired.py), valid however often this page refreshes, so running ``promote`` the
moment the page shows PROMOTE keeps the gate's delta.

**Learning curve**: every version of the model in the registry, oldest first, with what its card
says: certified coverage, certified risk and target, how it was certified, and the training
summary (whatever scalar facts the card's ``training`` section holds: the examples or verdicts
it learnt from, where a retraining recorded them). Cards without those fields show a dash.
Beside the card, the version's certificate from audited traffic where ``auditstream certify
--from-audits`` wrote one (``audit-certificate.json``: the coverage it certifies at its risk,
from how many audited requests); a file that is not such a certificate shows a dash too.
"""

from __future__ import annotations

import json
import math
from typing import Any

import streamlit as st

from auditstream.errors import ModelNotFound, ModelRefused
from auditstream.registry import ModelCard
from dashboards import charts
from dashboards.context import DashboardContext
from dashboards.markup import md_text
from monitor.promotion import PROMOTION_FILE, decide_promotion, recorded_decisions
from qc.audit_certify import PROPOSAL_FILE
from store.shadow import ShadowAnswers

TRAINING_FACTS = 4  # scalar facts of card.training shown per version


@st.cache_resource(show_spinner=False)
def _shadow_answers(_store: Any, store_id: int) -> ShadowAnswers:
    return ShadowAnswers(_store)  # creates its table once per store, not on every rerun


def cards(ctx: DashboardContext, model: str) -> list[ModelCard]:
    """Every readable card of ``model``, oldest version first."""
    found = []
    for version in ctx.registry.versions(model):
        card = ctx.card(model, version)
        if card is not None:
            found.append(card)
    return found


def live_version(ctx: DashboardContext, model: str) -> str | None:
    try:
        return ctx.registry.default_version(model)
    except (ModelNotFound, ModelRefused):
        return None


def candidate_section(ctx: DashboardContext, model: str) -> None:
    st.subheader("Candidate vs live")
    live = live_version(ctx, model)
    if live is None:
        st.info(f"{md_text(model)} has no version in the registry.")
        return
    shadow = _shadow_answers(ctx.store, id(ctx.store))
    in_shadow = shadow.candidates(model)
    candidates = sorted({v for v in in_shadow if v != live} | {v for v in ctx.registry.versions(model)
                                                                 if int(v) > int(live)}, key=int)
    if not candidates:
        st.caption(f"No candidate: v{live} is live and no other version answers in shadow "
                   f"(`auditstream serve --model {model} --version V --shadow`).")
        return
    for version in candidates:
        try:
            # the next look: all of delta
            decision = decide_promotion(ctx.store, ctx.registry, model, version, shadow=shadow)
            last = last_recorded(ctx, model, version)
        except ModelRefused as e:  # a damaged promotion.json: say so here, the rest of the page stands
            st.warning(md_text(f"v{version}: {e}"))
            continue
        st.markdown(f"**v{version}** vs live **v{live}** · {in_shadow.get(version, 0):,} shadow answers kept")
        kind = "success" if decision.promote else "info" if decision.code == "too_few_pairs" else "warning"
        getattr(st, kind)(f"`auditstream promote` would decide now: **{decision.code}** — {decision.reason}")
        st.dataframe(comparison_rows(decision.to_dict()), hide_index=True)
        if last:
            st.caption(md_text(f"Last recorded decision ({last.get('kind')}): {last['decision'].get('code')} — "
                               f"{last['decision'].get('reason')}"))


def comparison_rows(decision: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per stratum the gate counted: ``traffic`` (every compared request) or a route of
    the paired audits."""
    return [{"pairs of": s["stratum"], "pairs": s["n"], "candidate wrong, live right": s["candidate_only_wrong"],
             "of which unaudited disagreements": s.get("unaudited_disagreements", 0),
             "live wrong, candidate right": s["live_only_wrong"], "both wrong": s["both_wrong"],
             "error increase ≤": round(s["upper"], 4), "pairs needed": s["pairs_needed"]}
            for s in decision.get("strata", [])]


def last_recorded(ctx: DashboardContext, model: str, version: str) -> dict[str, Any] | None:
    records = recorded_decisions(ctx.registry.root / model / version / PROMOTION_FILE)
    return records[-1] if records and "decision" in records[-1] else None


def learning_curve_section(ctx: DashboardContext, model: str) -> None:
    st.subheader("Learning curve")
    versions = cards(ctx, model)
    if not versions:
        st.info(f"{md_text(model)} has no readable model card in the registry.")
        return
    live = live_version(ctx, model)
    st.caption("Each version's card: the share it may auto-accept (certified coverage) and the risk it is certified "
               "at, over versions as retraining on the auditors' verdicts publishes them.")
    audits = {card.version: audit_certificate(ctx, model, card.version) for card in versions}
    chart = curve_rows(versions, audits)
    if chart:
        st.altair_chart(charts.learning_curve_chart(chart), width="stretch")
    st.dataframe([version_row(card, live, audits[card.version]) for card in versions], hide_index=True)


def audit_certificate(ctx: DashboardContext, model: str, version: str) -> dict[str, Any] | None:
    """What ``auditstream certify --from-audits`` last wrote beside the version, reduced to
    {certified, coverage, risk, delta, audited}; None without one, or for a file that does not
    hold one (hand-edited, truncated, from another tool: the page shows a dash, never an error)."""
    try:
        cert = json.loads((ctx.registry.root / model / version / PROPOSAL_FILE).read_text())["certificate"]
        found = {"certified": cert["certified"], "coverage": float(cert["estimated_coverage"]),
                 "risk": float(cert["target_risk"]), "delta": float(cert["delta"]), "audited": int(cert["n_audited"])}
    except (OSError, ValueError, KeyError, TypeError, OverflowError):  # OverflowError: int(Infinity)
        return None
    numbers_ok = all(math.isfinite(found[k]) and 0.0 <= found[k] <= 1.0 for k in ("coverage", "risk", "delta"))
    return found if numbers_ok and isinstance(found["certified"], bool) and found["audited"] >= 0 else None


def curve_rows(versions: list[ModelCard], audits: dict[str, dict[str, Any] | None] | None = None) -> list[dict[str, Any]]:
    rows = []
    for card in versions:
        t = card.triage
        cert = (audits or {}).get(card.version)
        for measure, value in (("certified coverage", t.coverage), ("certified risk", t.certified_risk),
                               ("risk target", t.target_risk),
                               ("coverage certified from audits", cert["coverage"] if cert else None)):
            if value is not None:
                rows.append({"version": int(card.version), "measure": measure, "value": float(value)})
    return rows


def version_row(card: ModelCard, live: str | None, audits: dict[str, Any] | None = None) -> dict[str, Any]:
    t = card.triage
    facts = {k: v for k, v in card.training.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
    if audits is None:
        from_audits = "—"
    elif audits["certified"]:
        from_audits = f"{audits['coverage']:.2%} at ≤ {audits['risk']:.2%} (δ {audits['delta']:g}, {audits['audited']} audited)"
    else:
        from_audits = f"nothing at ≤ {audits['risk']:.2%} yet ({audits['audited']} audited)"
    return {"version": card.version, "live": "LIVE" if card.version == live else "",
            "certified coverage": _pct(t.coverage), "certified risk": _pct(t.certified_risk),
            "target": _pct(t.target_risk), "method": t.method, "from audits": from_audits,
            "training": json.dumps(dict(list(sorted(facts.items()))[:TRAINING_FACTS]), default=str) if facts else "—"}


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.2%}"
