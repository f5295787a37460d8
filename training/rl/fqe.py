"""Fitted Q evaluation (FQE) with a linear model, and the state bases it can use.

FQE learns Q^π(s, a) from logged transitions by regressing r + γ E_π Q(s', ·) on Q(s, a). With
Q linear in fixed features φ(s, a) = onehot(a) ⊗ ψ(s, t), the fixed point of that iteration
has a closed form (LSTDQ): A w = b with A = Σ φ (φ - γ E_π φ')ᵀ and b = Σ φ r. We keep A and b
per episode group, so a bootstrap resample of episodes is a weighted sum of them and one d×d
solve: each resample refits Q, and the interval reflects the refit's variance.

What the bootstrap cannot see is misspecification: if no w fits Q^π, FQE is biased, and a
narrow interval around a biased number covers nothing. So (:func:`select_basis`) the basis is
chosen per dataset on held-out episodes by an importance-weighted estimate of its own error at
the start state, and the interval is widened on both sides by that held-out error (reported as
``misspecification_allowance``). The families of ψ on standardised observations z and the
scaled step index t:

* ``rff`` — random Fourier features cos(W [z, t] + b): smooth, local (suits CartPole's value);
* ``quadratic`` — 1, z, |z|, z_i z_j: norms and products (suits shaped rewards such as
  LunarLander's, which are differences of distance/speed potentials);
* ``quadratic+rff`` — both.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

from training.rl.args import MIN_SELECTION_EPISODES
from training.rl.offline_data import OfflineDataset
from training.rl.ope_stats import (Estimate, bootstrap_counts, check_dataset, check_finite, check_policy_probs,
                                   interval, pad_episodes, ratio_or_zero)
from training.rl.policy_export import NumpyPolicy

MAX_GROUPS = 256  # fqe's bootstrap units: more episodes are pooled into this many groups
MAX_GROUP_BYTES = 512 * 2**20  # per-group normal equations kept in memory at once
MAX_QUADRATIC_DIM = 16  # quadratic bases grow as dim²: above this only rff is tried
BASES = ("rff", "quadratic", "quadratic+rff")
DEFAULT_RIDGE = 1e-5


class StateBasis:
    """ψ(s, t) of one family in :data:`BASES`, standardised with the dataset's statistics."""

    def __init__(self, kind: str, mean: np.ndarray, scale: np.ndarray, step_scale: float, n_features: int = 64,
                 bandwidth: float = 2.0, seed: int = 0) -> None:
        if kind not in BASES:
            raise ValueError(f"basis {kind!r} not one of {BASES}")
        rng = np.random.default_rng(seed)
        self.kind, self.mean, self.scale, self.step_scale = kind, mean, scale, step_scale
        # set by select_basis: RMS estimated start-state error on held-out folds (NaN: too few episodes to tell)
        self.heldout_error = 0.0
        self.w = rng.normal(0.0, 1.0 / bandwidth, size=(len(mean) + 1, n_features))
        self.b = rng.uniform(0.0, 2 * np.pi, size=n_features)

    @classmethod
    def fit(cls, data: OfflineDataset, kind: str = "rff", n_features: int = 64, bandwidth: float = 2.0,
            seed: int = 0) -> "StateBasis":
        obs = data.observations.astype(np.float64)
        # a near-constant coordinate (e.g. a leg-contact flag that never fires) must not explode z
        return cls(kind, obs.mean(axis=0), obs.std(axis=0) + 1e-3, float(max(1, data.steps.max())), n_features,
                   bandwidth, seed)

    def __call__(self, observations: np.ndarray, steps: np.ndarray) -> np.ndarray:
        z = np.clip((np.asarray(observations, dtype=np.float64) - self.mean) / self.scale, -5.0, 5.0)
        zt = np.hstack([z, np.asarray(steps, dtype=np.float64)[:, None] / self.step_scale])
        parts = [np.ones((len(z), 1))]
        if "quadratic" in self.kind:
            i, j = np.triu_indices(zt.shape[1])
            parts += [zt, np.abs(zt), zt[:, i] * zt[:, j] / 5.0]
        if "rff" in self.kind:
            parts.append(np.sqrt(2.0 / len(self.b)) * np.cos(zt @ self.w + self.b))
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
    check_policy_probs(data, "target policy probabilities at the next observation", pi_next)
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
    order = np.argsort(row_group, kind="stable")  # each group's rows one slice: no pass over all rows per group
    bounds = np.searchsorted(row_group[order], np.arange(n_groups + 1))
    for g in range(n_groups):
        rows = order[bounds[g]:bounds[g + 1]]
        a_mats[g] = phi[rows].T @ (phi[rows] - phi_next[rows])
        b_vecs[g] = phi[rows].T @ data.rewards[rows].astype(np.float64)
    return a_mats, b_vecs


def _solve(a: np.ndarray, b: np.ndarray, n_rows: float, ridge: float) -> np.ndarray:
    return np.linalg.solve(a + ridge * n_rows * np.eye(len(b)), b)


def fit_fqe(data: OfflineDataset, target: NumpyPolicy, gamma: float, features: StateFeatures | None = None,
            ridge: float = DEFAULT_RIDGE) -> LinearQ:
    """Linear FQE (LSTDQ) fitted on all of ``data``."""
    check_dataset(data, gamma)
    features = features or select_basis(data, target, gamma, ridge)
    a, b = _normal_equations(data, target, gamma, features, np.zeros(data.n_episodes, dtype=np.int64), 1)
    w = _solve(a[0], b[0], len(data.actions), ridge)
    return LinearQ(features, w.reshape(data.n_actions, -1))


def fqe(data: OfflineDataset, target: NumpyPolicy, gamma: float, features: StateFeatures | None = None,
        confidence: float = 0.95, bootstrap: int = 200, seed: int = 0, ridge: float = DEFAULT_RIDGE) -> Estimate:
    """Fitted Q evaluation; each bootstrap resample of episodes (or of groups of episodes when
    there are more than :data:`MAX_GROUPS`) refits Q."""
    check_dataset(data, gamma)
    features = features or select_basis(data, target, gamma, ridge, seed)
    d_all = data.n_actions * features(data.observations[:1], data.steps[:1]).shape[1]
    n_groups = min(data.n_episodes, MAX_GROUPS, max(32, MAX_GROUP_BYTES // (8 * d_all * d_all)))
    groups = np.random.default_rng(seed).permutation(data.n_episodes) % n_groups
    a_mats, b_vecs = _normal_equations(data, target, gamma, features, groups, n_groups)
    first = np.flatnonzero(np.r_[True, np.diff(data.episode_ids) != 0])
    psi0 = features(data.observations[first], data.steps[first])
    pi0 = target.probs(data.observations[first])
    check_policy_probs(data, "target policy probabilities", pi0, first)
    padded = pad_episodes(data, target.probs(data.observations), gamma)
    overlap = {**padded.overlap(), **padded.support(data)}  # what the log covers: Q is extrapolated elsewhere
    rows_per_group = np.bincount(groups[data.episode_ids], minlength=n_groups).astype(np.float64)
    starts_per_group = np.bincount(groups, minlength=n_groups).astype(np.float64)
    counts = np.vstack([np.ones(n_groups), bootstrap_counts(n_groups, bootstrap, seed + 1)])
    a_flat, d = a_mats.reshape(n_groups, -1), a_mats.shape[1]
    values = np.empty(len(counts))
    for lo in range(0, len(counts), 50):  # batched solves, 50 resamples at a time to bound memory
        c = counts[lo:lo + 50]
        a = (c @ a_flat).reshape(-1, d, d) + ridge * (c @ rows_per_group)[:, None, None] * np.eye(d)
        w = np.linalg.solve(a, (c @ b_vecs)[:, :, None])[:, :, 0].reshape(len(c), data.n_actions, -1)
        v0 = np.einsum("ef,kaf,ea->ke", psi0, w, pi0)  # V(s_0) per resample and episode
        values[lo:lo + 50] = (c[:, groups] * v0).sum(axis=1) / np.maximum(c @ starts_per_group, 1.0)
    # The bootstrap sees the refit's variance, not misspecification: widen by the basis's own
    # held-out estimate of its start-state error (0 for caller-given features). Where it could
    # not be measured, a bare bootstrap interval would claim what it cannot: no interval.
    allowance = float(getattr(features, "heldout_error", 0.0))
    unmeasured = {} if math.isfinite(allowance) else {
        "no_interval": f"{data.n_episodes} episode(s): the basis's misspecification (its held-out start-state "
                       f"error, which widens FQE's interval) needs at least {MIN_SELECTION_EPISODES} episodes, two "
                       "held-out folds of two; the value is a point estimate only"}
    est = interval("fqe", values[0], values[1:], confidence, data.n_episodes, groups=n_groups,
                   basis=getattr(features, "kind", "given"),
                   misspecification_allowance=allowance if math.isfinite(allowance) else None, **unmeasured, **overlap)
    return dataclasses.replace(est, lower=est.lower - allowance, upper=est.upper + allowance)


def refit_resamples(data: OfflineDataset, features: Sequence[StateFeatures], bootstrap: int, seed: int) -> tuple:
    """The resample key (:func:`~training.rl.ope_stats.resample_units`) of an estimate that refits
    Q on every resample, on any of ``features`` (the bases of estimates that are to be compared
    pairwise: the widest decides). Episodes, each its own unit -- the resamples of WIS and
    :func:`~training.rl.ope.on_policy_value`, ``("episodes", E, bootstrap, seed)`` -- unless their
    per-episode normal equations would not fit in :data:`MAX_GROUP_BYTES`; then episodes are pooled
    at random into as many groups as fit (at least 32), the resampled units."""
    e = data.n_episodes
    d_all = max(data.n_actions * f(data.observations[:1], data.steps[:1]).shape[1] for f in features)
    fits = MAX_GROUP_BYTES // (8 * d_all * d_all)
    if e <= fits:
        return ("episodes", e, bootstrap, seed)
    return ("groups", e, min(e, max(32, fits)), bootstrap, seed)


def refit_q_values(data: OfflineDataset, target: NumpyPolicy, gamma: float, features: StateFeatures,
                   groups: np.ndarray, n_groups: int, counts: np.ndarray,
                   ridge: float = DEFAULT_RIDGE) -> Iterator[tuple[int, np.ndarray]]:
    """Q(s, a) at every logged step with Q refitted (LSTDQ, as :func:`fit_fqe`) on each row of
    group ``counts`` [K, G]: yields (first row, Q-values [k, N, A]) a few rows at a time. A row
    of ones is :func:`fit_fqe` on all of ``data``."""
    a_mats, b_vecs = _normal_equations(data, target, gamma, features, groups, n_groups)
    psi = features(data.observations, data.steps)
    rows_per_group = np.bincount(groups[data.episode_ids], minlength=n_groups).astype(np.float64)
    a_flat, d = a_mats.reshape(n_groups, -1), a_mats.shape[1]
    chunk = int(max(1, min(50, 4_000_000 // max(1, len(psi) * data.n_actions))))
    for lo in range(0, len(counts), chunk):
        c = counts[lo:lo + chunk]
        a = (c @ a_flat).reshape(-1, d, d) + ridge * (c @ rows_per_group)[:, None, None] * np.eye(d)
        w = np.linalg.solve(a, (c @ b_vecs)[:, :, None])[:, :, 0].reshape(len(c), data.n_actions, -1)
        yield lo, np.einsum("nf,kaf->kna", psi, w)


def select_basis(data: OfflineDataset, target: NumpyPolicy, gamma: float, ridge: float = DEFAULT_RIDGE,
                 seed: int = 0) -> StateBasis:
    """The basis in :data:`BASES` whose Q, fitted on one half of the episodes, has the smallest
    estimated start-state error on the other half (two folds, mean squared over folds).

    FQE's error at the start state is the discounted sum of its Bellman residuals along the
    target policy's trajectories: V̂(s0) - V(s0) = -E_π[Σ_t γ^t (r_t + γ V̂(s_t+1) - Q̂(s_t, a_t))].
    On held-out logs we estimate that with per-decision weighted importance weights (the DR
    correction term), so the selection targets the number FQE reports, not a fit elsewhere.
    """
    if data.n_episodes < MIN_SELECTION_EPISODES:
        basis = StateBasis.fit(data, "rff", seed=seed)
        basis.heldout_error = math.nan  # not measured: FQE then gives no interval (fqe)
        return basis
    folds = np.random.default_rng(seed).permutation(data.n_episodes) % 2
    errors = {}
    for kind in BASES if data.observations.shape[1] <= MAX_QUADRATIC_DIM else ("rff",):
        basis = StateBasis.fit(data, kind, seed=seed)
        squared = 0.0
        for k in (0, 1):
            train = data.select_episodes(np.flatnonzero(folds != k))
            held = data.select_episodes(np.flatnonzero(folds == k))
            squared += _start_error(fit_fqe(train, target, gamma, basis, ridge), held, target, gamma) ** 2
        errors[kind] = squared / 2
    best = StateBasis.fit(data, min(errors, key=errors.get), seed=seed)
    best.heldout_error = float(np.sqrt(errors[best.kind]))
    return best


def _start_error(q: LinearQ, held: OfflineDataset, target: NumpyPolicy, gamma: float) -> float:
    """Weighted per-decision IS estimate of -(V̂(s0) - V(s0)) on ``held``: Σ_t γ^t of the
    importance-weighted mean Bellman residual r + γ V̂(s') - Q̂(s, a) at step t."""
    q_now = q.q_values(held.observations, held.steps)[np.arange(len(held.actions)), held.actions]
    v_next = (q.q_values(held.next_observations, held.steps + 1) * target.probs(held.next_observations)).sum(1)
    alive = 1.0 - held.episode_ends.astype(np.float64)
    residual = (held.rewards + gamma * alive * v_next - q_now).astype(np.float32)
    check_finite(held, "FQE Bellman residual", residual)
    padded = pad_episodes(dataclasses.replace(held, rewards=residual), target.probs(held.observations), gamma)
    per_step = ratio_or_zero((padded.weights * padded.rewards).sum(axis=0), padded.weights.sum(axis=0))
    return float(per_step @ padded.discounts)
