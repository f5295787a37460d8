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

and rejects H0 -- promotes -- when the exact upper bound

    U = ClopperPearson_upper(b; n, delta/2) - ClopperPearson_lower(c; n, delta/2)

is below ``margin``. Both one-sided bounds are exact, so by the union bound ``U >= p10 - p01``
with probability at least ``1 - delta`` whatever the nuisance rates: a candidate worse by the
margin or more is promoted with probability at most ``delta``. Unlike McNemar's test conditioned
on the discordant pairs (which needs discordance, and so can never pass an identical candidate),
it uses all ``n`` pairs: a candidate that agrees with live everywhere passes once
``n > ln(delta/2) / ln(1 - margin)`` pairs are audited (217 at margin 2%, delta 2.5%).

Every data-dependent choice is paid for in ``delta`` (:func:`look_delta`, :func:`stratum_delta`):

* **Looks.** A person (or a bench) may ask again as audits accumulate. The ``k``-th decision on
  one candidate uses ``delta * 6 / (pi^2 k^2)``; these sum to ``delta`` over all looks, so asking
  until it passes does not inflate the error.
* **Strata.** Audited items over-represent what the live version found hard (every deferred item,
  a ``qc_rate`` share of the rest). A candidate not worse on the audited mix could still be worse
  on the easy auto-accepted items. With ``per_route`` (the default) the gate tests each route
  that has audited items -- deferred (HUMAN) and QC samples (AUTO_QC) -- on its own, each at
  ``delta / (number of routes)``: not worse in each route is not worse on any mixture of them,
  i.e. on the whole traffic. (Under risk-weighted QC sampling the AUTO_QC stratum over-represents
  the less confident auto answers; the test speaks about that mix.)

**All traffic, not only the audited items** (:func:`traffic_counts`). A shadow that answers each
request beside a copy of the live version records whether the two answers are the same
(serving/consumer.py). Where they are, both versions are right or both wrong: the pair is
concordant and needs no audit. Where they differ, a verdict on the request settles ``b`` or
``c``; a disagreement nobody audited is counted as ``b`` (candidate wrong, live right), the worst
case, so the bound stays valid whatever the truth was. Every request the shadow compared is then
a pair: the sample *is* the traffic (on the certify side of the request-id split for a candidate
that learnt from verdicts, a hash-chosen half independent of the answers), so one stratum,
``traffic``, speaks for all of it and no per-route split is needed. A candidate that agrees with
live everywhere passes once about 208 requests were compared (the first look at margin 2%, delta
5%), where the audited pairs alone needed about that many *audits* in every route.

:func:`pairs_needed` says how many pairs would settle a stratum if its discordance rates stayed
where they are (none: its estimate is at or over the margin, more audits will not help).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from qc.binomial import lower_bound, upper_bound

MAX_PAIRS = 10_000_000  # pairs_needed stops searching here


@dataclass(frozen=True)
class PairedCounts:
    """The pairs of one stratum (a route, or ``"all"``)."""

    stratum: str
    n: int  # audited items both versions answered
    candidate_only_wrong: int  # b: candidate wrong, live right
    live_only_wrong: int  # c: candidate right, live wrong
    both_wrong: int = 0  # for the record; carries no information about the difference
    unaudited_disagreements: int = 0  # of b: answers that differ where nobody audited (counted as b)

    def __post_init__(self) -> None:
        if min(self.n, self.candidate_only_wrong, self.live_only_wrong, self.both_wrong,
               self.unaudited_disagreements) < 0 or \
                self.candidate_only_wrong + self.live_only_wrong + self.both_wrong > self.n or \
                self.unaudited_disagreements > self.candidate_only_wrong:
            raise ValueError(f"bad paired counts {self}: need 0 <= b + c + both <= n and unaudited <= b")


@dataclass(frozen=True)
class PairedGateConfig:
    """How strict the paired comparison is (docs/qc-statistics.md, "The paired promotion gate")."""

    margin: float = 0.02  # the candidate may be at most this much worse (absolute error rate)
    delta: float = 0.05  # total error probability over every look at one candidate
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
    upper: float  # exact upper bound of p_cand - p_live at delta_used
    delta_used: float
    passes: bool  # upper < margin
    pairs_needed: int | None  # pairs that would pass at the current rates (None: never)
    unaudited_disagreements: int = 0  # of candidate_only_wrong: counted so for want of a verdict

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def look_delta(delta: float, look: int) -> float:
    """The share of ``delta`` spent on the ``look``-th decision about one candidate (sums to delta)."""
    if look < 1:
        raise ValueError(f"look={look} must be >= 1 (the first decision is look 1)")
    return delta * 6.0 / (math.pi**2 * look**2)


def difference_upper_bound(b: int, c: int, n: int, delta: float) -> float:
    """Exact upper bound (level 1 - delta) of ``p10 - p01`` from ``b`` and ``c`` discordant pairs of ``n``."""
    if n == 0:
        return 1.0
    return upper_bound(b, n, delta / 2.0) - lower_bound(c, n, delta / 2.0)


def pairs_needed(b: int, c: int, n: int, margin: float, delta: float) -> int | None:
    """About how many pairs would bring the bound under ``margin`` if the discordance rates stayed
    at ``b/n`` and ``c/n`` (no pairs yet: as if there were no discordance). None when the estimate
    is at or over the margin, or more than :data:`MAX_PAIRS` would be needed."""
    rate_b, rate_c = (b / n, c / n) if n else (0.0, 0.0)
    if rate_b - rate_c >= margin:
        return None

    def passes(m: int) -> bool:
        return difference_upper_bound(min(m, round(rate_b * m)), min(m, round(rate_c * m)), m, delta) < margin

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
    passes = upper < margin
    return StratumResult(counts.stratum, n, b, c, counts.both_wrong, (b - c) / n if n else float("nan"), upper, delta,
                         passes, n if passes else pairs_needed(b, c, n, margin, delta),
                         counts.unaudited_disagreements)


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
    """Judge every stratum at its share of this look's delta (an empty list: one empty stratum)."""
    strata = strata or [PairedCounts("all", 0, 0, 0)]
    delta = look_delta(config.delta, look) / len(strata)
    return [judge_stratum(s, config.margin, delta) for s in strata]
