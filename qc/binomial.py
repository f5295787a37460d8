"""Binomial confidence bounds: exact Clopper-Pearson, shared by certification at training time
(qc/certify.py) and the live QC error estimate (monitor/tracker.py), and their versions for audits
drawn with unequal inclusion probabilities.

Weighted estimator. A QC audit of item ``i`` happened with inclusion probability ``pi_i`` (set by
triage and stored with the item), so it carries weight ``w_i = 1/pi_i``. The Hajek estimator of
the error rate is ``p = sum(w y) / sum(w)`` — Horvitz-Thompson normalised by the estimated
population size, so it needs no count of the stream, and it is exactly ``x/n`` under uniform
sampling.

Weighted intervals. With equal weights every interval here *is* the exact Clopper-Pearson
interval of ``x`` errors in ``n`` audits — a fixed-sample interval, valid when the audits are
looked at once; :func:`shown_at_most`, which the monitor asks again at every tick, uses the
betting gambler for equal weights too (``anytime=True``, its default). With unequal weights the interval must also cover the
error rate of answers audited with a small ``pi`` (weight up to ``1/pi_min``, ``pi_min`` the
policy's floor) whose audits have not shown an error *yet*: one such error moves the estimate by
``w_max / sum(w)``. A Korn-Graubard interval (Clopper-Pearson on ``n* = p(1-p)/V`` effective
audits, what this module did until 2026-12) misses exactly that: when the heavy audits show no
error, ``V`` comes from the light ones alone, ``n*`` exceeds the audits, and the upper bound falls
— even as more light errors are found. Under the default risk-weighted policy it covered 69-75%
instead of 95% (docs/qc-statistics.md, "Interval"). Two valid replacements, both for audits
``j`` drawn i.i.d. from the audited population (a fixed policy), with ``c = pi_min``:

* From the audits themselves (:func:`error_estimate`, :func:`shown_at_most`, the threshold
  suggestion; for :func:`shown_at_most` equal weights too): a *betting* confidence sequence (Waudby-Smith & Ramdas, JRSS-B 2023), the gamblers
  of qc/sequential.py on ``Y_j(m) = c (y_j - m) / pi_j`` in ``[-m, 1 - m]``, whose mean has the
  sign of ``p - m``; a candidate ``m`` is rejected once a gambler's wealth reaches ``2/alpha``
  (Ville's inequality, at any audit). It adapts to the variance (errors where ``pi`` is high are
  cheap to bound) and never relies on a variance *estimate*.
* From five running sums alone (:func:`estimate_from_sums`, for callers that keep no audits): a
  Chernoff-Hoeffding ratio bound. ``U_j = c w_j y_j`` and ``V_j = c w_j`` lie in ``[0, 1]`` and
  ``p = E[U] / E[V]``; Hoeffding's (1963) bound ``P(mean <= t) <= exp(-n KL(t || mu))`` holds for
  *any* variable in ``[0, 1]`` (a Bernoulli is its worst case, which is what an unseen error of
  weight ``1/c`` is), so bounding ``E[U]`` and ``E[V]`` at ``alpha/4`` each and dividing gives an
  interval of level ``1 - alpha``. It is monotone (one more error raises both ends) and wider
  than the betting interval, which uses the variance.

Both need every weight at most ``1/pi_min``: pass the policy's floor (``min_inclusion_prob``;
default the smaller of the smallest given ``pi`` and the risk-weighted floor 0.005); a ``pi``
below a floor passed explicitly is counted at the floor, as the confidence sequence does. The
effective sample size ``n*`` is still reported (a description, used by no bound), capped at the
number of audits (the usual Korn-Graubard truncation): a larger ``n*`` rests on the variance
estimate that fails above. Coverage is checked by simulation in tests/monitor/test_tracker.py
and by ``auditstream bench qc``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import beta

from qc.sequential import GRID, surviving_interval

DEFAULT_MIN_INCLUSION_PROB = 0.005  # the risk-weighted policy's floor (qc.triage), the monitor's default
DEFAULT_BET_CAP = 0.9  # largest share of a gambler's wealth one audit may risk (any value < 1 is valid)


def _check(errors: int, n: int, alpha: float) -> None:
    if n < 0 or not 0 <= errors <= n:
        raise ValueError(f"need 0 <= errors <= n, got errors={errors}, n={n}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha={alpha} must be in (0, 1)")


def upper_bound(errors: int, n: int, delta: float) -> float:
    """One-sided exact upper bound: P(true rate <= bound) >= 1 - delta.

    With zero errors this is ``1 - delta ** (1 / n)``; with ``n == 0`` nothing is known (1.0).
    """
    _check(errors, n, delta)
    if n == 0 or errors == n:
        return 1.0
    return float(beta.ppf(1.0 - delta, errors + 1, n - errors))


def lower_bound(errors: int, n: int, delta: float) -> float:
    """One-sided exact lower bound: P(true rate >= bound) >= 1 - delta."""
    _check(errors, n, delta)
    if errors == 0:
        return 0.0
    return float(beta.ppf(delta, errors, n - errors + 1))


def clopper_pearson(errors: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Two-sided exact interval with coverage >= ``confidence``."""
    alpha = 1.0 - confidence
    return lower_bound(errors, n, alpha / 2), upper_bound(errors, n, alpha / 2)


def clopper_pearson_effective(p_hat: float, n_eff: float, confidence: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson on an *effective* sample: ``x* = p_hat * n_eff`` successes of ``n_eff``.

    The beta quantiles take real parameters; with ``n_eff = n`` and ``p_hat = x / n`` this is
    :func:`clopper_pearson`. Not a valid interval for weighted audits with ``n_eff`` from their
    variance estimate (module docstring); kept for callers that have an effective size of their own.
    """
    if not 0.0 <= p_hat <= 1.0 or not n_eff >= 0.0:
        raise ValueError(f"need 0 <= p_hat <= 1 and n_eff >= 0, got p_hat={p_hat}, n_eff={n_eff}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence} must be in (0, 1)")
    if n_eff == 0.0:
        return 0.0, 1.0
    alpha = 1.0 - confidence
    x = p_hat * n_eff
    low = 0.0 if x <= 0.0 else float(beta.ppf(alpha / 2, x, n_eff - x + 1.0))
    high = 1.0 if x >= n_eff else float(beta.ppf(1.0 - alpha / 2, x + 1.0, n_eff - x))
    return low, high


# --------------------------------------------------------------------------------------------
# from running sums: Chernoff-Hoeffding ratio bound


def _kl(t: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """Bernoulli Kullback-Leibler divergence KL(t || mu), elementwise."""
    t, mu = np.clip(t, 0.0, 1.0), np.clip(mu, 1e-300, 1.0 - 1e-16)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(t > 0.0, t * np.log(t / mu), 0.0)
        b = np.where(t < 1.0, (1.0 - t) * np.log((1.0 - t) / (1.0 - mu)), 0.0)
    return a + b


def _kl_bounds(t: np.ndarray, n: np.ndarray, log_level: float) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper): the means ``mu`` beyond which a sample mean ``t`` of ``n`` values in [0, 1]
    has probability below ``exp(-log_level)`` (Hoeffding 1963), the ``inf`` and ``sup`` of ``{mu :
    n KL(t || mu) <= log_level}``. ``n KL`` is monotone on each side of ``t``: both found by one
    bisection (45 halvings)."""
    t = np.clip(t, 0.0, 1.0)
    tt, nn = np.concatenate([t.ravel(), t.ravel()]), np.concatenate([n.ravel(), n.ravel()])
    inside, outside = tt.copy(), np.concatenate([np.zeros(t.size), np.ones(t.size)])
    for _ in range(45):
        mid = 0.5 * (inside + outside)
        out = nn * _kl(tt, mid) > log_level
        outside, inside = np.where(out, mid, outside), np.where(out, inside, mid)
    return outside[:t.size].reshape(t.shape), outside[t.size:].reshape(t.shape)


def _chernoff_ratio(n, s_w, s_wy, s_w2, alpha: float, floor: float) -> tuple[np.ndarray, np.ndarray]:
    """Bounds on ``E[U] / E[V]`` (module docstring) from the sums, each of the four one-sided
    bounds at ``alpha / 4``."""
    nn = np.maximum(n, 1.0)
    # Every weight must be <= 1/c. The root-mean-square weight is at most the largest, so a larger
    # one means some pi is below the floor: then bound every weight by sqrt(sum w^2 - (n - 1)).
    c = np.where(s_w2 * floor * floor > nn * (1.0 + 1e-12), 1.0 / np.sqrt(np.maximum(s_w2 - nn + 1.0, 1.0)), floor)
    u, v = np.clip(c * s_wy / nn, 0.0, 1.0), np.clip(c * s_w / nn, c, 1.0)
    scale = np.maximum(1.0 - c, 1e-300)
    low, high = _kl_bounds(np.stack(np.broadcast_arrays(u, (v - c) / scale)), np.stack(np.broadcast_arrays(nn, nn)),
                           np.log(4.0 / alpha))
    (u_low, v_low), (u_high, v_high) = low, high
    v_low, v_high = np.maximum(c + scale * v_low, c), c + scale * v_high
    return np.clip(u_low / v_high, 0.0, 1.0), np.clip(u_high / v_low, 0.0, 1.0)


def _effective_sample_size(n, s_w, s_w2, p, var):
    """Korn-Graubard ``n* = p (1 - p) / V`` (Kish's ``(sum w)^2 / sum w^2`` when ``V = 0``), capped at ``n``."""
    kish = np.where(s_w2 > 0, s_w * s_w / np.maximum(s_w2, 1e-300), 0.0)
    n_eff = np.where((var > 0) & (p > 0) & (p < 1), p * (1.0 - p) / np.maximum(var, 1e-300), kish)
    return np.minimum(n_eff, n)


def _uniform(common_pi, min_inclusion_prob: float | None):
    """Whether audits whose weights are all equal (at inclusion probability ``common_pi``) may be
    taken for a uniform sample, so that Clopper-Pearson is exact. Without a floor: yes (the
    caller's design is uniform). With the policy's floor: only at the floor -- audits that all
    came from a stratum sampled *above* the floor say nothing about the strata they never
    reached (a risk-weighted design whose first 40 audits all have pi = 0.5 while half the
    answers sit at pi = 0.005)."""
    if min_inclusion_prob is None:
        return np.ones_like(np.asarray(common_pi, dtype=bool))
    return np.asarray(common_pi) <= min_inclusion_prob * (1.0 + 1e-9)


def estimate_from_sums(n, s_w, s_wy, s_w2, s_w2y, confidence: float = 0.95, *,
                       min_inclusion_prob: float | None = None):
    """Hajek estimate, a valid interval and ``n*`` from running sums (arrays broadcast).

    ``s_w = sum w``, ``s_wy = sum w y``, ``s_w2 = sum w^2``, ``s_w2y = sum w^2 y`` over the ``n``
    audits (``y`` is 0/1, so ``sum w^2 (y - p)^2 = s_w2y (1 - 2p) + p^2 s_w2``). A uniform sample
    (:func:`_uniform`): exact Clopper-Pearson. Otherwise the Chernoff-Hoeffding ratio bound with
    weights at most ``1 / min_inclusion_prob`` (None: 0.005). ``n*`` is descriptive, capped at ``n``.
    """
    if not (min_inclusion_prob is None or 0.0 < min_inclusion_prob <= 1.0) or not 0.0 < confidence < 1.0:
        raise ValueError(f"need 0 < min_inclusion_prob <= 1 and 0 < confidence < 1, got {min_inclusion_prob}, {confidence}")
    n, s_w, s_wy, s_w2, s_w2y = (np.asarray(a, dtype=np.float64) for a in (n, s_w, s_wy, s_w2, s_w2y))
    alpha = 1.0 - confidence
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.clip(np.where(s_w > 0, s_wy / s_w, 0.0), 0.0, 1.0)
        var = np.maximum(s_w2y * (1.0 - 2.0 * p) + p * p * s_w2, 0.0) / np.maximum(s_w, 1e-300) ** 2
        n_eff = _effective_sample_size(n, s_w, s_w2, p, var)
        equal = np.abs(s_w * s_w - n * s_w2) <= 1e-9 * np.maximum(n * s_w2, 1e-300)  # Cauchy-Schwarz equality
        equal &= _uniform(n / np.maximum(s_w, 1e-300), min_inclusion_prob)  # the common pi (where equal)
        x = np.rint(p * n)  # equal weights: the error count
        cp_low = np.where(x > 0, beta.ppf(alpha / 2, np.maximum(x, 1.0), n - x + 1.0), 0.0)
        cp_high = np.where(x < n, beta.ppf(1.0 - alpha / 2, x + 1.0, np.maximum(n - x, 1.0)), 1.0)
        floor = DEFAULT_MIN_INCLUSION_PROB if min_inclusion_prob is None else min_inclusion_prob
        if np.all(equal):
            low, high = cp_low, cp_high
        else:
            ch_low, ch_high = _chernoff_ratio(n, s_w, s_wy, s_w2, alpha, floor)
            low, high = np.where(equal, cp_low, ch_low), np.where(equal, cp_high, ch_high)
    low, high = np.where(n > 0, low, 0.0), np.where(n > 0, high, 1.0)
    return p, np.nan_to_num(low), np.nan_to_num(high, nan=1.0), n_eff


# --------------------------------------------------------------------------------------------
# from the audits: the betting confidence sequence


def _floor_for(pi: np.ndarray, min_inclusion_prob: float | None) -> float:
    floor = min(float(pi.min()), DEFAULT_MIN_INCLUSION_PROB) if min_inclusion_prob is None else float(min_inclusion_prob)
    if not 0.0 < floor <= 1.0:
        raise ValueError(f"min_inclusion_prob={floor} must be in (0, 1]")
    return floor


def _shown(errors: np.ndarray, pi: np.ndarray, m: np.ndarray, log_level: float, floor: float,
           bet_cap: float) -> tuple[np.ndarray, np.ndarray]:
    """(shown_over, shown_under) for each candidate ``m`` (1-d, in (0, 1)): did the gambler betting
    that the rate is above (below) ``m`` ever reach ``exp(log_level)`` over the audits, in their
    order? The update of :class:`qc.sequential.BettingState` (stakes from the audits before each
    one, shrunk by one pseudo-observation of variance ``m (1 - m)``), vectorised with cumulative sums."""
    a, b = floor * errors / pi, floor / pi  # Y_j(m) = a_j - m b_j
    past = [np.concatenate(([0.0], np.cumsum(v)[:-1])) for v in (a, b, a * a, a * b, b * b)]
    count = np.arange(a.size, dtype=np.float64) + 1.0
    over, under = np.zeros(m.size, bool), np.zeros(m.size, bool)
    block = max(1, int(2_000_000 // max(a.size, 1)))
    for start in range(0, m.size, block):
        mm = m[start:start + block, None]
        mean = (past[0] - mm * past[1]) / count
        second = (mm * (1.0 - mm) + past[2] - 2.0 * mm * past[3] + mm * mm * past[4]) / count
        stake = mean / second
        y = a - mm * b
        log_over = np.cumsum(np.log1p(np.clip(stake, 0.0, bet_cap / mm) * y), axis=1)
        log_under = np.cumsum(np.log1p(np.clip(stake, -bet_cap / (1.0 - mm), 0.0) * y), axis=1)
        over[start:start + block] = log_over.max(axis=1) >= log_level
        under[start:start + block] = log_under.max(axis=1) >= log_level
    return over, under


def _audits(errors, inclusion_probs, min_inclusion_prob: float | None) -> tuple[np.ndarray, np.ndarray, float, bool]:
    """(errors, inclusion probabilities at or above the floor, the floor, whether a uniform sample)."""
    y = np.asarray(errors, dtype=np.float64)
    pi = np.asarray(inclusion_probs, dtype=np.float64)
    if y.shape != pi.shape or y.ndim != 1:
        raise ValueError(f"need errors [n] and inclusion_probs [n], got {y.shape} and {pi.shape}")
    if y.size and (not np.all((pi > 0) & (pi <= 1)) or not np.all((y == 0) | (y == 1))):
        raise ValueError(f"inclusion probabilities must be in (0, 1] (min {pi.min()}, max {pi.max()}) and errors 0/1")
    if not y.size:
        return y, pi, 1.0, True
    floor = _floor_for(pi, min_inclusion_prob)
    pi = np.maximum(pi, floor)
    return y, pi, floor, bool(np.all(pi == pi[0]) and _uniform(pi[0], min_inclusion_prob))


def betting_interval(errors, inclusion_probs, confidence: float = 0.95, *, min_inclusion_prob: float | None = None,
                     bet_cap: float = DEFAULT_BET_CAP) -> tuple[float, float]:
    """The betting confidence sequence of the error rate after these audits (in the order they
    were drawn, which must not depend on their outcomes), as an interval: every ``m`` of
    :data:`qc.sequential.GRID` that neither gambler has rejected at ``2 / alpha``, widened to the
    neighbouring grid points. It holds at every audit at once, so also at this one."""
    y, pi, floor, _ = _audits(errors, inclusion_probs, min_inclusion_prob)
    if not 0.0 < confidence < 1.0 or not 0.0 < bet_cap < 1.0:
        raise ValueError(f"need 0 < confidence < 1 and 0 < bet_cap < 1, got {confidence}, {bet_cap}")
    if y.size == 0:
        return 0.0, 1.0
    over, under = _shown(y, pi, GRID, np.log(2.0 / (1.0 - confidence)), floor, bet_cap)
    return surviving_interval(GRID, over, under)


def shown_at_most(errors, inclusion_probs, bound: float, alpha: float, *, min_inclusion_prob: float | None = None,
                  bet_cap: float = DEFAULT_BET_CAP, anytime: bool = True) -> bool:
    """Do the audits show the error rate ``<= bound``, wrongly with probability ``<= alpha``?

    ``anytime=True`` (the default, and what the monitor's threshold suggestion uses): the betting
    gambler against ``bound`` (module docstring) reaches ``1 / alpha`` at some audit. By Ville's
    inequality that holds with probability ``<= alpha`` over *every* prefix at once, so the
    question may be asked again after every audit (each tick, as the audits accrue) at no cost. A
    uniform sample (:func:`_uniform`) bets on ``y - bound`` itself (all weights equal).

    ``anytime=False``: a uniform sample is judged by the exact one-sided Clopper-Pearson bound
    (``<= bound``), which is valid only if these audits are looked at *once*, at a sample size
    fixed before their outcomes: asked after every audit at ``p = bound`` it says "shown" with
    probability 0.5% by 1,000 audits and 1.9% by 20,000 at ``alpha = 0.00125``
    (docs/qc-statistics.md, "Suggested threshold"). Unequal weights always use the gambler.
    """
    y, pi, floor, uniform = _audits(errors, inclusion_probs, min_inclusion_prob)
    if not 0.0 < bound < 1.0 or not 0.0 < alpha < 1.0:
        raise ValueError(f"need 0 < bound < 1 and 0 < alpha < 1, got {bound}, {alpha}")
    if y.size == 0:
        return False
    if uniform and not anytime:
        return upper_bound(int(y.sum()), int(y.size), alpha) <= bound
    if uniform:  # every weight 1 / pi[0]: Y_j = y_j - m, the unweighted gambler
        floor = float(pi[0])
    _, under = _shown(y, pi, np.array([bound]), np.log(1.0 / alpha), floor, bet_cap)
    return bool(under[0])


@dataclass(frozen=True)
class WeightedEstimate:
    estimate: float | None  # None: no audits
    low: float
    high: float
    n: int
    effective_sample_size: float  # Korn-Graubard n*, capped at n: descriptive, no bound uses it


def error_estimate(errors, inclusion_probs, confidence: float = 0.95, *,
                   min_inclusion_prob: float | None = None) -> WeightedEstimate:
    """Hajek error rate of audited answers (in the order drawn) with a valid interval: exact
    Clopper-Pearson for a uniform sample (:func:`_uniform`), else :func:`betting_interval` with
    weights at most ``1 / min_inclusion_prob`` (None: the smaller of the smallest ``pi`` and 0.005)."""
    y, pi, floor, uniform = _audits(errors, inclusion_probs, min_inclusion_prob)
    if y.size == 0:
        return WeightedEstimate(None, 0.0, 1.0, 0, 0.0)
    w = 1.0 / pi
    p, _, _, n_eff = estimate_from_sums(y.size, w.sum(), (w * y).sum(), (w * w).sum(), (w * w * y).sum(), confidence)
    if uniform:
        low, high = clopper_pearson(int(y.sum()), int(y.size), confidence)
    else:
        low, high = betting_interval(y, pi, confidence, min_inclusion_prob=floor)
    return WeightedEstimate(float(p), float(low), float(high), int(y.size), float(n_eff))
