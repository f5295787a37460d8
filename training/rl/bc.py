"""Behaviour cloning on human-corrected decisions (HG-DAgger style).

HG-DAgger (Kelly et al. 2019) lets the learner act and a human take over where it goes wrong;
the human's actions on those states are the expert labels the next policy is trained on. In
auditstream the "takeover" is an audit: deferred decisions and sampled QC items get a human
action (``human_actions`` >= 0 in the dataset). We train a classifier on every logged step with
label = the human's action where one exists, else the executed action, and weight
human-labelled steps by ``human_weight`` so that corrections dominate where they disagree with
the old policy. A value head regresses the discounted return-to-go, so the exported graph has
the same (action_probs, value) contract as PPO's.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from auditstream.errors import TrainingDiverged
from training.rl.offline_data import OfflineDataset


class MLPPolicy(nn.Module):
    """Logits and value from one small trunk; ``forward`` gives (action_probs, value)."""

    def __init__(self, obs_dim: int, n_actions: int, hidden: int = 64) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(obs_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh())
        self.logits = nn.Linear(hidden, n_actions)
        self.value_head = nn.Linear(hidden, 1)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(obs)
        return torch.softmax(self.logits(h), dim=-1), self.value_head(h).squeeze(-1)


def bc_labels(data: OfflineDataset, human_weight: float) -> tuple[np.ndarray, np.ndarray]:
    """(label, weight) per step: the human's action where given (weight ``human_weight``),
    else the executed action (weight 1)."""
    if human_weight <= 0:
        raise ValueError(f"human_weight={human_weight} must be > 0")
    human = data.human_actions >= 0
    labels = np.where(human, data.human_actions, data.actions)
    return labels.astype(np.int64), np.where(human, human_weight, 1.0)


def returns_to_go(data: OfflineDataset, gamma: float) -> np.ndarray:
    out = np.zeros(len(data.rewards), dtype=np.float64)
    for s in data.episode_slices():
        running = 0.0
        for t in range(s.stop - 1, s.start - 1, -1):
            running = float(data.rewards[t]) + gamma * running
            out[t] = running
    return out


def train_bc(data: OfflineDataset, steps: int = 5000, batch_size: int = 256, learning_rate: float = 3e-4,
             hidden: int = 64, human_weight: float = 5.0, gamma: float = 0.99, seed: int = 1,
             progress: bool = False, init: MLPPolicy | None = None) -> MLPPolicy:
    """A policy imitating the human-corrected actions of ``data``; ``init`` fine-tunes a copy of
    that policy instead of starting from scratch (HG-DAgger's aggregation step)."""
    from tqdm import tqdm

    torch.manual_seed(seed)
    torch.set_num_threads(1)  # small MLPs: extra threads only contend
    rng = np.random.default_rng(seed)
    labels, weights = bc_labels(data, human_weight)
    obs = torch.as_tensor(data.observations, dtype=torch.float32)
    y, w = torch.as_tensor(labels), torch.as_tensor(weights, dtype=torch.float32)
    rtg = torch.as_tensor(returns_to_go(data, gamma), dtype=torch.float32)
    scale = float(rtg.abs().max().clamp(min=1.0))  # keep the value loss on the scale of the CE loss
    if init is None:
        model = MLPPolicy(obs.shape[1], data.n_actions, hidden)
    else:
        model = copy.deepcopy(init).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    for step in tqdm(range(steps), desc="bc", disable=not progress):
        idx = torch.as_tensor(rng.integers(0, len(obs), size=min(batch_size, len(obs))))
        h = model.trunk(obs[idx])
        ce = nn.functional.cross_entropy(model.logits(h), y[idx], reduction="none")
        loss = (ce * w[idx]).sum() / w[idx].sum()
        loss = loss + 0.5 * ((model.value_head(h).squeeze(-1) - rtg[idx]) / scale).pow(2).mean()
        if not torch.isfinite(loss):
            raise TrainingDiverged("bc", step, loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()
