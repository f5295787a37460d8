"""The paired comparison of a candidate model version with the live one on the same audited items.

Every audited item (a deferred answer, a QC sample) of the live version that the candidate also
answered in shadow is one *pair*: the auditor's verdict says whether the live answer was wrong,
and whether the candidate's was (each kind's own answer equality, store/records.py). Only the
discordant pairs carry information about the difference of the two error rates:

* ``b``: the candidate wrong where the live version was right (probability ``p10``),
* ``c``: the candidate right where the live version was wrong (probability ``p01``),

and the difference of error rates is ``p_cand - p_live = p10 - p01``. The gate asks whether the
candidate is *not worse* than live by more than a stated ``margin``:

    H0: p10 - p01 >= margin   (worse)        against        H1: p10 - p01 < margin

**The bound is a confidence sequence**, because people look whenever they like: the dashboard
shows what ``auditstream promote`` would decide after every audit, and whoever runs the command
when it shows PROMOTE has chosen the moment after seeing the data. A bound valid at one fixed
sample size does not survive that (a candidate worse by exactly the margin, watched after every
compared request up to 20,000, was ever shown PROMOTE in 15.2% of runs at delta 5%). Pair ``j``
is ``Z_j = +1`` (b), ``-1`` (c) or ``0``, with mean ``p10 - p01``. For a candidate increase
``m``, a gambler betting the share ``s`` of his wealth that the mean is below ``m`` holds

    K_n(m; s) = prod_j (1 + s (m - Z_j) / (1 - m))            (0 < s < 1: never bankrupt)

which is a nonnegative supermartingale with ``K_0 = 1`` whenever ``E[Z_j | past] >= m``
(Waudby-Smith & Ramdas, "Estimating means of bounded random variables by betting", JRSS-B
2023; the same gamblers as qc/sequential.py). The gate holds a fixed mixture of :data:`STAKES`
(weights proportional to ``s``), ``K_n(m) = sum_s w_s K_n(m; s)``, still such a supermartingale,
so by Ville's inequality it *ever* reaches ``1/delta`` with probability at most ``delta``. Then

    U_n = the smallest m with K_n(m) >= 1/delta      (K_n(m) increases with m)

satisfies ``U_n >= p10 - p01`` at every ``n`` at once with probability at least ``1 - delta``,
and the gate promotes when ``U_n < margin``: **a candidate worse by the margin or more is
promoted with probability at most delta however often anyone looks and whenever they act**, and
looking spends nothing (:func:`look_delta` returns all of ``delta`` for every look). The
guarantee needs no independence across pairs, only that each pair's conditional mean given the
ones before it is on the null side. The bound is simultaneous over ``m`` too, so it also holds
for a margin picked after seeing ``U_n``. Fixed stakes make ``K_n`` a function of the counts
``(b, c, n)`` alone -- no order, nothing to remember between looks -- and decreasing in every
``Z_j``. *Which* pairs are counted must not depend on their outcomes, though: the audited pairs
are counted over a prefix of the store's ingest order, pairs still waiting for a verdict as ``b``
(:func:`qc.promotion.pairs_by_stratum`), not over whichever verdicts exist. So a count that overstates some ``Z_j`` (an unaudited disagreement counted as ``b``,
:func:`traffic_counts`) only raises ``U_n``, and the bound stays valid when later verdicts
lower it. A candidate that agrees with live everywhere passes once 207 pairs are audited at
margin 2%, delta 5% (:func:`pairs_needed`); the old fixed-look bound needed 208 at its first
look and 276 at its second.

**Strata.** Audited items over-represent what the live version found hard (every deferred item,
a ``qc_rate`` share of the rest). A candidate not worse on the audited mix could still be worse
on the easy auto-accepted items. With ``per_route`` (the default) the gate tests each route that
has audited items -- deferred (HUMAN) and QC samples (AUTO_QC) -- on its own, each at ``delta /
(number of routes)``, and promotes only when every route passes: not worse in each route is not
worse on any mixture of them, i.e. on the whole traffic. A candidate worse by the margin on the
traffic is worse by it in some route, whose sequence at its share (at most ``delta``, however the
number of routes grows) must then fail for it to pass. (Under risk-weighted QC sampling the
AUTO_QC stratum over-represents the less confident auto answers; the test speaks about that mix.)

**All traffic, not only the audited items** (:func:`traffic_counts`). A shadow that answers each
request beside a copy of the live version records whether the two answers are the same
(serving/consumer.py). Where they are, both versions are right or both wrong: the pair is
concordant and needs no audit. Where they differ, a verdict on the request settles ``b`` or
``c``; a disagreement nobody audited is counted as ``b`` (candidate wrong, live right), the worst
case, so the bound stays valid whatever the truth was. Every request the shadow compared is then
a pair: the sample *is* the traffic (on the certify side of the request-id split for a candidate
that learnt from verdicts, a hash-chosen half independent of the answers), so one stratum,
``traffic``, speaks for all of it and no per-route split is needed. A candidate that agrees with
live everywhere passes once 207 requests were compared (margin 2%, delta 5%), where the audited
pairs alone needed about that many *audits* in every route.

:func:`pairs_needed` says how many pairs would settle a stratum if its discordance rates stayed
where they are (none: its estimate is at or over the margin, more audits will not help).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

MAX_PAIRS = 10_000_000  # pairs_needed stops searching here

# The mixture's stakes: shares of the wealth bet on one pair (scaled by 1/(1 - m)), on an even
# grid of (0, 0.95), weighted by the stake so that bold bets, which settle an agreeing candidate
# fastest, carry the most weight. Fixed before any data: the weights are the mixture's prior.
STAKES = (np.arange(40) + 0.5) / 40 * 0.95
_LOG_WEIGHTS = np.log(STAKES / STAKES.sum())
_LOG_LOSS = np.log1p(-STAKES)  # a pair that counts against the candidate (+1), whatever m
_GRID, _REFINEMENTS = 63, 6  # the bound to 2 / 64^6 ~ 3e-11: far below the 4 decimals anyone reads


@dataclass(frozen=True)
class PairedCounts:
    """The pairs of one stratum (a route, or ``"all"``)."""

    stratum: str
    n: int  # audited items both versions answered
    candidate_only_wrong: int  # b: candidate wrong, live right
    live_only_wrong: int  # c: candidate right, live wrong
    both_wrong: int = 0  # for the record; carries no information about the difference
    unaudited_disagreements: int = 0  # of b: answers that differ where nobody audited (counted as b)
    waiting: int = 0  # of b: audited pairs still waiting for their verdict (counted as b; qc.promotion.pairs_by_stratum)
    not_counted: int = 0  # pairs after the stream-order point the counts stop at (not in n)

    def __post_init__(self) -> None:
        if min(self.n, self.candidate_only_wrong, self.live_only_wrong, self.both_wrong,
               self.unaudited_disagreements, self.waiting, self.not_counted) < 0 or \
                self.candidate_only_wrong + self.live_only_wrong + self.both_wrong > self.n or \
                self.unaudited_disagreements + self.waiting > self.candidate_only_wrong:
            raise ValueError(f"bad paired counts {self}: need 0 <= b + c + both <= n and unaudited + waiting <= b")


@dataclass(frozen=True)
class PairedGateConfig:
    """How strict the paired comparison is (docs/qc-statistics.md, "The paired promotion gate")."""

    margin: float = 0.02  # the candidate may be at most this much worse (absolute error rate)
    delta: float = 0.05  # error probability over every look at one candidate, however many (anytime-valid)
    per_route: bool = True  # test deferred items and QC samples separately (valid for all traffic)

    def __post_init__(self) -> None:
        if not 0.0 < self.margin < 1.0:
            raise ValueError(f"margin={self.margin} must be in (0, 1): the largest tolerated increase of the error rate")
        if not 0.0 < self.delta < 1.0:
            raise ValueError(f"delta={self.delta} must be in (0, 1)")


@dataclass(frozen=True)
class StratumResult:
    stratum: str
    n: int
    candidate_only_wrong: int
    live_only_wrong: int
    both_wrong: int
    difference: float  # (b - c) / n: the estimated increase of the error rate (nan without pairs)
    upper: float  # anytime-valid upper bound of p_cand - p_live at delta_used (module docstring)
    delta_used: float
    passes: bool  # the bound is under the margin: K_n(margin) >= 1 / delta_used
    pairs_needed: int | None  # pairs that would pass at the current rates (None: never)
    unaudited_disagreements: int = 0  # of candidate_only_wrong: counted so for want of a verdict
    waiting: int = 0  # of candidate_only_wrong: audited pairs still waiting for their verdict
    not_counted: int = 0  # pairs after the stream-order point the counts stop at

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def look_delta(delta: float, look: int) -> float:
    """The delta of the ``look``-th decision about one candidate: all of it, at every look. The
    bound is a confidence sequence (module docstring), so asking again spends nothing; kept so
    that every decision records the delta it was taken at."""
    if look < 1:
        raise ValueError(f"look={look} must be >= 1 (the first decision is look 1)")
    return delta


def log_wealth(b: Any, c: Any, n: Any, m: Any) -> Any:
    """``log K_n(m)``: the mixture gambler's log-wealth after ``n`` pairs, ``b`` of them +1 and
    ``c`` of them -1, betting that the mean increase is below ``m`` (``-1 <= m < 1``). Numbers or
    arrays (broadcast together): a float for numbers."""
    b, c, n, m = (np.asarray(x, dtype=np.float64)[..., None] for x in (b, c, n, m))
    lam = STAKES / (1.0 - m)
    terms = _LOG_WEIGHTS + b * _LOG_LOSS + c * np.log1p(lam * (1.0 + m)) + (n - b - c) * np.log1p(lam * m)
    top = terms.max(axis=-1)
    wealth = top + np.log(np.exp(terms - top[..., None]).sum(axis=-1))
    return float(wealth) if wealth.ndim == 0 else wealth


def shown_below(b: int, c: int, n: int, m: float, delta: float) -> bool:
    """Whether the pairs show ``p10 - p01 < m`` at level ``delta``, valid at every ``n`` at once."""
    return log_wealth(b, c, n, m) >= math.log(1.0 / delta)


def difference_upper_bound(b: int, c: int, n: int, delta: float) -> float:
    """Anytime-valid upper bound (level 1 - delta, at every ``n`` at once) of ``p10 - p01`` from
    ``b`` and ``c`` discordant pairs of ``n``: the smallest ``m`` the pairs show the increase below
    (1.0 when none; -1 is never shown), rounded up so that it never claims more than they show."""
    threshold = math.log(1.0 / delta)
    low, high = -1.0, 1.0 - 1e-12  # never shown at low; shown at high, or nothing is
    if log_wealth(b, c, n, high) < threshold:
        return 1.0
    for _ in range(_REFINEMENTS):  # K_n(m) increases with m: the first m shown on a finer grid each time
        grid = np.linspace(low, high, _GRID + 2)[1:-1]
        shown = np.flatnonzero(log_wealth(b, c, n, grid) >= threshold)
        first = int(shown[0]) if shown.size else _GRID
        low, high = (float(grid[first - 1]) if first > 0 else low), (float(grid[first]) if first < _GRID else high)
    return high


def pairs_needed(b: int, c: int, n: int, margin: float, delta: float) -> int | None:
    """About how many pairs would bring the bound under ``margin`` if the discordance rates stayed
    at ``b/n`` and ``c/n`` (no pairs yet: as if there were no discordance). None when the estimate
    is at or over the margin, or more than :data:`MAX_PAIRS` would be needed."""
    rate_b, rate_c = (b / n, c / n) if n else (0.0, 0.0)
    if rate_b - rate_c >= margin:
        return None

    def passes(k: int) -> bool:
        return shown_below(min(k, round(rate_b * k)), min(k, round(rate_c * k)), k, margin, delta)

    high = max(1, n)
    while not passes(high):
        high *= 2
        if high > MAX_PAIRS:
            return None
    low = 0  # passes(low) is false (or low is 0)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if passes(mid) else (mid, high)
    return high


def judge_stratum(counts: PairedCounts, margin: float, delta: float) -> StratumResult:
    """The bound and verdict of one stratum at ``delta``."""
    b, c, n = counts.candidate_only_wrong, counts.live_only_wrong, counts.n
    upper = difference_upper_bound(b, c, n, delta)
    passes = shown_below(b, c, n, margin, delta)
    return StratumResult(counts.stratum, n, b, c, counts.both_wrong, (b - c) / n if n else float("nan"), upper, delta,
                         passes, n if passes else pairs_needed(b, c, n, margin, delta),
                         counts.unaudited_disagreements, counts.waiting, counts.not_counted)


TRAFFIC = "traffic"  # the stratum of :func:`traffic_counts`


def traffic_counts(pairs: list[tuple[bool, tuple[bool, bool] | None]]) -> PairedCounts:
    """One stratum from every compared request: ``(same answer, verdict)`` with ``verdict`` =
    ``(live wrong, candidate wrong)`` where the answers differ and an auditor settled it, else
    None. The same answer is a concordant pair; an unsettled disagreement counts as ``b``."""
    b = c = both = unaudited = 0
    for same, verdict in pairs:
        if same:
            continue
        if verdict is None:
            b, unaudited = b + 1, unaudited + 1
            continue
        live_wrong, cand_wrong = verdict
        b += cand_wrong and not live_wrong
        c += live_wrong and not cand_wrong
        both += live_wrong and cand_wrong
    return PairedCounts(TRAFFIC, len(pairs), b, c, both, unaudited)


def paired_gate(strata: list[PairedCounts], config: PairedGateConfig, look: int = 1) -> list[StratumResult]:
    """Judge every stratum at its share of delta (an empty list: one empty stratum). ``look``, which
    decision on the candidate this is, changes nothing: every look gets all of delta."""
    strata = strata or [PairedCounts("all", 0, 0, 0)]
    delta = look_delta(config.delta, look) / len(strata)
    return [judge_stratum(s, config.margin, delta) for s in strata]
