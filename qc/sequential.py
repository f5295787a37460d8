"""Anytime-valid monitoring of the error rate of auto-accepted answers (docs/qc-statistics.md,
"Anytime-valid error monitoring").

People watch the monitor after every audit, so an interval that is valid at one fixed sample size
is not enough: looked at after every audit, a 95% Clopper–Pearson interval leaves the truth
sooner or later with probability near one. This module keeps a *confidence sequence* instead:
a sequence of intervals that contains the true error rate at every audit simultaneously with
probability at least ``1 - alpha``, however often it is looked at and whenever one stops.

How (Waudby-Smith & Ramdas, "Estimating means of bounded random variables by betting", JRSS-B
2023). For a candidate error rate ``m``, audit ``j`` (error ``e_j`` in {0, 1}, drawn for QC with
known probability ``pi_j >= pi_min``) gives

    Y_j(m) = pi_min (e_j - m) / pi_j    in [-m, 1 - m],

whose mean over the audited sample has the sign of ``p - m`` (``p``: the error rate of all
auto-accepted answers; the inverse-probability weight undoes the unequal sampling, and
``pi_min`` keeps ``Y`` bounded). Two gamblers bet on it with stakes fixed before they see the
audit (predictable): the *over* gambler's wealth ``K+_t(m) = prod (1 + l_j Y_j(m))`` with
``l_j >= 0`` is a nonnegative supermartingale whenever ``p <= m``, the *under* gambler's (``l_j
<= 0``) whenever ``p >= m``. By Ville's inequality a supermartingale starting at 1 ever reaches
``2 / alpha`` with probability at most ``alpha / 2``. So:

- ``p > m`` is shown (with error probability <= alpha/2, at any time) once ``K+(m) >= 2/alpha``;
- ``p < m`` is shown once ``K-(m) >= 2/alpha``;
- the confidence sequence at audit ``t`` is every ``m`` of a fine grid not yet shown wrong,
  widened to the neighbouring grid points (so it also covers an ``m`` between grid points).

**A false-discovery rate works the same way** (a detector's auto-accepted boxes). An audited
answer ``j`` then has ``A_j`` accepted parts (boxes), ``F_j`` of them false, at most ``K`` (the
graph's rows), and the rate is ``q = E[F] / E[A]``, a ratio of means. ``q <= m`` exactly when
``E[F - m A] <= 0``, so with ``e_j = F_j / K`` and ``x_j = A_j / K`` (both in [0, 1], ``e_j <=
x_j``) the same gamblers bet on

    Y_j(m) = pi_min (e_j - m x_j) / pi_j    in [-m, 1 - m],

whose mean has the sign of ``q - m``: everything above holds with ``x_j`` (the answer's
*exposure*) in place of 1. A classifier's answer is the case ``x_j = 1``.

The stake is the growth-optimal plug-in ``l = mean / second moment`` of the ``Y(m)`` seen so far;
each side's wealth is the mean of two gamblers', one whose plug-in discounts past audits by
``1 - 1/stake_window`` per audit (an exponential window, so that it bets again soon after the
rate moves) and one weighing them all alike (narrow intervals while the rate stays put); any
stake computed from past audits only is predictable, and a mean of supermartingales from 1 is
one, so Ville's inequality holds. Each plug-in is shrunk towards no bet by one pseudo-observation
of variance ``m (1 - m)``, and capped at ``bet_cap / m`` (over) or ``bet_cap / (1 - m)``
(under) so that one audit never risks more than ``bet_cap`` of the wealth. The interval and the
states come from the *current* wealth (at or above ``2/alpha`` now: a subset of "ever crossed",
so just as valid); when the two sides contradict each other (the interval would be empty: the
rate changed) the older side starts again from wealth 1. The budget is a grid point, so the three
states a version is in — over budget (``K+(budget)`` at or above ``2/alpha`` now), within budget
verified (``K-(budget)`` so), not yet known — agree with the bounds shown.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

log = logging.getLogger(__name__)

# Candidate error rates: fine where error budgets live (0 .. 20% in steps of 0.025 points), coarser above.
GRID = np.unique(np.concatenate([np.linspace(0.0, 0.2, 801)[1:], np.linspace(0.2, 1.0, 161)[1:-1]]))


def surviving_interval(grid: np.ndarray, shown_over: np.ndarray, shown_under: np.ndarray) -> tuple[float, float]:
    """The interval of the grid points no gambler has rejected (``shown_over``: the error rate
    is shown to be over that ``m``; ``shown_under``: under it), widened to the neighbouring grid
    points so that it also covers a rate between two of them."""
    alive_low = np.flatnonzero(~shown_over)  # m not shown too small
    alive_high = np.flatnonzero(~shown_under)  # m not shown too large
    low = float(grid[alive_low[0] - 1]) if alive_low.size and alive_low[0] > 0 else 0.0
    high = float(grid[alive_high[-1] + 1]) if alive_high.size and alive_high[-1] + 1 < grid.size else 1.0
    if not alive_low.size:
        low = float(grid[-1])
    if not alive_high.size:
        high = float(grid[0])
    return low, high


class BudgetState(StrEnum):
    """What the audits prove about a model version's error budget."""

    OVER = "over_budget"  # evidence: the sequence's lower bound is above the budget
    VERIFIED = "within_budget"  # evidence: the upper bound is below it
    UNKNOWN = "not_yet_known"  # neither yet
    NOT_JUDGED = "not_judged"  # no budget on the card, or no card


@dataclass(frozen=True)
class SequenceConfig:
    """How the confidence sequence is built (one object per monitor process)."""

    alpha: float = 0.05  # the sequence misses the truth at any audit with probability <= alpha
    min_inclusion_prob: float = 0.005  # smallest QC inclusion probability the triage policy gives
    bet_cap: float = 0.5  # largest share of the wealth one audit may risk
    # One of each side's two gamblers (BettingState) discounts past audits by 1 - 1/stake_window
    # per audit in its plug-in stake (an exponential window of about this many audits), so that
    # after a long spell on one side of the budget it bets again within about this many audits of
    # a change. Any stake computed from past audits only keeps Ville's inequality; None: one
    # gambler per side, all past audits alike.
    stake_window: float | None = 500.0

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha={self.alpha} must be in (0, 1)")
        if not 0.0 < self.min_inclusion_prob <= 1.0:
            raise ValueError(f"min_inclusion_prob={self.min_inclusion_prob} must be in (0, 1]")
        if not 0.0 < self.bet_cap < 1.0:
            raise ValueError(f"bet_cap={self.bet_cap} must be in (0, 1)")
        if self.stake_window is not None and not self.stake_window >= 1.0:
            raise ValueError(f"stake_window={self.stake_window} must be >= 1 (or None)")

    @property
    def discount(self) -> float:
        """The weight of the past audits' sums after one more audit (1: no discounting)."""
        return 1.0 if self.stake_window is None else 1.0 - 1.0 / self.stake_window

    @property
    def log_threshold(self) -> float:
        """log(2 / alpha): the log-wealth at which one side has shown its claim."""
        return math.log(2.0 / self.alpha)


class BettingState:
    """The two gamblers' log-wealth for candidate error rates ``m`` (any array shape: the grid of
    one model version, or many simulated runs at one ``m``) and the sums their stakes use."""

    def __init__(self, m: np.ndarray, config: SequenceConfig, shape: tuple[int, ...] = ()) -> None:
        self.m, self.config = np.asarray(m, dtype=np.float64), config
        full = np.broadcast_shapes(self.m.shape, shape)
        # Each side's wealth is the mean of two gamblers' (a mean of supermartingales from 1 is one
        # from 1): one staking on the discounted sums (SequenceConfig.stake_window: bets again soon
        # after the rate moves) and one on all past audits alike (its interval keeps narrowing
        # like 1/sqrt(n) while the rate stays put). stake_window None: the second alone.
        self._mix = config.stake_window is not None
        self._log_over, self._log_under = np.zeros((2, *full)), np.zeros((2, *full))
        self.log_over, self.log_under = np.zeros(full), np.zeros(full)
        # ever shown (the running intersection); the sequence reports from the current wealth
        self.shown_over, self.shown_under = np.zeros(full, bool), np.zeros(full, bool)
        self.count = np.zeros(shape)  # audits seen
        # sums of a = pi_min e / pi and b = pi_min x / pi (Y(m) = a - m b), of their squares and
        # product: n, sa, ... discounted (the first gambler's), the [1] row of _sums all alike
        self.n = np.zeros(shape)
        self.sa, self.sb, self.saa, self.sab, self.sbb = (np.zeros(shape) for _ in range(5))
        self._all = [np.zeros(shape) for _ in range(6)]  # n, sa, sb, saa, sab, sbb over all audits

    @staticmethod
    def _stake(m, n, sa, sb, saa, sab, sbb):
        mean = (sa - m * sb) / (n + 1.0)  # stakes from the past only (predictable)
        second = (m * (1.0 - m) + saa - 2.0 * m * sab + m * m * sbb) / (n + 1.0)
        return mean / second

    def update(self, errors: np.ndarray | float, pis: np.ndarray | float,
               exposures: np.ndarray | float = 1.0) -> None:
        """One audit per element of ``shape``: its error (0/1, or ``F / K`` in [0, 1]), inclusion
        probability and exposure (1, or ``A / K`` with ``errors <= exposures <= 1``)."""
        cfg, m = self.config, self.m
        weight = cfg.min_inclusion_prob / np.asarray(pis, dtype=np.float64)
        a = weight * np.asarray(errors, dtype=np.float64)
        b = weight * np.asarray(exposures, dtype=np.float64)
        y = a - m * b
        stakes = [self._stake(m, *self._all)]
        if self._mix:
            stakes.insert(0, self._stake(m, self.n, self.sa, self.sb, self.saa, self.sab, self.sbb))
        for k, stake in enumerate(stakes):
            over = np.clip(stake, 0.0, cfg.bet_cap / m)
            under = np.clip(stake, -cfg.bet_cap / (1.0 - m), 0.0)
            self._log_over[k] += np.log1p(over * y)
            self._log_under[k] += np.log1p(under * y)
        if self._mix:
            self.log_over = np.logaddexp(self._log_over[0], self._log_over[1]) - math.log(2.0)
            self.log_under = np.logaddexp(self._log_under[0], self._log_under[1]) - math.log(2.0)
        else:
            self.log_over, self.log_under = self._log_over[0].copy(), self._log_under[0].copy()
        self.shown_over |= self.log_over >= cfg.log_threshold
        self.shown_under |= self.log_under >= cfg.log_threshold
        self.count += 1.0
        g = cfg.discount
        self.n = g * self.n + 1.0
        self.sa = g * self.sa + a
        self.sb = g * self.sb + b
        self.saa = g * self.saa + a * a
        self.sab = g * self.sab + a * b
        self.sbb = g * self.sbb + b * b
        for k, v in enumerate((1.0, a, b, a * a, a * b, b * b)):
            self._all[k] = self._all[k] + v

    @property
    def over_now(self) -> np.ndarray:
        """Where the over gambler's wealth is at or above 2/alpha now."""
        return self.log_over >= self.config.log_threshold

    @property
    def under_now(self) -> np.ndarray:
        """Where the under gambler's wealth is at or above 2/alpha now."""
        return self.log_under >= self.config.log_threshold

    def restart_over(self) -> None:
        """Start the over gambler afresh (wealth 1 at every ``m``); the stakes' sums are kept."""
        self._log_over[...] = 0.0
        self.log_over = np.zeros_like(self.log_over)
        self.shown_over[...] = False

    def restart_under(self) -> None:
        """Start the under gambler afresh (wealth 1 at every ``m``); the stakes' sums are kept."""
        self._log_under[...] = 0.0
        self.log_under = np.zeros_like(self.log_under)
        self.shown_under[...] = False


@dataclass(frozen=True)
class SequenceReport:
    low: float  # the confidence sequence's current interval
    high: float
    state: BudgetState
    audits_to_settle: int | None  # rough: more audits to leave UNKNOWN if the error rate stays put


class ErrorSequence:
    """The confidence sequence of one model version's error rate (or false-discovery rate, with
    exposures), and its budget state."""

    def __init__(self, budget: float | None, config: SequenceConfig) -> None:
        if budget is not None and not 0.0 < budget < 1.0:
            raise ValueError(f"error budget {budget} must be in (0, 1)")
        self.budget, self.config = budget, config
        grid = GRID if budget is None else np.unique(np.append(GRID, budget))
        self.grid = grid
        self._budget_index = None if budget is None else int(np.searchsorted(grid, budget))
        self.state = BettingState(grid, config)
        self._warned_floor = False
        self.restarts = 0  # times the two sides contradicted each other (the rate changed): the older side restarted

    @property
    def audits(self) -> int:
        return int(self.state.count)

    def update(self, error: bool | float, pi: float, exposure: float = 1.0) -> None:
        """One audit: ``error`` 0/1 and exposure 1 for an answer; ``F / K`` and ``A / K`` for an
        answer with ``A`` accepted parts, ``F`` of them false (module docstring)."""
        if not 0.0 <= float(error) <= exposure <= 1.0:
            raise ValueError(f"need 0 <= error <= exposure <= 1, got error {error}, exposure {exposure}")
        floor = self.config.min_inclusion_prob
        if pi < floor:
            # Consumers sample below the floor the monitor was told: weights are no longer bounded
            # by 1/floor. Count the audit at the floor (its weight is then too small) and say so.
            if not self._warned_floor:
                log.warning("QC inclusion probability %.4g below the configured floor %.4g: counted at the floor; "
                            "set the monitor's triage policy like the consumers'", pi, floor)
                self._warned_floor = True
            pi = floor
        s = self.state
        over_before, under_before = s.over_now, s.under_now
        s.update(float(error), pi, exposure)
        over_now, under_now = s.over_now, s.under_now
        low, high = surviving_interval(self.grid, over_now, under_now)
        if low > high:
            # The two sides contradict each other: some m is shown too small and a smaller one
            # too large. At a constant rate that takes a miss of the sequence (probability <=
            # alpha); otherwise it is evidence the rate changed. The side whose claim is older
            # is restarted (the side that crossed on this audit keeps its wealth), so the
            # interval shows the newer evidence and never has lower > upper.
            newly_over = bool((over_now & ~over_before).any())
            newly_under = bool((under_now & ~under_before).any())
            if newly_over and not newly_under:
                s.restart_under()
            elif newly_under and not newly_over:
                s.restart_over()
            else:
                s.restart_over()
                s.restart_under()
            self.restarts += 1
            log.info("confidence sequence: the audits contradict the earlier ones (the rate changed); "
                     "the older side restarted (restart %d)", self.restarts)

    def report(self) -> SequenceReport:
        """The interval and budget state from the gamblers' *current* wealth (at or above 2/alpha
        now): each such claim is one of "ever crossed", so just as valid, and a claim the later
        audits no longer carry (the stake discounts old audits) can lapse."""
        s, grid = self.state, self.grid
        over_now, under_now = s.over_now, s.under_now
        low, high = surviving_interval(grid, over_now, under_now)
        if self._budget_index is None:
            return SequenceReport(low, high, BudgetState.NOT_JUDGED, None)
        i = self._budget_index
        if over_now[i]:
            return SequenceReport(low, high, BudgetState.OVER, None)
        if under_now[i]:
            return SequenceReport(low, high, BudgetState.VERIFIED, None)
        return SequenceReport(low, high, BudgetState.UNKNOWN, self._audits_to_settle(i))

    def _audits_to_settle(self, i: int, side: int = 0) -> int | None:
        """Audits until one gambler at the budget reaches 2/alpha, if the audits go on as so far:
        the remaining log-wealth over the growth per audit of the stake the gambler will bet,
        ``lam * mean - lam^2 * second / 2`` (log1p to second order) with ``lam = mean / second``
        capped as :meth:`BettingState.update` caps it. (Uncapped, that is ``mean^2 / (2 second)``,
        which promised 8 audits where error-free audits at a 2% budget take 353: the cap
        ``bet_cap / (1 - m)`` holds the under-gambler to ~``bet_cap * m`` per audit.) ``side`` +1
        or -1: only when the audits lean that way (over, under), else None."""
        s, m = self.state, float(self.grid[i])
        n = float(s.n)
        if n < 1:
            return None
        mean = (float(s.sa) - m * float(s.sb)) / n
        second = (float(s.saa) - 2.0 * m * float(s.sab) + m * m * float(s.sbb)) / n
        if second <= 0.0 or abs(mean) < 1e-12 or side * mean < 0:
            return None
        wealth = float(s.log_over[i] if mean > 0 else s.log_under[i])
        cap = self.config.bet_cap
        lam = min(mean / second, cap / m) if mean > 0 else max(mean / second, -cap / (1.0 - m))
        growth = lam * mean - lam * lam * second / 2.0
        if growth <= 0.0:
            return None
        return max(1, math.ceil((self.config.log_threshold - wealth) / growth))


class PartlyAuditedSequence:
    """The confidence sequence of a stream of QC samples some of which are never audited (the
    live monitor gives up a sample still without a verdict after many verdicts behind it,
    monitor/qc_order.py). Why a sample goes unaudited may depend on its outcome — auditors avoid
    the hard ones — so leaving it out would let the sequence sit too low. Instead each side takes
    the worst case for its own claim, at the sample's place in the stream: the *lower* sequence
    counts an unaudited sample as right (and, for a rate of parts, as one with the most parts, all
    right), the *upper* one as wrong (the most parts, all false). Each of its ``Y_j(m)`` is then at
    most (lower) or at least (upper) what the audit would have given, so each gambler's wealth is
    at most what it would have been on the fully audited stream, and each bound keeps Ville's
    guarantee whatever the outcome of the samples given up.

    While every sample is audited the two are one sequence (the upper is split off at the first
    sample given up), so this costs nothing until then."""

    def __init__(self, budget: float | None, config: SequenceConfig) -> None:
        self.lower = ErrorSequence(budget, config)  # unaudited samples counted right: the lower bound, OVER
        self.upper: ErrorSequence | None = None  # unaudited samples counted wrong: the upper bound, VERIFIED
        self.unaudited = 0

    @property
    def audits(self) -> int:
        return self.lower.audits - self.unaudited

    def update(self, error: bool | float, pi: float, exposure: float = 1.0) -> None:
        """One audit (:meth:`ErrorSequence.update`)."""
        self.lower.update(error, pi, exposure)
        if self.upper is not None:
            self.upper.update(error, pi, exposure)

    def unaudited_sample(self, pi: float) -> None:
        """A QC sample given up without an audit, at its place in the stream (``pi``: its QC
        inclusion probability)."""
        if self.upper is None:
            self.upper = copy.deepcopy(self.lower)
        self.lower.update(0.0, pi, 1.0)
        self.upper.update(1.0, pi, 1.0)
        self.unaudited += 1

    def report(self) -> SequenceReport:
        low_side = self.lower.report()
        if self.upper is None:
            return low_side
        high_side = self.upper.report()
        low, high = low_side.low, max(high_side.high, low_side.low)
        if low_side.state is BudgetState.NOT_JUDGED:
            return SequenceReport(low, high, BudgetState.NOT_JUDGED, None)
        if low_side.state is BudgetState.OVER:
            return SequenceReport(low, high, BudgetState.OVER, None)
        if high_side.state is BudgetState.VERIFIED:
            return SequenceReport(low, high, BudgetState.VERIFIED, None)
        i = self.lower._budget_index
        settle = [n for n in (self.lower._audits_to_settle(i, +1), self.upper._audits_to_settle(i, -1)) if n]
        return SequenceReport(low, high, BudgetState.UNKNOWN, min(settle, default=None))
