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
  Q comes from FQE on the same data, and each bootstrap resample refits it (one d×d solve from
  the per-episode normal equations, :func:`training.rl.fqe.refit_q_values`), so the interval
  holds Q's own variance. (On the toy MDP of the tests the truth still falls below DR's lower
  end about twice as often as the nominal 2.5%, with the true Q as well: docs/rl.md, "Measured
  coverage".)
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
from training.rl.ope_stats import (Estimate, check_dataset, check_finite, check_policy_probs, episode_counts,
                                   interval, pad_episodes, ratio_or_zero, resample_units)
from training.rl.policy_export import NumpyPolicy

__all__ = ["Estimate", "discounted_returns", "doubly_robust", "evaluate", "on_policy_value", "wis"]


def wis(data: OfflineDataset, target: NumpyPolicy, gamma: float, confidence: float = 0.95, bootstrap: int = 200,
        seed: int = 0, weighted: bool = True, resamples: tuple | None = None) -> Estimate:
    """Per-decision (weighted) importance sampling with a percentile-bootstrap interval over the
    resamples ``resamples`` names (another estimate's ``resample_key``: the same resamples, so the
    two can be compared pairwise), by default episodes (``bootstrap``, ``seed``)."""
    check_dataset(data, gamma)
    p = pad_episodes(data, target.probs(data.observations), gamma)
    resamples = resamples or ("episodes", data.n_episodes, bootstrap, seed)
    counts = episode_counts(resamples, data.n_episodes)
    weighted_rewards = counts @ (p.weights * p.rewards)  # [1 + B, H]
    norm = counts @ p.weights if weighted else counts.sum(axis=1, keepdims=True)
    values = ratio_or_zero(weighted_rewards, np.broadcast_to(norm, weighted_rewards.shape)) @ p.discounts
    values[~p.defined(counts)] = np.nan  # no episode keeps weight: not 0, undefined
    return interval("wis" if weighted else "pdis", values[0], values[1:], confidence, data.n_episodes, resamples,
                    **p.overlap(), **p.support(data), **undefined(p))


def doubly_robust(data: OfflineDataset, target: NumpyPolicy, gamma: float, q_model: Any = None,
                  confidence: float = 0.95, bootstrap: int = 200, seed: int = 0, features: Any = None,
                  resamples: tuple | None = None) -> Estimate:
    """Weighted doubly robust estimate with Q from FQE (on ``features``, default
    :func:`training.rl.fqe.select_basis`) refitted on every bootstrap resample. A given
    ``q_model`` (anything with ``q_values(observations, steps)``) stays fixed instead: its
    interval then ignores Q's own variance (``details.q_model`` says which). ``resamples``: as
    :func:`wis`; by default :func:`training.rl.fqe.refit_resamples` (episodes, as WIS's, unless
    their normal equations would not fit in memory)."""
    check_dataset(data, gamma)
    pi = target.probs(data.observations)
    check_policy_probs(data, "target policy probabilities", pi)
    if q_model is None:
        return _doubly_robust_refit(data, target, gamma, pi, features, confidence, bootstrap, seed, resamples)
    q_all = np.asarray(q_model.q_values(data.observations, data.steps), dtype=np.float64)
    check_finite(data, "Q-values", q_all)
    q_taken = q_all[np.arange(len(data.actions)), data.actions]
    p = pad_episodes(data, pi, gamma, q_taken, (q_all * pi).sum(axis=1))
    resamples = resamples or ("episodes", data.n_episodes, bootstrap, seed)
    counts = episode_counts(resamples, data.n_episodes)
    w_prev = np.concatenate([np.ones((data.n_episodes, 1)), p.weights[:, :-1]], axis=1)
    # Each term is normalised on its own: a step where a resample has no weight left contributes 0
    # to its own term, never wiping out the other (nan_to_num of the sum did that).
    current = ratio_or_zero(counts @ (p.weights * (p.rewards - p.q)), counts @ p.weights)
    previous = ratio_or_zero(counts @ (w_prev * p.v), counts @ w_prev)
    values = (current + previous) @ p.discounts
    values[~p.defined(counts)] = np.nan  # Q's extrapolation alone is no estimate
    return interval("dr", values[0], values[1:], confidence, data.n_episodes, resamples,
                    q_model="given, fixed across resamples", **p.overlap(), **p.support(data), **undefined(p))


def _doubly_robust_refit(data: OfflineDataset, target: NumpyPolicy, gamma: float, pi: np.ndarray, features: Any,
                         confidence: float, bootstrap: int, seed: int, key: tuple | None) -> Estimate:
    """:func:`doubly_robust` with Q refitted on each resample."""
    from training.rl.fqe import refit_resamples, select_basis

    features = features or select_basis(data, target, gamma, seed=seed)
    key = key or refit_resamples(data, [features], bootstrap, seed)
    groups, group_counts = resample_units(key, data.n_episodes)
    n_groups = group_counts.shape[1]
    p = pad_episodes(data, pi, gamma)
    values = dr_refit_values(data, target, gamma, pi, features, p, groups, n_groups, group_counts)
    values[~p.defined(group_counts[:, groups])] = np.nan  # Q's extrapolation alone is no estimate
    return interval("dr", values[0], values[1:], confidence, data.n_episodes, key, q_model="FQE refitted per resample",
                    basis=getattr(features, "kind", "given"), **p.overlap(), **p.support(data), **undefined(p))


def dr_refit_values(data: OfflineDataset, target: NumpyPolicy, gamma: float, pi: np.ndarray, features: Any, p: Any,
                    groups: np.ndarray, n_groups: int, group_counts: np.ndarray) -> np.ndarray:
    """Weighted DR with Q refitted (LSTDQ on ``features``) on each row of group ``group_counts``
    [K, G] (a row of ones: all of the data): the sums of :func:`doubly_robust`, taken over the
    logged rows as Q differs per row. [K] values, NaN where Q's fit is not finite."""
    from training.rl.fqe import refit_q_values

    counts = group_counts[:, groups]  # [K, E]
    w_prev = np.concatenate([np.ones((data.n_episodes, 1)), p.weights[:, :-1]], axis=1)
    episode, step = data.episode_ids, data.steps
    w_row, rows = p.weights[episode, step], np.arange(len(data.actions))
    order = np.argsort(step, kind="stable")  # rows by step: step t's sum is one reduceat segment
    starts = np.flatnonzero(np.r_[True, np.diff(step[order]) != 0])
    rewards, norm, norm_prev = counts @ (p.weights * p.rewards), counts @ p.weights, counts @ w_prev
    values = np.empty(len(counts))
    for lo, q_all in refit_q_values(data, target, gamma, features, groups, n_groups, group_counts):
        if lo == 0:
            check_finite(data, "Q-values", q_all[0])
        k, c = len(q_all), counts[lo:lo + len(q_all)][:, episode]  # [k, N]: each row's episode count
        q_taken, v = q_all[:, rows, data.actions], np.einsum("kna,na->kn", q_all, pi)
        q_sum = np.add.reduceat((c * w_row * q_taken)[:, order], starts, axis=1)  # Σ_e c w_t Q_t per step
        v_sum = np.add.reduceat((c * p.reach * v)[:, order], starts, axis=1)  # Σ_e c w_{t-1} V_t per step
        current = ratio_or_zero(rewards[lo:lo + k] - q_sum, norm[lo:lo + k])
        previous = ratio_or_zero(v_sum, norm_prev[lo:lo + k])
        values[lo:lo + k] = (current + previous) @ p.discounts
    values[~np.isfinite(values)] = np.nan
    return values


def undefined(p: Any) -> dict[str, str]:
    """``details.undefined`` of an estimate no logged episode supports (empty if it is defined)."""
    if p.weights[:, -1].sum() > 0:
        return {}
    return {"undefined": "every logged episode has a step whose logged action the target policy never takes: "
                         "its importance weights are all 0 and nothing logged says what it earns"}


def evaluate(data: OfflineDataset, target: NumpyPolicy, gamma: float, confidence: float = 0.95,
             bootstrap: int = 200, seed: int = 0, features: Any = None,
             dr_resamples: tuple | None = None) -> dict[str, Estimate]:
    """All three estimators on one dataset; DR's and FQE's Q on the basis chosen once by
    :func:`training.rl.fqe.select_basis` (or ``features``), refitted on each resample; DR on
    the resamples ``dr_resamples`` names if given (:func:`doubly_robust`)."""
    from training.rl.fqe import fqe, select_basis

    features = features or select_basis(data, target, gamma, seed=seed)
    return {
        "wis": wis(data, target, gamma, confidence, bootstrap, seed),
        "dr": doubly_robust(data, target, gamma, None, confidence, bootstrap, seed, features, dr_resamples),
        "fqe": fqe(data, target, gamma, features, confidence, bootstrap, seed),
    }


def discounted_returns(data: OfflineDataset, gamma: float) -> np.ndarray:
    """Σ_t γ^t r_t of every logged episode, [E]."""
    return np.asarray([float(data.rewards[s] @ gamma ** np.arange(s.stop - s.start)) for s in data.episode_slices()])


def on_policy_value(data: OfflineDataset, gamma: float, confidence: float = 0.95, bootstrap: int = 200,
                    seed: int = 0, resamples: tuple | None = None) -> Estimate:
    """Mean discounted return of the logged episodes themselves: the logging (live) policy's own
    value, with a bootstrap interval over ``resamples`` (as :func:`wis`: pass the resample_key
    of the estimate it will be compared with). Equals WIS with π = μ."""
    check_dataset(data, gamma)
    returns = discounted_returns(data, gamma)
    resamples = resamples or ("episodes", len(returns), bootstrap, seed)
    counts = episode_counts(resamples, data.n_episodes)[1:]
    return interval("on_policy", float(returns.mean()), counts @ returns / counts.sum(axis=1), confidence,
                    len(returns), resamples, effective_sample_size=float(len(returns)))
