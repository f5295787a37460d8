"""Tiny decision problems with answers known in closed form, shared by the RL tests."""

from __future__ import annotations

import numpy as np

from training.rl.offline_data import OfflineDataset, StepRecord, build_dataset
from training.rl.policy_export import NumpyPolicy

# A two-state MDP over a fixed horizon. Observation = one-hot state. Action 1 in state 0 moves
# to state 1 with probability 0.8 (else stays); in state 1 action 0 pays 1 and action 1 pays 0.5;
# every step in state 0 pays 0.1 for action 0 and 0 for action 1. Rewards carry N(0, 0.1) noise.
HORIZON, GAMMA = 4, 0.9
MU = np.array([[0.5, 0.5], [0.6, 0.4]])  # behaviour π(a | s)
PI = np.array([[0.2, 0.8], [0.9, 0.1]])  # target


def mean_reward(s: int, a: int) -> float:
    return [[0.1, 0.0], [1.0, 0.5]][s][a]


def true_value(policy: np.ndarray) -> float:
    """Exact value from state 0 at step 0 by backward induction over the horizon."""
    v = np.zeros(2)
    for _ in range(HORIZON):
        q = np.array([[mean_reward(s, a) + GAMMA * (next_dist(s, a) @ v) for a in (0, 1)] for s in (0, 1)])
        v = (policy * q).sum(axis=1)
    return float(v[0])


def next_dist(s: int, a: int) -> np.ndarray:
    return np.array([0.2, 0.8]) if (s == 0 and a == 1) else np.eye(2)[s]


def table_policy(table: np.ndarray) -> NumpyPolicy:
    return NumpyPolicy(lambda obs: table[np.asarray(obs).argmax(axis=1)], 2)


def simulate(episodes: int, seed: int, behaviour: np.ndarray = MU) -> OfflineDataset:
    rng = np.random.default_rng(seed)
    records = []
    for e in range(episodes):
        s = 0
        for t in range(HORIZON):
            probs = behaviour[s]
            a = int(rng.random() < probs[1])
            r = mean_reward(s, a) + rng.normal(0, 0.1)
            records.append(StepRecord(f"e{e:05d}", t, np.eye(2)[s], a, probs, r, False, t == HORIZON - 1))
            s = int(rng.choice(2, p=next_dist(s, a)))
    return build_dataset(records)


def tabular_features(observations: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """One-hot of (state, step): FQE with it is exact tabular FQE for this finite horizon."""
    index = np.asarray(observations).argmax(axis=1) * (HORIZON + 1) + np.minimum(steps, HORIZON)
    return np.eye(2 * (HORIZON + 1))[index]
