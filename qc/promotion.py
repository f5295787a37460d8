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
import numpy as np

from qc.paired import TRAFFIC, PairedCounts, PairedGateConfig, StratumResult, log_wealth, look_delta, paired_gate


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
    waiting = f" ({r.waiting} of them still waiting for a verdict)" if r.waiting else ""
    later = (f"; {r.not_counted} later pairs not counted (stream order: the count stops before a pair still waiting)"
             if r.not_counted else "")
    return (f"{r.stratum}: {r.n} pairs, candidate-only wrong {r.candidate_only_wrong}{unaudited}{waiting}, live-only "
            f"wrong {r.live_only_wrong}, increase <= {r.upper:.4f}{later}")


def pairs_by_stratum(audits: list[tuple], per_route: bool, margin: float | None = None) -> list[PairedCounts]:
    """Count the audited pairs per route (or all together), in the store's ingest order.

    ``audits``: ``(route, live_wrong, candidate_wrong)`` or ``(route, live_wrong, candidate_wrong,
    waiting)``, in the order the store received the items (``items.id``, before any verdict). An
    audit the candidate did not answer (``candidate_wrong`` None) before the first one it did
    answer counts for nothing (the shadow started later, or retention had dropped the request)
    but still makes its route a stratum, so a route the shadow has not reached yet cannot be
    skipped. A ``waiting`` pair (no label yet: no decisive verdict of its last needed review
    round) -- and an audit after the shadow's first answer that it has not answered yet (a shadow answer may come late) -- is
    counted as ``b``: the candidate wrong, live right, the worst case for the candidate, whatever
    its placeholder values. So a late answer or verdict only turns a ``b`` into its true value
    and never inserts a pair into a prefix an earlier look counted.

    **Which pairs count** (docs/qc-statistics.md, "Which audited pairs count"). The gate's wealth
    is a function of the counts, but *which* pairs are counted must not depend on their outcomes:
    the pairs decided so far are chosen by when auditors decide them (hard items take longer, are
    skipped), and counting those alone promoted a candidate worse by exactly the margin in 19% of
    runs against delta = 5%. So each stratum is counted over a prefix of its ingest-order
    sequence, every pair in it still waiting counted as ``b``. Each such count is at most the
    count the true outcomes would give at that prefix, and the wealth falls as ``b`` grows, so it
    is at most that sequence's wealth at that point, whose maximum over all points reaches
    ``1/delta`` with probability ``<= delta``: the gate may take whichever prefix helps the
    candidate most. With ``margin`` given, the prefixes tried are those ending just before each
    waiting pair (the first: no waiting pair counted, the stream-order prefix of monitor/qc_order.py)
    and the whole sequence (every waiting pair as ``b``); the one with the largest wealth at the
    margin is taken (where none has ``K > 1``: the first). Without ``margin``: the stream-order prefix.
    """
    sequences: dict[str, list[tuple[int, int, int, int]]] = {}
    shadow_started = False
    for audit in audits:
        route, live_wrong, cand_wrong = audit[:3]
        waiting = bool(audit[3]) if len(audit) > 3 else False
        sequence = sequences.setdefault(route if per_route else "all", [])
        if cand_wrong is None and not shadow_started:
            continue
        shadow_started = True
        if waiting or cand_wrong is None:
            sequence.append((1, 0, 0, 1))
        else:
            sequence.append((int(bool(cand_wrong) and not live_wrong), int(bool(live_wrong) and not cand_wrong),
                             int(bool(live_wrong) and bool(cand_wrong)), 0))
    return [_stream_counts(stratum, sequence, margin) for stratum, sequence in sorted(sequences.items())]


def _stream_counts(stratum: str, sequence: list[tuple[int, int, int, int]], margin: float | None) -> PairedCounts:
    """The counts of one stratum's ingest-order pairs ``(b, c, both, waiting)`` over the prefix
    :func:`pairs_by_stratum` picks."""
    if not sequence:
        return PairedCounts(stratum, 0, 0, 0)
    flags = np.asarray(sequence, dtype=np.int64)
    totals = np.vstack([np.zeros((1, 4), dtype=np.int64), np.cumsum(flags, axis=0)])  # totals[k]: the first k pairs
    waiting_at = np.flatnonzero(flags[:, 3])
    if margin is None or waiting_at.size == 0:
        cut = int(waiting_at[0]) if waiting_at.size else len(sequence)
    else:
        cuts = np.append(waiting_at, len(sequence))
        wealth = np.atleast_1d(log_wealth(totals[cuts, 0], totals[cuts, 1], cuts, margin))
        # the latest of the best; where no prefix shows anything (K <= 1), the stream-order prefix,
        # so that the pairs still waiting never make the estimate (b - c) / n look worse than the
        # decided ones do (K > 1 needs (b - c) / n < margin: Jensen)
        cut = int(cuts[np.flatnonzero(wealth >= wealth.max())[-1]]) if wealth.max() > 0.0 else int(cuts[0])
    b, c, both, waiting = (int(x) for x in totals[cut])
    return PairedCounts(stratum, cut, b, c, both, waiting=waiting, not_counted=len(sequence) - cut)
