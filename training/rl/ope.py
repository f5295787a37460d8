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
* ``fqe`` — fitted Q evaluation with a linear model (LSTDQ: the fixed point of fitted Q
  iteration, solved in closed form) on random Fourier features of the observation and step
  index. Closed form makes the bootstrap honest: each resample refits Q. Per-episode normal
  equations are summed with the resample's counts, so a refit costs one d×d solve.

The value estimated is E[Σ_t γ^t r_t] from an episode's first logged step, with propensities μ
taken from the dataset (``behaviour_action_prob``) and π from a :class:`NumpyPolicy`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from training.rl.offline_data import OfflineDataset
from training.rl.policy_export import NumpyPolicy

MAX_GROUPS = 256  # bootstrap units for FQE: more episodes are pooled into this many groups


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


def doubly_robust(data: OfflineDataset, target: NumpyPolicy, gamma: float, q_model: "LinearQ | None" = None,
                  confidence: float = 0.95, bootstrap: int = 200, seed: int = 0) -> Estimate:
    """Weighted doubly robust estimate; ``q_model`` defaults to FQE fitted on ``data``."""
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


class RandomFourierFeatures:
    """ψ(s, t): [1, cos(W z + b)] of the standardised observation and scaled step index z —
    a smooth, fixed basis so that FQE is linear regression and its bootstrap is cheap."""

    def __init__(self, mean: np.ndarray, scale: np.ndarray, step_scale: float, n_features: int = 64,
                 bandwidth: float = 2.0, seed: int = 0, linear: bool = True) -> None:
        rng = np.random.default_rng(seed)
        self.linear = linear
        self.mean, self.scale, self.step_scale = mean, scale, step_scale
        self.w = rng.normal(0.0, 1.0 / bandwidth, size=(len(mean) + 1, n_features))
        self.b = rng.uniform(0.0, 2 * np.pi, size=n_features)
        self.dim = n_features + 1 + (len(mean) + 1 if linear else 0)

    @classmethod
    def fit(cls, data: OfflineDataset, n_features: int = 64, bandwidth: float = 2.0, seed: int = 0,
            use_steps: bool = True) -> "RandomFourierFeatures":
        obs = data.observations.astype(np.float64)
        step_scale = float(max(1, data.steps.max())) if use_steps else 0.0
        return cls(obs.mean(axis=0), obs.std(axis=0) + 1e-6, step_scale, n_features, bandwidth, seed)

    def __call__(self, observations: np.ndarray, steps: np.ndarray) -> np.ndarray:
        z = (np.asarray(observations, dtype=np.float64) - self.mean) / self.scale
        t = np.asarray(steps, dtype=np.float64)[:, None] / self.step_scale if self.step_scale else np.zeros((len(z), 1))
        zt = np.hstack([z, t])
        parts = [np.ones((len(z), 1)), np.sqrt(2.0 / len(self.b)) * np.cos(zt @ self.w + self.b)]
        if self.linear:  # many values are near-linear in the state (e.g. shaped rewards): fit that exactly
            parts.insert(1, np.clip(zt, -5.0, 5.0))
        return np.hstack(parts)


StateFeatures = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class LinearQ:
    """Q(s, a) = ψ(s, t) · weights[a]."""

    features: StateFeatures
    weights: np.ndarray  # [A, d]

    def q_values(self, observations: np.ndarray, steps: np.ndarray) -> np.ndarray:
        return self.features(observations, steps) @ self.weights.T


def _normal_equations(data: OfflineDataset, target: NumpyPolicy, gamma: float, features: StateFeatures,
                      groups: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Per group g: A_g = Σ φ(s,a) (φ(s,a) - γ E_π φ(s',·))ᵀ and b_g = Σ φ(s,a) r (LSTDQ)."""
    n_actions = data.n_actions
    psi = features(data.observations, data.steps)
    psi_next = features(data.next_observations, data.steps + 1)
    d = psi.shape[1]
    pi_next = target.probs(data.next_observations)
    alive = (1.0 - data.episode_ends.astype(np.float64))[:, None]  # no bootstrap past an episode's end
    phi = np.zeros((len(psi), n_actions * d))
    phi_next = np.zeros_like(phi)
    for a in range(n_actions):
        rows = data.actions == a
        phi[rows, a * d:(a + 1) * d] = psi[rows]
        phi_next[:, a * d:(a + 1) * d] = gamma * alive * pi_next[:, [a]] * psi_next
    row_group = groups[data.episode_ids]
    a_mats = np.zeros((n_groups, n_actions * d, n_actions * d))
    b_vecs = np.zeros((n_groups, n_actions * d))
    for g in range(n_groups):
        rows = row_group == g
        a_mats[g] = phi[rows].T @ (phi[rows] - phi_next[rows])
        b_vecs[g] = phi[rows].T @ data.rewards[rows].astype(np.float64)
    return a_mats, b_vecs


def _solve(a: np.ndarray, b: np.ndarray, n_rows: float, ridge: float) -> np.ndarray:
    return np.linalg.solve(a + ridge * n_rows * np.eye(len(b)), b)


def fit_fqe(data: OfflineDataset, target: NumpyPolicy, gamma: float, features: StateFeatures | None = None,
            ridge: float = 1e-4) -> LinearQ:
    """Linear FQE (LSTDQ) fitted on all of ``data``."""
    _check(data, gamma)
    features = features or RandomFourierFeatures.fit(data)
    a, b = _normal_equations(data, target, gamma, features, np.zeros(data.n_episodes, dtype=np.int64), 1)
    w = _solve(a[0], b[0], len(data.actions), ridge)
    return LinearQ(features, w.reshape(data.n_actions, -1))


def fqe(data: OfflineDataset, target: NumpyPolicy, gamma: float, features: StateFeatures | None = None,
        confidence: float = 0.95, bootstrap: int = 200, seed: int = 0, ridge: float = 1e-4) -> Estimate:
    """Fitted Q evaluation; each bootstrap resample of episodes (or of groups of episodes when
    there are more than :data:`MAX_GROUPS`) refits Q."""
    _check(data, gamma)
    features = features or RandomFourierFeatures.fit(data)
    n_groups = min(data.n_episodes, MAX_GROUPS)
    groups = np.random.default_rng(seed).permutation(data.n_episodes) % n_groups
    a_mats, b_vecs = _normal_equations(data, target, gamma, features, groups, n_groups)
    first = np.flatnonzero(np.r_[True, np.diff(data.episode_ids) != 0])
    psi0 = features(data.observations[first], data.steps[first])
    pi0 = target.probs(data.observations[first])
    rows_per_group = np.bincount(groups[data.episode_ids], minlength=n_groups).astype(np.float64)
    starts_per_group = np.bincount(groups, minlength=n_groups).astype(np.float64)
    counts = np.vstack([np.ones(n_groups), _bootstrap_counts(n_groups, bootstrap, seed + 1)])
    a_flat, d = a_mats.reshape(n_groups, -1), a_mats.shape[1]
    values = np.empty(len(counts))
    for lo in range(0, len(counts), 50):  # batched solves, 50 resamples at a time to bound memory
        c = counts[lo:lo + 50]
        a = (c @ a_flat).reshape(-1, d, d) + ridge * (c @ rows_per_group)[:, None, None] * np.eye(d)
        w = np.linalg.solve(a, (c @ b_vecs)[:, :, None])[:, :, 0].reshape(len(c), data.n_actions, -1)
        v0 = np.einsum("ef,kaf,ea->ke", psi0, w, pi0)  # V(s_0) per resample and episode
        values[lo:lo + 50] = (c[:, groups] * v0).sum(axis=1) / np.maximum(c @ starts_per_group, 1.0)
    return _interval("fqe", values[0], values[1:], confidence, data.n_episodes, groups=n_groups)


def evaluate(data: OfflineDataset, target: NumpyPolicy, gamma: float, confidence: float = 0.95,
             bootstrap: int = 200, seed: int = 0, features: StateFeatures | None = None) -> dict[str, Estimate]:
    """All three estimators on one dataset; DR reuses FQE's features."""
    features = features or RandomFourierFeatures.fit(data, seed=seed)
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
