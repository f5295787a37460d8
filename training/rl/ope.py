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

from typing import Any

import numpy as np

from training.rl.offline_data import OfflineDataset
from training.rl.ope_stats import (Estimate, bootstrap_counts, check_dataset, check_finite, check_policy_probs,
                                   interval, pad_episodes, ratio_or_zero)
from training.rl.policy_export import NumpyPolicy

__all__ = ["Estimate", "discounted_returns", "doubly_robust", "evaluate", "on_policy_value", "wis"]


def wis(data: OfflineDataset, target: NumpyPolicy, gamma: float, confidence: float = 0.95, bootstrap: int = 200,
        seed: int = 0, weighted: bool = True) -> Estimate:
    """Per-decision (weighted) importance sampling with a percentile-bootstrap interval."""
    check_dataset(data, gamma)
    p = pad_episodes(data, target.probs(data.observations), gamma)
    counts = np.vstack([np.ones(data.n_episodes), bootstrap_counts(data.n_episodes, bootstrap, seed)])
    weighted_rewards = counts @ (p.weights * p.rewards)  # [1 + B, H]
    norm = counts @ p.weights if weighted else counts.sum(axis=1, keepdims=True)
    values = ratio_or_zero(weighted_rewards, np.broadcast_to(norm, weighted_rewards.shape)) @ p.discounts
    values[~p.defined(counts)] = np.nan  # no episode keeps weight: not 0, undefined
    return interval("wis" if weighted else "pdis", values[0], values[1:], confidence, data.n_episodes,
                    ("episodes", data.n_episodes, bootstrap, seed), **p.overlap(), **p.support(data), **undefined(p))


def doubly_robust(data: OfflineDataset, target: NumpyPolicy, gamma: float, q_model: Any = None,
                  confidence: float = 0.95, bootstrap: int = 200, seed: int = 0) -> Estimate:
    """Weighted doubly robust estimate; ``q_model`` (a :class:`training.rl.fqe.LinearQ`)
    defaults to FQE fitted on ``data``."""
    from training.rl.fqe import fit_fqe

    check_dataset(data, gamma)
    pi = target.probs(data.observations)
    check_policy_probs(data, "target policy probabilities", pi)
    if q_model is None:
        q_model = fit_fqe(data, target, gamma)
    q_all = np.asarray(q_model.q_values(data.observations, data.steps), dtype=np.float64)
    check_finite(data, "Q-values", q_all)
    q_taken = q_all[np.arange(len(data.actions)), data.actions]
    p = pad_episodes(data, pi, gamma, q_taken, (q_all * pi).sum(axis=1))
    counts = np.vstack([np.ones(data.n_episodes), bootstrap_counts(data.n_episodes, bootstrap, seed)])
    w_prev = np.concatenate([np.ones((data.n_episodes, 1)), p.weights[:, :-1]], axis=1)
    # Each term is normalised on its own: a step where a resample has no weight left contributes 0
    # to its own term, never wiping out the other (nan_to_num of the sum did that).
    current = ratio_or_zero(counts @ (p.weights * (p.rewards - p.q)), counts @ p.weights)
    previous = ratio_or_zero(counts @ (w_prev * p.v), counts @ w_prev)
    values = (current + previous) @ p.discounts
    values[~p.defined(counts)] = np.nan  # Q's extrapolation alone is no estimate
    return interval("dr", values[0], values[1:], confidence, data.n_episodes, ("episodes", data.n_episodes, bootstrap, seed),
                    **p.overlap(), **p.support(data), **undefined(p))


def undefined(p: Any) -> dict[str, str]:
    """``details.undefined`` of an estimate no logged episode supports (empty if it is defined)."""
    if p.weights[:, -1].sum() > 0:
        return {}
    return {"undefined": "every logged episode has a step whose logged action the target policy never takes: "
                         "its importance weights are all 0 and nothing logged says what it earns"}


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
    check_dataset(data, gamma)
    returns = discounted_returns(data, gamma)
    counts = bootstrap_counts(len(returns), bootstrap, seed)
    return interval("on_policy", float(returns.mean()), counts @ returns / len(returns), confidence, len(returns),
                    ("episodes", len(returns), bootstrap, seed), effective_sample_size=float(len(returns)))
