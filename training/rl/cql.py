"""Discrete conservative Q-learning (CQL, Kumar et al. 2020) on an offline dataset.

Plain Q-learning on logged data overestimates actions the logging policy rarely took (their
Q-values are never corrected by data) and then picks exactly those. CQL adds a penalty
``alpha * (logsumexp_a Q(s, a) - Q(s, a_data))`` that pushes down every action's value and pushes
up the logged one, so the learned policy stays where the data can vouch for it:

    loss = ½ (Q(s, a) - [r + γ (1 - end) Q_target(s', argmax_a' Q(s', a'))])² + alpha * penalty

(double-DQN targets, a target network copied every ``target_update`` steps). Episode ends do
not bootstrap: terminals by definition, timeouts by choice. A format-3 dataset does log the
observation after an episode's last action, but not for every episode
(``final_observation_logged`` False: the step's own observation stands in), and one rule for
every end keeps Q from bootstrapping off a stand-in; the cost: at a time-limit cut the target
leaves out the value after it (the observation carries no step index to see the cut coming).
The exported policy is softmax(Q / temperature) with value Σ_a π(a|s) Q(s, a),
the same (action_probs, value) contract as every other policy here.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from auditstream.errors import TrainingDiverged
from training.rl.offline_data import OfflineDataset


class QNetwork(nn.Module):
    def __init__(self, obs_dim: int, n_actions: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(obs_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, n_actions))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs)


class QPolicy(nn.Module):
    """Exportable view of a Q-network: (softmax(Q / temperature), Σ π Q)."""

    def __init__(self, q: QNetwork, temperature: float = 1.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature={temperature} must be > 0")
        self.q, self.temperature = q, temperature

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.q(obs)
        probs = torch.softmax(q / self.temperature, dim=-1)
        return probs, (probs * q).sum(dim=-1)


def train_cql(data: OfflineDataset, steps: int = 20_000, batch_size: int = 256, learning_rate: float = 3e-4,
              hidden: int = 64, gamma: float = 0.99, alpha: float = 1.0, target_update: int = 500,
              temperature: float = 1.0, seed: int = 1, progress: bool = False) -> QPolicy:
    """Fit a conservative Q-function on ``data``; returns the exportable policy."""
    from tqdm import tqdm

    if alpha < 0 or not 0.0 < gamma <= 1.0 or target_update < 1:
        raise ValueError(f"need alpha >= 0, 0 < gamma <= 1, target_update >= 1; got {alpha}, {gamma}, {target_update}")
    torch.manual_seed(seed)
    torch.set_num_threads(1)  # small MLPs: extra threads only contend
    rng = np.random.default_rng(seed)
    obs = torch.as_tensor(data.observations, dtype=torch.float32)
    next_obs = torch.as_tensor(data.next_observations, dtype=torch.float32)
    actions = torch.as_tensor(data.actions)
    rewards = torch.as_tensor(data.rewards, dtype=torch.float32)
    alive = torch.as_tensor(1.0 - data.episode_ends.astype(np.float32))
    q = QNetwork(obs.shape[1], data.n_actions, hidden)
    target = copy.deepcopy(q)
    optimizer = torch.optim.Adam(q.parameters(), lr=learning_rate)
    for step in tqdm(range(steps), desc="cql", disable=not progress):
        idx = torch.as_tensor(rng.integers(0, len(obs), size=min(batch_size, len(obs))))
        q_all = q(obs[idx])
        q_taken = q_all.gather(1, actions[idx, None]).squeeze(1)
        with torch.no_grad():
            best = q(next_obs[idx]).argmax(dim=1, keepdim=True)
            y = rewards[idx] + gamma * alive[idx] * target(next_obs[idx]).gather(1, best).squeeze(1)
        td = 0.5 * (q_taken - y).pow(2).mean()
        penalty = (torch.logsumexp(q_all, dim=1) - q_taken).mean()
        loss = td + alpha * penalty
        if not torch.isfinite(loss):
            raise TrainingDiverged("cql", step, loss.item())
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(q.parameters(), 10.0)
        optimizer.step()
        if (step + 1) % target_update == 0:
            target.load_state_dict(q.state_dict())
    return QPolicy(q.eval(), temperature).eval()
