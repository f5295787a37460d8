"""The promotion decision: may a candidate version of a model replace the live one?

A pure function of the two model cards and the paired counts (:mod:`qc.paired`); the monitor
(monitor/promotion.py) reads the counts from the store, records the decision and moves ``LIVE``.

Decision table (first matching row wins):

=================================================================  ========  ======================
condition                                                          promote   code
=================================================================  ========  ======================
the candidate is the live version                                  no        already_live
the live card has a risk target and the candidate has no
certificate (certified risk, target)                               no        no_certificate
the candidate's certified risk is over its own target              no        certificate_misses_target
the candidate's target is looser than the live one's               no        target_looser_than_live
some stratum's estimated increase of the error is >= the margin    no        worse
some stratum has too few pairs to settle it                        no        too_few_pairs
every stratum's anytime-valid upper bound is under the margin      yes       not_worse
=================================================================  ========  ======================

"Certificate holds at the target" reads the candidate's own card (``triage.certified_risk <=
triage.target_risk``, both set); a promotion may not loosen the promise the live card made, so
the candidate's target must be at most the live one's. Kinds whose cards carry no risk target
(an RL policy's visited-state quantile threshold) are judged on the paired comparison alone
when the live card has no target either; the reason says so.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from auditstream.registry import ModelCard
from qc.paired import TRAFFIC, PairedCounts, PairedGateConfig, StratumResult, look_delta, paired_gate


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    code: str
    reason: str
    model: str
    candidate: str  # version
    live: str  # version
    certificate: dict[str, Any]
    strata: list[dict[str, Any]] = field(default_factory=list)
    pairs_needed: int | None = None  # too_few_pairs: more paired audits needed (most over the strata)
    config: dict[str, Any] = field(default_factory=dict)
    look: int = 1
    delta_look: float = 0.0
    canary_share: float = 0.0  # a canary decision: the share of requests the candidate now answers

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        verdict = "PROMOTE" if self.promote else f"CANARY {self.canary_share:.1%}" if self.canary_share else "KEEP LIVE"
        return f"{self.model}: v{self.candidate} vs live v{self.live}: {verdict} ({self.code}): {self.reason}"


def certificate_check(candidate: ModelCard, live: ModelCard) -> tuple[str | None, str, dict[str, Any]]:
    """(refusal code or None, reason, the numbers) of the certificate rows of the table."""
    c, lv = candidate.triage, live.triage
    facts = {"candidate_target_risk": c.target_risk, "candidate_certified_risk": c.certified_risk,
             "candidate_coverage": c.coverage, "candidate_delta": c.delta, "candidate_method": c.method,
             "live_target_risk": lv.target_risk}
    if c.certified_risk is None or c.target_risk is None:
        if lv.target_risk is not None:
            return "no_certificate", (f"the live card promises risk <= {lv.target_risk:g}; the candidate's card has no "
                                      f"certificate (method {c.method!r})"), facts
        return None, "neither card carries a risk target: judged on the paired comparison alone", facts
    if c.certified_risk > c.target_risk:
        return "certificate_misses_target", (f"certified risk {c.certified_risk:.4g} > its target "
                                             f"{c.target_risk:.4g}"), facts
    if lv.target_risk is not None and c.target_risk > lv.target_risk:
        return "target_looser_than_live", (f"candidate target {c.target_risk:g} is looser than the live target "
                                           f"{lv.target_risk:g}"), facts
    return None, (f"certified risk {c.certified_risk:.4g} <= target {c.target_risk:g} at coverage "
                  f"{c.coverage if c.coverage is not None else float('nan'):.3g}"), facts


def decide(candidate: ModelCard, live: ModelCard, strata: list[PairedCounts], config: PairedGateConfig,
           look: int = 1) -> PromotionDecision:
    """Apply the decision table above; ``strata`` as :func:`pairs_by_stratum` of the store's pairs."""
    base = dict(model=candidate.name, candidate=candidate.version, live=live.version, config=asdict(config),
                look=look, delta_look=look_delta(config.delta, look))
    if candidate.version == live.version:
        return PromotionDecision(False, "already_live", f"v{live.version} is the live version", certificate={}, **base)
    refusal, why, facts = certificate_check(candidate, live)
    if refusal is not None:
        return PromotionDecision(False, refusal, why, certificate=facts, **base)
    results = paired_gate(strata, config, look)
    rows = [r.to_dict() for r in results]
    shown = "; ".join(_stratum_text(r) for r in results)
    worse = [r for r in results if r.pairs_needed is None and not r.passes]
    if worse:
        return PromotionDecision(False, "worse", f"{why}; {shown}: not shown within the margin "
                                 f"{config.margin:g}, and more audits would not change that",
                                 certificate=facts, strata=rows, **base)
    short = [r for r in results if not r.passes]
    if short:
        more = max(r.pairs_needed - r.n for r in short)  # type: ignore[operator]
        unit = "compared requests" if any(r.stratum == TRAFFIC for r in short) else "paired audits"
        return PromotionDecision(False, "too_few_pairs", f"{why}; {shown}: about {more:,} more {unit} needed "
                                 f"(in {', '.join(r.stratum for r in short)}) if the discordance stays as it is",
                                 certificate=facts, strata=rows, pairs_needed=more, **base)
    return PromotionDecision(True, "not_worse", f"{why}; {shown}: not worse than live by {config.margin:g} or more "
                             f"(delta {base['delta_look']:.3g} at look {look})", certificate=facts,
                             strata=rows, **base)


def decide_canary(candidate: ModelCard, live: ModelCard, share: float) -> PromotionDecision:
    """May ``candidate`` answer ``share`` of the requests, acting, while it is compared? Its
    certificate must hold (its answers are triaged by its own certified threshold); the paired
    comparison is what the canary and the shadow gather, so it is not required yet. ``share`` 0
    ends a canary (always allowed)."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"canary share {share} must be in [0, 1]")
    base = dict(model=candidate.name, candidate=candidate.version, live=live.version)
    if share == 0.0:
        return PromotionDecision(False, "canary_ended", "no request goes to a canary", certificate={}, **base)
    if candidate.version == live.version:
        return PromotionDecision(False, "already_live", f"v{live.version} is the live version", certificate={}, **base)
    refusal, why, facts = certificate_check(candidate, live)
    if refusal is not None:
        return PromotionDecision(False, refusal, why, certificate=facts, **base)
    return PromotionDecision(False, "canary", f"{why}; v{candidate.version} answers {share:.1%} of the requests",
                             certificate=facts, canary_share=share, **base)


def _stratum_text(r: StratumResult) -> str:
    unaudited = f" ({r.unaudited_disagreements} of them unaudited disagreements)" if r.unaudited_disagreements else ""
    return (f"{r.stratum}: {r.n} pairs, candidate-only wrong {r.candidate_only_wrong}{unaudited}, live-only wrong "
            f"{r.live_only_wrong}, increase <= {r.upper:.4f}")


def pairs_by_stratum(audits: list[tuple[str, bool, bool | None]], per_route: bool) -> list[PairedCounts]:
    """Count (route, live_wrong, candidate_wrong) audits per route (or all together); an audit the
    candidate did not answer (``None``) counts for nothing but still makes its route a stratum, so
    a route the shadow has not reached yet cannot be skipped."""
    counts: dict[str, list[int]] = {}
    for route, live_wrong, cand_wrong in audits:
        row = counts.setdefault(route if per_route else "all", [0, 0, 0, 0])
        if cand_wrong is None:
            continue
        row[0] += 1
        row[1] += cand_wrong and not live_wrong
        row[2] += live_wrong and not cand_wrong
        row[3] += live_wrong and cand_wrong
    return [PairedCounts(s, *row) for s, row in sorted(counts.items())]
