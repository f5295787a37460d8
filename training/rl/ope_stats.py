"""What every off-policy estimator shares (:mod:`training.rl.ope`, :mod:`training.rl.fqe`): the
:class:`Estimate` with its percentile-bootstrap interval, bootstrap resampling of episodes, the
dataset checks, and episodes padded to matrices of cumulative importance weights.

Every estimator's inputs are checked before any sum is formed (:func:`check_finite`): a NaN or
infinite reward, propensity, target probability or Q-value, a behaviour propensity of 0 for a
taken action, an importance weight that overflows, or target probabilities that are not a
distribution (an entry < 0, a sum off 1: logits or scores, :func:`check_policy_probs`) are
refused with :class:`OPEInputError` naming the episode and step -- never turned into 0 or a huge
number inside a sum, which would silently drop or swamp the other terms.

**Support.** Importance sampling sees only the actions the log gave a positive propensity.
Where the target puts probability on an action whose logged propensity is 0 (a one-hot human or
fallback step of routed logs, a greedy logging policy), nothing logged says what that action
earns: WIS silently conditions on the logged actions and FQE/DR extrapolate Q. Every estimate's
details measure it (:meth:`Padded.support`), and the promotion gate refuses to decide on it.

An estimate whose importance weights vanish on every episode (the target gives probability 0 to
a logged action somewhere in each of them) is undefined: its value and interval are NaN, never
0 (WIS) or the Q model's extrapolation (DR). A bootstrap resample in which that happens is NaN
too (``details.undefined_resamples`` counts them), and the interval is taken over the others.
On fewer episodes than :func:`~training.rl.args.episodes_for_an_interval` an estimate has a
value but no interval (NaN bounds, ``details.no_interval``). In an estimate's JSON form
(:meth:`Estimate.to_dict`) each NaN is null, beside its reason.

**Resamples** are named by a key (:func:`resample_units`): estimates with the same key saw the
same resamples, and the promotion gate bootstraps their difference pairwise."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from auditstream.errors import AuditstreamError
from auditstream.finite_json import finite_or_none
from training.rl.args import BOOTSTRAP_RESAMPLES, episodes_for_an_interval
from training.rl.offline_data import PROB_TOLERANCE, OfflineDataset

SUPPORT_TOLERANCE = 1e-3  # target probability on never-logged actions that counts as none


class OPEInputError(AuditstreamError, ValueError):
    """An off-policy estimator's input is unusable; the message names the episode and step."""


def check_finite(data: OfflineDataset, what: str, values: np.ndarray, rows: np.ndarray | None = None,
                 positive: bool = False) -> None:
    """Refuse ``values`` (one entry, or one row, per dataset row ``rows``; default: every row)
    if any is NaN or infinite (or, with ``positive``, not > 0), naming the first such step."""
    values = np.asarray(values, dtype=np.float64)
    flat = values.reshape(len(values), -1)
    ok = np.isfinite(flat).all(axis=1)
    if positive:
        ok &= (flat > 0).all(axis=1)
    bad = np.flatnonzero(~ok)
    if len(bad):
        i = int(bad[0])
        row = int(i if rows is None else np.asarray(rows)[i])
        shown = flat[i].tolist()[:8]
        raise OPEInputError(f"{what} {shown if flat.shape[1] > 1 else shown[0]} at {data.where(row)} "
                            f"({len(bad)} such steps) is not {'finite and > 0' if positive else 'finite'}; "
                            "off-policy estimates need finite inputs (check the policy and the logged data)")


def check_policy_probs(data: OfflineDataset, what: str, values: np.ndarray, rows: np.ndarray | None = None) -> None:
    """Refuse target policy probabilities [N, A] (one row per dataset row ``rows``; default: every
    row) that are not finite, have an entry < 0 or a row sum off 1 by more than
    :data:`~training.rl.offline_data.PROB_TOLERANCE` -- as logged propensities are refused
    (:func:`training.rl.offline_data.propensity_problem`) -- naming the first such step."""
    check_finite(data, what, values, rows)
    flat = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    negative = (flat < 0).any(axis=1)
    off = np.abs(flat.sum(axis=1) - 1.0) > PROB_TOLERANCE
    bad = np.flatnonzero(negative | off)
    if len(bad):
        i = int(bad[0])
        row = int(i if rows is None else np.asarray(rows)[i])
        why = "has an entry < 0" if negative[i] else f"sums to {float(flat[i].sum()):.6g}, not 1"
        raise OPEInputError(f"{what} {flat[i].tolist()[:8]} at {data.where(row)} ({len(bad)} such steps) {why}: "
                            "off-policy estimates need the policy's action probabilities (a softmax), "
                            "not logits or scores")


def ratio_or_zero(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator per term, 0 where the denominator is 0 (no weight at that step in
    that resample). Weights that an ended episode keeps make that happen only in a resample where
    no episode keeps weight to the end, which the estimators then mark undefined (NaN)."""
    safe = np.where(denominator > 0, denominator, 1.0)
    return np.where(denominator > 0, numerator / safe, 0.0)


@dataclass(frozen=True)
class Estimate:
    """A policy value estimate and its two-sided ``confidence`` interval [lower, upper]."""

    method: str
    value: float
    lower: float
    upper: float
    confidence: float
    n_episodes: int
    details: dict[str, Any] = field(default_factory=dict)
    # The bootstrap values, and what they resampled: ("episodes", n, B, seed) when episodes were
    # resampled with bootstrap_counts(n, B, seed) — two estimates with the same key saw the same
    # resamples, so their difference can be bootstrapped pairwise (the promotion gate does).
    resamples: np.ndarray | None = field(default=None, repr=False, compare=False)
    resample_key: tuple | None = None

    @property
    def width(self) -> float:
        return self.upper - self.lower

    def covers(self, truth: float) -> bool:
        return self.lower <= truth <= self.upper

    def to_dict(self) -> dict[str, Any]:
        """The estimate as JSON: an undefined value or interval is null (not NaN, which is not
        JSON), with the reason in ``undefined`` or ``no_interval``."""
        return {"method": self.method, "value": finite_or_none(self.value), "lower": finite_or_none(self.lower),
                "upper": finite_or_none(self.upper), "confidence": self.confidence, "n_episodes": self.n_episodes,
                **self.details}


def interval(method: str, value: float, resamples: np.ndarray, confidence: float, n: int,
             resample_key: tuple | None = None, **details: Any) -> Estimate:
    """``value`` with the percentile interval of its bootstrap ``resamples`` over ``n`` episodes.
    No interval (NaN bounds, ``details.no_interval`` says why) on fewer episodes than
    :func:`~training.rl.args.episodes_for_an_interval` (its ends would be single episodes'
    values: [v, v] on one) or when every resample is undefined; no value either (NaN,
    ``details.undefined``) when ``value`` is not finite."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence} must be in (0, 1)")
    alpha = (1.0 - confidence) / 2.0
    resamples = np.asarray(resamples, dtype=np.float64)
    finite = resamples[np.isfinite(resamples)]
    if len(finite) < len(resamples):
        details = {**details, "undefined_resamples": int(len(resamples) - len(finite))}
    fewest = episodes_for_an_interval(confidence)
    lower = upper = math.nan
    if not np.isfinite(value):  # an undefined estimate has no interval
        details.setdefault("undefined", "the estimate is not a finite number")
    elif n < fewest:
        details.setdefault("no_interval", f"{n} episode(s): a bootstrap interval at confidence {confidence:g} needs at "
                                          f"least {fewest} (with fewer its ends are single episodes' values, not "
                                          "bounds on the mean); the value is a point estimate only")
    elif len(finite) == 0:
        details.setdefault("no_interval", "every bootstrap resample is undefined (no episode of any resample keeps "
                                          "importance weight)")
    else:
        lower, upper = np.quantile(finite, [alpha, 1.0 - alpha])
    return Estimate(method, float(value), float(lower), float(upper), confidence, n, details,
                    np.asarray(resamples, dtype=np.float64), resample_key)


def resample_units(key: tuple, n_episodes: int) -> tuple[np.ndarray, np.ndarray]:
    """(unit of each episode [E], counts [1 + B, G]: a row of ones, then the bootstrap resamples of
    the G units) of the resamples ``key`` names -- ``("episodes", E, B, seed)``: each episode its
    own unit, :func:`bootstrap_counts` (E, B, seed); ``("groups", E, G, B, seed)``: episodes pooled
    at random into G groups, the groups resampled. Estimates made with the same key saw the same
    resamples, so their difference can be bootstrapped pairwise."""
    if not isinstance(key, tuple) or not key or key[0] not in ("episodes", "groups") \
            or len(key) != (4 if key[0] == "episodes" else 5):
        raise ValueError(f"resamples {key!r} are not a resample key: ('episodes', E, B, seed) or "
                         "('groups', E, G, B, seed), as an estimate's resample_key holds")
    if key[1] != n_episodes:
        raise ValueError(f"resamples {key!r} are of {key[1]} episodes, the dataset has {n_episodes}: pass the "
                         "resample_key of an estimate on the same dataset")
    if key[0] == "episodes":
        _, e, bootstrap, seed = key
        units, n_units = np.arange(e), e
    else:
        _, e, n_units, bootstrap, seed = key
        units = np.random.default_rng(seed).permutation(e) % n_units
    return units, np.vstack([np.ones(n_units), bootstrap_counts(n_units, bootstrap, seed)])


def episode_counts(key: tuple, n_episodes: int) -> np.ndarray:
    """[1 + B, E]: how often each episode appears in each resample of ``key`` (the first row all
    ones: the data itself)."""
    units, counts = resample_units(key, n_episodes)
    return counts[:, units]


def bootstrap_counts(n: int, bootstrap: int, seed: int) -> np.ndarray:
    """[bootstrap, n] multinomial counts: how often each unit appears in each resample."""
    if not BOOTSTRAP_RESAMPLES.accepts(bootstrap):
        raise ValueError(f"bootstrap={bootstrap} resamples are too few for a percentile interval; use >= "
                         f"{BOOTSTRAP_RESAMPLES.low}")
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=bootstrap).astype(np.float64)


@dataclass(frozen=True)
class Padded:
    """Episodes as [E, H] matrices; steps after an episode's end have reward 0 and keep the
    episode's last cumulative weight (an absorbing state)."""

    weights: np.ndarray  # cumulative importance ratios w_{i,t}
    rewards: np.ndarray
    q: np.ndarray  # Q̂(s_t, a_t), 0 after the end
    v: np.ndarray  # V̂(s_t) under π, 0 after the end
    discounts: np.ndarray  # γ^t, [H]
    reach: np.ndarray  # per dataset row [N]: w_{i,t-1}, the cumulative ratio before the step (1 at step 0)
    unsupported: np.ndarray  # per dataset row [N]: the target's probability of actions logged with propensity 0

    def support(self, data: OfflineDataset) -> dict[str, Any]:
        """What the target does that the log cannot show:

        * ``unsupported_mass``: the largest probability the target puts on actions whose logged
          propensity is 0, at a logged step it can reach (every earlier logged action of the
          episode has target probability > 0); ``unsupported_steps``: how many such steps put
          more than :data:`SUPPORT_TOLERANCE` there, ``unsupported_sources`` who acted at them;
        * ``unsupported_probability``: the estimated chance that an episode of the target takes
          such an action at all, Σ_t mean_i w_{i,t-1} · (that probability at step t) -- unbiased
          where the log has support up to the step; an estimate can be off by up to this times
          the range of the returns."""
        mass = np.where(self.reach > 0, self.unsupported, 0.0)
        over = mass > SUPPORT_TOLERANCE
        sources, counts = np.unique(data.sources[over], return_counts=True)
        return {"unsupported_mass": float(mass.max(initial=0.0)), "unsupported_steps": int(over.sum()),
                "unsupported_sources": {str(k): int(c) for k, c in zip(sources, counts)},
                "unsupported_probability": float(np.sum(self.reach * self.unsupported) / data.n_episodes)}

    def defined(self, counts: np.ndarray) -> np.ndarray:
        """Per resample (a row of episode ``counts`` [K, E]): does any episode keep importance
        weight to the end? Weights are cumulative products that an ended episode keeps, so if
        none does, the target gives probability 0 to a logged action in every episode: nothing
        logged says what it earns, and its estimate is undefined (not 0, not Q's guess)."""
        return counts @ self.weights[:, -1] > 0

    def overlap(self) -> dict[str, float]:
        """``effective_sample_size``: the Kish effective number of episodes (Σ_i w)² / Σ_i w² of
        the cumulative weights w_{i,t} of each step, averaged over steps with the discounts γ^t
        as weights (the value is made of the steps in that proportion); the number of episodes
        when the target is the logging policy, 0 when no episode keeps any weight.
        ``final_effective_sample_size``: that of the last step alone."""
        total, square = self.weights.sum(axis=0), np.sum(self.weights ** 2, axis=0)
        ess = np.where(square > 0, total ** 2 / np.where(square > 0, square, 1.0), 0.0)
        return {"effective_sample_size": float(ess @ self.discounts / self.discounts.sum()),
                "final_effective_sample_size": float(ess[-1])}


def pad_episodes(data: OfflineDataset, pi: np.ndarray, gamma: float, q_taken: np.ndarray | None = None,
         v_state: np.ndarray | None = None) -> Padded:
    mu = data.behaviour_action_prob.astype(np.float64)
    check_finite(data, "behaviour propensity of the logged action", mu, positive=True)
    check_policy_probs(data, "target policy probabilities", pi)
    if q_taken is not None and v_state is not None:
        check_finite(data, "Q-value of the logged action", q_taken)
        check_finite(data, "state value under the target policy", v_state)
    ratio = pi[np.arange(len(mu)), data.actions] / mu
    slices = data.episode_slices()
    horizon = max(s.stop - s.start for s in slices)
    shape = (len(slices), horizon)
    weights, rewards, q, v = np.zeros(shape), np.zeros(shape), np.zeros(shape), np.zeros(shape)
    reach = np.ones(len(mu))
    for i, s in enumerate(slices):
        n = s.stop - s.start
        with np.errstate(over="ignore"):  # an overflow is refused just below, naming the step
            w = np.cumprod(ratio[s])
        check_finite(data, "cumulative importance weight", w, np.arange(s.start, s.stop))  # overflowed
        weights[i, :n], weights[i, n:] = w, w[-1]
        reach[s.start + 1:s.stop] = w[:-1]
        rewards[i, :n] = data.rewards[s]
        if q_taken is not None and v_state is not None:
            q[i, :n], v[i, :n] = q_taken[s], v_state[s]
    unsupported = np.where(data.propensities <= 0, pi, 0.0).sum(axis=1)
    return Padded(weights, rewards, q, v, gamma ** np.arange(horizon), reach, unsupported)


def check_dataset(data: OfflineDataset, gamma: float) -> None:
    if data.n_episodes == 0:
        raise ValueError("dataset has no episodes")
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"gamma={gamma} must be in (0, 1]")
