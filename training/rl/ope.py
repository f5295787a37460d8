"""Off-policy evaluation: what would a target policy have earned on the logged episodes?

Three estimators, each returning an :class:`Estimate` with a percentile-bootstrap confidence
interval over episodes (episodes are the independent units):

* ``wis`` — per-decision weighted importance sampling. Step t's reward is weighted by the
  product of ratios π(a|s)/μ(a|s) up to t, normalised by the sum of those weights over episodes
  (an ended episode keeps its last weight and earns 0). Biased in small samples, consistent,
  bounded by the observed rewards. ``weighted=False`` gives ordinary per-decision IS, which is
  exactly unbiased.
* ``dr`` — weighted doubly robust (Thomas & Brunskill 2016): the WIS estimate with the fitted
  Q model as a control variate; unbiased-in-the-limit if either the propensities or Q are right.
  Q comes from FQE on the same data and stays fixed across bootstrap resamples.
* ``fqe`` — fitted Q evaluation with a linear model whose basis is chosen on held-out episodes;
  each bootstrap resample refits Q, and the interval is widened by the basis's held-out
  estimate of its own start-state error (see :mod:`training.rl.fqe`).

The value estimated is E[Σ_t γ^t r_t] from an episode's first logged step, with propensities μ
taken from the dataset (``behaviour_action_prob``) and π from a :class:`NumpyPolicy`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from training.rl.offline_data import OfflineDataset
from training.rl.policy_export import NumpyPolicy


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

    @property
    def width(self) -> float:
        return self.upper - self.lower

    def covers(self, truth: float) -> bool:
        return self.lower <= truth <= self.upper

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "value": self.value, "lower": self.lower, "upper": self.upper,
                "confidence": self.confidence, "n_episodes": self.n_episodes, **self.details}


def _interval(method: str, value: float, resamples: np.ndarray, confidence: float, n: int, **details: Any) -> Estimate:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence} must be in (0, 1)")
    alpha = (1.0 - confidence) / 2.0
    lower, upper = np.quantile(resamples[np.isfinite(resamples)], [alpha, 1.0 - alpha])
    return Estimate(method, float(value), float(lower), float(upper), confidence, n, details)


def _bootstrap_counts(n: int, bootstrap: int, seed: int) -> np.ndarray:
    """[bootstrap, n] multinomial counts: how often each unit appears in each resample."""
    if bootstrap < 20:
        raise ValueError(f"bootstrap={bootstrap} resamples are too few for a percentile interval; use >= 20")
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=bootstrap).astype(np.float64)


@dataclass(frozen=True)
class _Padded:
    """Episodes as [E, H] matrices; steps after an episode's end have reward 0 and keep the
    episode's last cumulative weight (an absorbing state)."""

    weights: np.ndarray  # cumulative importance ratios w_{i,t}
    rewards: np.ndarray
    q: np.ndarray  # Q̂(s_t, a_t), 0 after the end
    v: np.ndarray  # V̂(s_t) under π, 0 after the end
    discounts: np.ndarray  # γ^t, [H]


def _pad(data: OfflineDataset, pi: np.ndarray, gamma: float, q_taken: np.ndarray | None = None,
         v_state: np.ndarray | None = None) -> _Padded:
    mu = data.behaviour_action_prob.astype(np.float64)
    if np.any(mu <= 0):
        raise ValueError(f"{int(np.sum(mu <= 0))} logged actions have behaviour probability <= 0; importance "
                         "weights need the logging policy to give the taken action positive probability")
    ratio = pi[np.arange(len(mu)), data.actions] / mu
    slices = data.episode_slices()
    horizon = max(s.stop - s.start for s in slices)
    shape = (len(slices), horizon)
    weights, rewards, q, v = np.zeros(shape), np.zeros(shape), np.zeros(shape), np.zeros(shape)
    for i, s in enumerate(slices):
        n = s.stop - s.start
        w = np.cumprod(ratio[s])
        weights[i, :n], weights[i, n:] = w, w[-1]
        rewards[i, :n] = data.rewards[s]
        if q_taken is not None and v_state is not None:
            q[i, :n], v[i, :n] = q_taken[s], v_state[s]
    return _Padded(weights, rewards, q, v, gamma ** np.arange(horizon))


def _check(data: OfflineDataset, gamma: float) -> None:
    if data.n_episodes == 0:
        raise ValueError("dataset has no episodes")
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"gamma={gamma} must be in (0, 1]")


def wis(data: OfflineDataset, target: NumpyPolicy, gamma: float, confidence: float = 0.95, bootstrap: int = 200,
        seed: int = 0, weighted: bool = True) -> Estimate:
    """Per-decision (weighted) importance sampling with a percentile-bootstrap interval."""
    _check(data, gamma)
    p = _pad(data, target.probs(data.observations), gamma)
    counts = np.vstack([np.ones(data.n_episodes), _bootstrap_counts(data.n_episodes, bootstrap, seed)])
    weighted_rewards = counts @ (p.weights * p.rewards)  # [1 + B, H]
    norm = counts @ p.weights if weighted else counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.where(norm > 0, weighted_rewards / norm, 0.0) @ p.discounts
    ess = float(p.weights[:, -1].sum() ** 2 / max(np.sum(p.weights[:, -1] ** 2), 1e-300))
    return _interval("wis" if weighted else "pdis", values[0], values[1:], confidence, data.n_episodes,
                     effective_sample_size=ess)


def doubly_robust(data: OfflineDataset, target: NumpyPolicy, gamma: float, q_model: Any = None,
                  confidence: float = 0.95, bootstrap: int = 200, seed: int = 0) -> Estimate:
    """Weighted doubly robust estimate; ``q_model`` (a :class:`training.rl.fqe.LinearQ`)
    defaults to FQE fitted on ``data``."""
    from training.rl.fqe import fit_fqe

    _check(data, gamma)
    pi = target.probs(data.observations)
    if q_model is None:
        q_model = fit_fqe(data, target, gamma)
    q_all = q_model.q_values(data.observations, data.steps)
    q_taken = q_all[np.arange(len(data.actions)), data.actions]
    p = _pad(data, pi, gamma, q_taken, (q_all * pi).sum(axis=1))
    counts = np.vstack([np.ones(data.n_episodes), _bootstrap_counts(data.n_episodes, bootstrap, seed)])
    w_prev = np.concatenate([np.ones((data.n_episodes, 1)), p.weights[:, :-1]], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        current = (counts @ (p.weights * (p.rewards - p.q))) / (counts @ p.weights)
        previous = (counts @ (w_prev * p.v)) / (counts @ w_prev)
    values = np.nan_to_num(current + previous) @ p.discounts
    return _interval("dr", values[0], values[1:], confidence, data.n_episodes)


def evaluate(data: OfflineDataset, target: NumpyPolicy, gamma: float, confidence: float = 0.95,
             bootstrap: int = 200, seed: int = 0, features: Any = None) -> dict[str, Estimate]:
    """All three estimators on one dataset; DR uses the Q model FQE fits on all of the data,
    with the basis chosen once by :func:`training.rl.fqe.select_basis` (or ``features``)."""
    from training.rl.fqe import fit_fqe, fqe, select_basis

    features = features or select_basis(data, target, gamma, seed=seed)
    q_model = fit_fqe(data, target, gamma, features)
    return {
        "wis": wis(data, target, gamma, confidence, bootstrap, seed),
        "dr": doubly_robust(data, target, gamma, q_model, confidence, bootstrap, seed),
        "fqe": fqe(data, target, gamma, features, confidence, bootstrap, seed),
    }


def discounted_returns(data: OfflineDataset, gamma: float) -> np.ndarray:
    """Σ_t γ^t r_t of every logged episode, [E]."""
    return np.asarray([float(data.rewards[s] @ gamma ** np.arange(s.stop - s.start)) for s in data.episode_slices()])


def on_policy_value(data: OfflineDataset, gamma: float, confidence: float = 0.95, bootstrap: int = 200,
                    seed: int = 0) -> Estimate:
    """Mean discounted return of the logged episodes themselves: the logging (live) policy's own
    value, with a bootstrap interval. Equals WIS with π = μ."""
    _check(data, gamma)
    returns = discounted_returns(data, gamma)
    counts = _bootstrap_counts(len(returns), bootstrap, seed)
    return _interval("on_policy", float(returns.mean()), counts @ returns / len(returns), confidence, len(returns))
