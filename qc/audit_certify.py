"""Certify an auto-accept threshold from audited traffic (``auditstream certify --from-audits``).

The audited data. Every request ``i`` of the stream (``N`` of them) was audited with a known
probability ``pi_i > 0``: 1 for a deferred item (every one goes to a human), the QC inclusion
probability for an auto-accepted one (a hash of the request id, so independent of the answer).
For any rule "accept when confidence >= theta" of any model version -- the live one or a
candidate scored on the audited inputs -- the Horvitz-Thompson variables

    X_i = 1{audited} * 1{accepted and wrong} / pi_i        Y_i = 1{audited} * 1{accepted} / pi_i

lie in ``[0, 1/pi_min]`` and have means ``P(accepted and wrong)`` and ``P(accepted)`` exactly (an
unaudited request contributes 0 to both, so it needs no confidence and need not even be counted:
:func:`risk_test_values`). The selective risk is their ratio, so "risk <= r" is
"``E[X_i - r Y_i] <= 0``": one mean of a bounded variable, no ratio to bound. It is tested by
*betting* (Waudby-Smith & Ramdas 2023, "Estimating means of bounded random variables by
betting"): a gambler bets against ``E[X - rY] >= 0``, a bet size chosen from the past values
only, and the hypothesis "risk > r" is rejected when his capital reaches ``1/delta`` (Ville's
inequality). Betting adapts to the many zeros of these variables, where Hoeffding's or
empirical-Bernstein's worst-case range ``1/pi_min`` would make the test useless.
:func:`betting_upper_bound` is the same idea as a confidence bound on a mean.

The order. The betting test treats the values in the order given as time: each bet is chosen
from the values before it, and the capital is a supermartingale only if every value's mean, given
those before it, is on the null side. So the order must be fixed before the outcomes are known --
not the order auditors decided items in, which depends on the route and so on the error rate
(the store serves deferred items first, the workbench filters by route, the demo's qc-bot answers
QC samples only: a block of QC verdicts, rarely wrong, first made the capital peak early and
certified 0.85 in 76% of simulated streams whose risk there was 2.13% > 2%). The order used is
the *stream order*: the order the audit store received the sampled items (its item ids), set at
ingest, before any verdict, for deferred and QC items alike (one topic), and causal: a choice made
from a verdict (a retrained or promoted version, a tightened threshold, hence the inclusion
probabilities of later items) can only affect items ingested after it.

Items still waiting for a verdict. The test runs on the longest stream-order *prefix* that it can
value exactly: for threshold theta it stops before the first waiting item the version would
accept at theta. A waiting item it would not accept is valued exactly without a verdict
(``X = Y = 0``), so it does not stop the test. Within the prefix every value is the one the full
stream will have, so the test's largest capital over the prefix is at most that over the whole
stream-order sequence, which reaches ``1/delta`` with probability ``<= delta`` (Ville) -- whatever
made the prefix end where it does (auditors' habits, a skipped item, the time of the run), and
however often the command is run as verdicts arrive: a later run only sees a longer prefix of the
same sequence. Leaving waiting items out instead, or valuing them by guess, would let the auditors'
choice of what to decide first choose the sample.

Choosing theta. Thresholds are tried in an order fixed before the audits are seen (e.g. the
coverages of the version's held-out risk-coverage curve, least coverage first), each at the
full ``delta`` (Learn-then-Test with fixed-sequence testing, Angelopoulos et al. 2021): testing
stops at the first threshold not shown to keep the risk, and the last one that passed is
certified. The family-wise error is at most ``delta``, so the data-dependent choice of the
threshold is covered.

Auditors err. The certificate bounds the rate at which accepted answers *disagree with the
auditors*. The model is wrong against the truth only if it disagrees with the auditor or the
auditor is wrong, so ``risk_truth <= risk_auditors + e``, where ``e`` is an upper bound on the
auditors' error rate measured on gold items (Clopper-Pearson at ``gold_delta``); this assumes
auditors err on accepted traffic no more often than on gold items. The two statements hold
together with probability ``>= 1 - delta - gold_delta``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from qc.binomial import upper_bound

# Where `auditstream certify --from-audits` writes a version's certificate, beside its model in the
# registry (models/<name>/<version>/); the dashboard's learning curve reads it back.
PROPOSAL_FILE = "audit-certificate.json"

# Candidate means (as a share of the range) the betting test may reject: log-spaced, below 1.
_MEAN_GRID = np.geomspace(1e-7, 1.0 - 1e-9, 240)
_MAX_BET = 0.8  # of the largest bet that keeps the capital positive


def _check_values(values: np.ndarray, bound: float, delta: float) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"need values [n], got shape {x.shape}")
    if not bound > 0 or not 0.0 < delta < 1.0:
        raise ValueError(f"need bound > 0 and 0 < delta < 1, got bound={bound}, delta={delta}")
    if x.size and (x.min() < 0 or x.max() > bound * (1 + 1e-12)):
        raise ValueError(f"values must lie in [0, {bound}], got [{x.min()}, {x.max()}]")
    return np.clip(x / bound, 0.0, 1.0)


def _max_log_capital(z: np.ndarray, m: float) -> float:
    """The largest log capital, over time, of a gambler betting that values in [0, 1] average
    less than ``m``: ``prod(1 + lam_t (m - z_t))``, ``lam_t`` a Kelly bet (``E[r] / E[r^2]`` of the
    payoff ``r = m - z``) from the values before ``t`` only (running mean and variance regularised
    towards 1/2 and 1/4), capped so the capital stays positive. When the mean is ``>= m`` the
    capital is a nonnegative supermartingale, so it reaches ``1/delta`` with probability
    ``<= delta`` (Ville's inequality)."""
    n = z.size
    if n == 0:
        return 0.0
    past = np.concatenate(([0.0], np.cumsum(z)[:-1]))
    past_sq = np.concatenate(([0.0], np.cumsum(z * z)[:-1]))
    count = np.arange(n, dtype=np.float64)
    mu = (0.5 + past) / (count + 1.0)
    var = np.maximum((0.25 + past_sq - 2 * mu * past + count * mu * mu) / (count + 1.0), 1e-12)
    edge = m - mu
    lam = np.clip(edge / (var + edge * edge), 0.0, _MAX_BET / (1.0 - m))
    return float(np.cumsum(np.log1p(lam * (m - z))).max())


def betting_upper_bound(values: np.ndarray, bound: float, delta: float) -> float:
    """An upper bound ``U`` on the mean of values in ``[0, bound]`` with ``P(mean > U) <= delta``:
    i.i.d. values (or each with that mean given the ones before it), in an order that does not
    depend on them.

    Each candidate ``m`` of a fixed grid is rejected when the capital of :func:`_max_log_capital`
    reaches ``1/delta``. ``U`` is the grid point above the largest ``m`` not rejected: if the mean
    exceeded it, the test at the grid point just below the mean, valid there, would have
    rejected -- probability ``<= delta``.
    """
    z = _check_values(values, bound, delta)
    if z.size == 0:
        return float(bound)
    limit = np.log(1.0 / delta)
    rejected = np.array([_max_log_capital(z, float(m)) >= limit for m in _MEAN_GRID])
    kept = np.flatnonzero(~rejected)
    if kept.size == 0:  # even the smallest candidate is rejected: the mean is below it
        return float(bound * _MEAN_GRID[0])
    top = int(kept.max())
    return float(bound * _MEAN_GRID[top + 1]) if top + 1 < _MEAN_GRID.size else float(bound)


def betting_lower_bound(values: np.ndarray, bound: float, delta: float) -> float:
    """A lower bound ``L`` with ``P(mean < L) <= delta``: the upper bound of ``bound - values``, reflected."""
    x = np.asarray(values, dtype=np.float64)
    _check_values(x, bound, delta)
    return max(0.0, float(bound - betting_upper_bound(bound - x, bound, delta)))


@dataclass(frozen=True)
class AuditCertificate:
    """A threshold certified from audited traffic, with the numbers behind it."""

    threshold: float  # above 1: nothing certified (accept nothing)
    target_risk: float
    delta: float
    certified_risk: float  # what is proved: target_risk when certified, else 1.0 (disagreement with auditors)
    estimated_risk: float | None  # Hajek point estimate at the threshold (not a bound)
    estimated_coverage: float  # Hajek estimate of the share of all requests auto-accepted at the threshold
    n_audited: int
    min_inclusion_prob: float
    tests: int  # thresholds tested before the sequence stopped
    thresholds_in_sequence: int
    method: str
    reason: str
    auditor_error_bound: float | None = None  # gold items: upper bound on the auditors' error rate
    gold_delta: float | None = None
    risk_against_truth: float | None = None  # certified_risk + auditor_error_bound
    n_pending: int = 0  # sampled requests still waiting for a verdict (not in n_audited)
    n_tested: int | None = None  # stream-order prefix the deciding test ran on (sampled requests, waiting ones included)

    @property
    def certified(self) -> bool:
        return self.threshold <= 1.0

    def to_dict(self) -> dict:
        return asdict(self) | {"certified": self.certified}


def risk_test_values(accepted: np.ndarray, wrong: np.ndarray, inclusion_probs: np.ndarray,
                     target_risk: float, min_inclusion_prob: float | None = None) -> tuple[np.ndarray, float]:
    """(z, m0): each audited request's ``X_i - r Y_i`` scaled to [0, 1], in the order given;
    ``m0`` is where ``E[X - rY] = 0``. The scale is ``1 / min_inclusion_prob`` (default: the
    smallest given inclusion probability).

    Unaudited requests are left out: their scaled value is exactly ``m0``, so their factor in the
    capital is 1 whatever the bet, and a bet computed from the audited past alone is still
    chosen from the past of the whole stream. The test therefore needs neither the count of
    requests nor their confidences, only the audited ones and their inclusion probabilities.
    """
    pi = np.asarray(inclusion_probs, dtype=np.float64)
    acc = np.asarray(accepted, dtype=bool)
    bad = acc & np.asarray(wrong, dtype=bool)
    b = 1.0 / (min_inclusion_prob or (float(pi.min()) if pi.size else 1.0))
    d = (bad - target_risk * acc) / pi  # in [-r b, b]
    z = (d + target_risk * b) / (b * (1.0 + target_risk))
    return np.clip(z, 0.0, 1.0), target_risk / (1.0 + target_risk)


def certify_from_audits(confidences: np.ndarray, wrong: np.ndarray, inclusion_probs: np.ndarray,
                        target_risk: float, delta: float, thresholds: tuple[float, ...] | list[float], *,
                        settled: np.ndarray | None = None) -> AuditCertificate:
    """The last threshold of ``thresholds`` (fixed before the audits were seen, strictest first)
    that fixed-sequence testing reaches: each test rejects "risk > target" at the full ``delta``
    when the betting capital against ``E[X - rY] >= 0`` reaches ``1/delta``; the first that does
    not stops the sequence (module docstring).

    ``confidences`` (the version's), ``wrong`` (its answer differs from the auditor's),
    ``inclusion_probs``: one entry per sampled request (each request once) in *stream order* --
    an order fixed before any verdict, never the order verdicts were decided in (module
    docstring, "The order"). ``settled``: False for a request still waiting for its verdict (its
    ``wrong`` is ignored); None: all have one. The test at ``theta`` runs on the stream-order
    prefix before the first waiting request with confidence ``>= theta``.
    """
    conf = np.asarray(confidences, dtype=np.float64)
    err = np.asarray(wrong)
    pi = np.asarray(inclusion_probs, dtype=np.float64)
    done = np.ones(conf.shape, dtype=bool) if settled is None else np.asarray(settled, dtype=bool)
    if not (conf.shape == err.shape == pi.shape == done.shape) or conf.ndim != 1:
        raise ValueError(f"need confidences, wrong, inclusion_probs (and settled) of one shape [n], got {conf.shape}, "
                         f"{err.shape}, {pi.shape}, {done.shape}")
    if pi.size and not np.all((pi > 0) & (pi <= 1)):
        raise ValueError(f"inclusion probabilities must be in (0, 1], got [{pi.min()}, {pi.max()}]")
    if not np.isin(err[done], (0, 1)).all():
        raise ValueError("wrong must be 0/1 indicators")
    if not 0.0 < target_risk < 1.0 or not 0.0 < delta < 1.0:
        raise ValueError(f"need 0 < target_risk < 1 and 0 < delta < 1, got {target_risk}, {delta}")
    thresholds = [float(t) for t in thresholds]
    if not thresholds or thresholds != sorted(thresholds, reverse=True):
        raise ValueError(f"thresholds must be given strictest (highest) first for fixed-sequence testing, got {thresholds[:5]}")
    err = np.where(done, err, 0).astype(int)
    pi_min = float(pi.min()) if pi.size else 1.0  # over every sampled request: no verdict moves it
    limit, passed, tests, cut, tested, failed = np.log(1.0 / delta), None, 0, conf.size, conf.size, False
    for theta in thresholds:
        tests += 1
        acc = conf >= theta
        blocked = np.flatnonzero(acc & ~done)  # waiting for a verdict and accepted: value unknown
        tested = int(blocked[0]) if blocked.size else conf.size
        z, m0 = risk_test_values(acc[:tested], err[:tested], pi[:tested], target_risk, pi_min)
        if _max_log_capital(z, m0) < limit:
            failed = True
            break
        passed, cut = theta, tested
    n_audited, n_pending = int(done.sum()), int((~done).sum())
    common = dict(target_risk=target_risk, delta=delta, n_audited=n_audited, min_inclusion_prob=pi_min,
                  tests=tests, thresholds_in_sequence=len(thresholds), n_pending=n_pending,
                  method="audits: Horvitz-Thompson betting test in stream order, fixed-sequence Learn-then-Test")
    waiting = (f"; it ran on the first {tested} of {conf.size} sampled requests in stream order, the next one "
               f"still waiting for a verdict" if tested < conf.size else "")
    stopped = (f"; the test at the next threshold ran on the first {tested} of {conf.size} sampled requests, the "
               f"next one still waiting for a verdict" if failed and tested < conf.size else "")
    if passed is None:
        return AuditCertificate(threshold=float(np.nextafter(1.0, 2.0)), certified_risk=1.0, estimated_risk=None,
                                estimated_coverage=0.0, n_tested=tested, reason=(
                                    f"the first threshold of the sequence ({thresholds[0]:.6g}) could not be shown "
                                    f"to keep risk <= {target_risk}{waiting}: accept nothing (more audits are needed)"),
                                **common)
    acc, w = conf[:cut] >= passed, 1.0 / pi[:cut]  # the prefix the certifying test saw: every accepted one settled
    w_acc, w_bad = float(w[acc].sum()), float(w[acc & (err[:cut] == 1)].sum())
    upto = f" (the first {cut} of {conf.size} sampled requests in stream order; the next waits for a verdict)" \
        if cut < conf.size else ""
    return AuditCertificate(
        threshold=passed, certified_risk=target_risk, estimated_risk=w_bad / w_acc if w_acc else None,
        estimated_coverage=w_acc / float(w.sum()) if w.size else 0.0, n_tested=cut, reason=(
            f"risk <= {target_risk} shown at thresholds down to {passed:.6g} ({tests} of {len(thresholds)} tested in "
            f"sequence, each at delta={delta}) from {n_audited} audited requests{upto} (pi >= {pi_min:.3g}){stopped}"),
        **common)


def against_truth(cert: AuditCertificate, gold_errors: int, gold_n: int, gold_delta: float) -> AuditCertificate:
    """Add the bound against the truth: ``certified_risk + e``, ``e`` the Clopper-Pearson upper bound
    at ``gold_delta`` on the auditors' error rate on ``gold_n`` gold items (module docstring)."""
    if gold_n <= 0:
        return cert
    e = upper_bound(gold_errors, gold_n, gold_delta)
    return replace(cert, auditor_error_bound=e, gold_delta=gold_delta,
                   risk_against_truth=min(1.0, cert.certified_risk + e))
