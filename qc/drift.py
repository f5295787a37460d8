"""Drift detection: has the input distribution or the error rate moved since certification?

Two complementary checks run in the monitor (monitor/tracker.py) for every (model, version):

* **KS on confidences** (:func:`ks_drift`): the two-sample Kolmogorov-Smirnov test of a sliding
  window of live confidences against ``card.reference["confidence_sample"]`` (held-out data at
  training time). It needs no labels, so it warns before any audit comes back — but a shifted
  confidence distribution is a symptom, not proof of more errors. Cards store that sample rounded
  to :data:`REFERENCE_DECIMALS` (6) decimals; ``serve`` publishes confidences at that precision
  too, but another producer may publish float32 values, so both are rounded to that grid before
  the test: compared as they were, every float32 confidence in ``[0.9999995, 1)`` would sit at 1.0
  in the reference and below 1 live (the shipped digits model's raw outputs "drift", D = 0.19,
  p = 7e-6, against the very images its reference came from).
* **Bernoulli CUSUM on audited errors** (:class:`BernoulliCusum`): the log-likelihood-ratio
  CUSUM of Page (1954) for an error rate moving from ``p0`` (in control: the budget, the card's
  target risk) to
  ``p1``. Each audit adds ``log(p1/p0)`` if it found an error and ``log((1-p1)/(1-p0)) < 0``
  otherwise; the statistic is floored at 0 and alarms at ``h``.

CUSUM design (Reynolds & Stoumbos 1999): the two increments are scaled to integers — a clean
audit is ``-1``, an error ``+m`` with ``m = round(log(p1/p0) / -log((1-p1)/(1-p0)))`` — so the
statistic lives on the states ``0..H-1`` and its average run length from state ``s`` solves
exactly ``L(s) = 1 + (1-p) L(max(s-1, 0)) + p L(s+m)`` with ``L(s >= H) = 0``: a banded linear
system (:func:`cusum_arl`). :func:`design_bernoulli_cusum` picks the smallest ``H`` whose
in-control ARL meets the false-alarm target (``ARL0 >= 1 / rate``), which also minimises the
detection delay ``ARL1`` among charts with those increments (ARL1 grows with ``H``). For
``p0 = 1%``, ``p1 = 2%``: ``m = 68``, ``ARL0 >= 200,000`` at ``H = 606`` (h = 6.15 nats, compare
Lorden's bound ``ARL0 >= e^h``, loose here because of the overshoot), ``ARL1 ~ 1,400`` audits.
"""

from __future__ import annotations

import functools
import math
from collections import deque
from dataclasses import dataclass
from typing import Sequence

import numpy as np

REFERENCE_DECIMALS = 6  # cards store reference.confidence_sample rounded to this many decimals
MIN_CUSUM_P0 = 1e-3  # below this the exact ARL needs > ~7,000 states; see design_bernoulli_cusum


@dataclass(frozen=True)
class KSResult:
    statistic: float
    pvalue: float
    n_window: int
    n_reference: int


def ks_drift(window: Sequence[float], reference: Sequence[float], decimals: int | None = REFERENCE_DECIMALS) -> KSResult:
    """Two-sample KS test of live confidences ``window`` against the card's reference sample.

    Both samples are rounded to ``decimals`` first (the precision cards store the reference at,
    :data:`REFERENCE_DECIMALS`), so like is compared with like: one map applied to both sides keeps
    the test's level (equal distributions stay equal; ties only make KS conservative), while
    comparing rounded reference values with unrounded live ones shows a "drift" of every value
    the rounding moves across another. A reference kept at full precision is rounded the same
    way. ``decimals=None``: compare the values as given."""
    from scipy.stats import ks_2samp

    live = np.asarray(window, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    live, ref = live[np.isfinite(live)], ref[np.isfinite(ref)]
    if decimals is not None:
        live, ref = np.round(live, decimals), np.round(ref, decimals)
    if live.size == 0 or ref.size == 0:
        raise ValueError(f"KS test needs non-empty samples, got {live.size} live and {ref.size} reference values")
    result = ks_2samp(live, ref, alternative="two-sided", method="auto")
    return KSResult(float(result.statistic), float(result.pvalue), int(live.size), int(ref.size))


class ConfidenceWindow:
    """The last ``size`` confidences of one model version (a bounded deque)."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"window size={size} must be >= 1")
        self.values: deque[float] = deque(maxlen=size)

    def add(self, confidence: float) -> None:
        self.values.append(float(confidence))

    def __len__(self) -> int:
        return len(self.values)


@dataclass(frozen=True)
class CusumDesign:
    """A Bernoulli CUSUM on an integer grid: a clean audit scores -1, an error +``step_up``."""

    p0: float
    p1: float
    step_up: int  # m: an error's increment, in units of one clean audit's decrement
    h_units: int  # H: alarm when the statistic reaches H
    unit_nats: float  # -log((1-p1)/(1-p0)): one unit in log-likelihood-ratio nats
    arl0: float  # average audits to a false alarm at p0 (exact for this grid)
    arl1: float  # average audits to detection at p1, starting from 0

    @property
    def h_nats(self) -> float:
        return self.h_units * self.unit_nats


def _scores(p0: float, p1: float) -> tuple[int, float]:
    if not MIN_CUSUM_P0 <= p0 < p1 < 1.0:
        raise ValueError(f"need {MIN_CUSUM_P0} <= p0 < p1 < 1, got p0={p0}, p1={p1}")
    unit = -math.log((1.0 - p1) / (1.0 - p0))
    return max(1, round(math.log(p1 / p0) / unit)), unit


def cusum_arl(p: float, step_up: int, h_units: int) -> float:
    """Exact average run length from state 0 of the integer CUSUM at error rate ``p``."""
    from scipy.linalg import solve_banded

    if h_units < 1 or step_up < 1 or not 0.0 < p < 1.0:
        raise ValueError(f"need h_units >= 1, step_up >= 1, 0 < p < 1; got {h_units}, {step_up}, {p}")
    # Row s of (I - P) L = 1: L(s) - (1-p) L(max(s-1,0)) - p L(s+m) = 1 (terms past H-1 are 0).
    n, m = h_units, step_up
    bands = np.zeros((m + 2, n))  # solve_banded layout: row (u + i - j) holds A[i, j]; u = m, l = 1
    bands[m, :] = 1.0  # diagonal
    bands[m, 0] -= 1.0 - p  # state 0 stays at 0 after a clean audit
    bands[m + 1, :-1] = -(1.0 - p)  # A[s, s-1] for s >= 1
    if m < n:
        bands[0, m:] = -p  # A[s, s+m]
    return float(solve_banded((1, m), bands, np.ones(n))[0])


@functools.lru_cache(maxsize=64)
def design_bernoulli_cusum(p0: float, p1: float, arl0_target: float = 200_000.0) -> CusumDesign:
    """The CUSUM for ``p0 -> p1`` with the smallest threshold whose in-control ARL >= target."""
    if not arl0_target > 1.0:
        raise ValueError(f"arl0_target={arl0_target} must be > 1")
    m, unit = _scores(p0, p1)
    low, high = 1, m + 1
    while cusum_arl(p0, m, high) < arl0_target:  # ARL0 grows roughly like e^(H * unit)
        low, high = high, high * 2
        if high > 200_000:
            raise ValueError(f"ARL0 target {arl0_target:g} needs over 200,000 CUSUM states for p0={p0}, p1={p1}")
    while low < high:  # smallest H with ARL0 >= target (ARL0 is increasing in H)
        mid = (low + high) // 2
        if cusum_arl(p0, m, mid) >= arl0_target:
            high = mid
        else:
            low = mid + 1
    return CusumDesign(p0, p1, m, high, unit, cusum_arl(p0, m, high), cusum_arl(p1, m, high))


class BernoulliCusum:
    """Page's CUSUM over a stream of audit outcomes (True = the model's answer was wrong).

    After an alarm the statistic restarts at 0 (so ``alarms`` counts false alarms at the
    designed rate) while ``alarm`` stays latched until :meth:`reset`: an error-rate shift is a
    fact about the model version that someone must look at, not a blip to forget.
    """

    def __init__(self, design: CusumDesign) -> None:
        self.design = design
        self.state = 0
        self.alarms = 0
        self.alarm = False
        self.observations = 0

    def update(self, error: bool) -> bool:
        """Add one audit; True when this audit raised an alarm."""
        self.observations += 1
        self.state = self.state + self.design.step_up if error else max(0, self.state - 1)
        if self.state >= self.design.h_units:
            self.state, self.alarm = 0, True
            self.alarms += 1
            return True
        return False

    @property
    def statistic(self) -> float:
        """The current log-likelihood ratio statistic, in nats (alarm at ``design.h_nats``)."""
        return self.state * self.design.unit_nats

    def reset(self) -> None:
        self.state, self.alarm = 0, False


def cusum_run_lengths(design: CusumDesign, p: float, runs: int, rng: np.random.Generator,
                      max_audits: int | np.ndarray = 10_000_000) -> np.ndarray:
    """Audits to the first alarm, from state 0, for ``runs`` independent streams at error rate ``p``.

    Vectorised by events: between two errors the statistic only falls by one per clean audit
    (floored at 0), and it can only cross ``H`` on an error, so each stream jumps from error to
    error with geometric gaps — the same chart as :class:`BernoulliCusum`, audit for audit.
    ``max_audits`` (one horizon, or one per stream): a stream with no alarm within it reports
    ``max_audits + 1``.
    """
    horizon = np.broadcast_to(np.asarray(max_audits, dtype=np.int64), (runs,))
    if runs < 0 or not 0.0 < p < 1.0 or np.any(horizon < 1):
        raise ValueError(f"need runs >= 0, 0 < p < 1, max_audits >= 1; got {runs}, {p}, min {horizon.min(initial=1)}")
    m, h = design.step_up, design.h_units
    state = np.zeros(runs, dtype=np.int64)
    audits = np.zeros(runs, dtype=np.int64)
    result = horizon + 1
    live = np.arange(runs)
    while live.size:
        clean = rng.geometric(p, size=live.size) - 1  # clean audits before the next error
        state[live] = np.maximum(state[live] - clean, 0) + m
        audits[live] += clean + 1
        hit = (state[live] >= h) & (audits[live] <= horizon[live])
        result[live[hit]] = audits[live[hit]]
        live = live[~hit & (audits[live] < horizon[live])]
    return result
