"""Learning tests of the offline algorithms: BC follows human corrections, CQL beats behaviour."""

from __future__ import annotations

import numpy as np
import torch

from training.rl.bc import bc_labels, train_bc
from training.rl.cql import train_cql
from training.rl.offline_data import StepRecord, build_dataset


def corrected_logs(n: int = 2000, seed: int = 0):
    """One-step episodes on x ~ U(-1, 1). The old policy always chose 0; auditors reviewed 30%
    of decisions and answered the right action, 1 if x > 0 else 0."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        x = rng.uniform(-1, 1)
        human = int(x > 0) if rng.random() < 0.3 else None
        records.append(StepRecord(f"e{i}", 0, [x], 0, [0.9, 0.1], 0.0, True, False, human_action=human))
    return build_dataset(records)


def test_bc_learns_the_human_corrected_action() -> None:
    data = corrected_logs()
    labels, weights = bc_labels(data, human_weight=5.0)
    assert np.all(labels[data.human_actions >= 0] == data.human_actions[data.human_actions >= 0])
    model = train_bc(data, steps=1500, human_weight=5.0, seed=0)
    x = torch.linspace(-1, 1, 201)[:, None]
    with torch.no_grad():
        probs, _ = model(x)
    agreement = (probs.argmax(1).numpy() == (x[:, 0] > 0).numpy()).mean()
    assert agreement >= 0.9, agreement
    # without the corrections' weight, the old policy's 0s win on the right half too
    plain = train_bc(data, steps=1500, human_weight=0.1, seed=0)
    with torch.no_grad():
        assert (plain(x)[0].argmax(1).numpy() == (x[:, 0] > 0).numpy()).mean() < agreement


CHAIN = 3  # steps per episode; observation = one-hot step index


def chain_logs(episodes: int = 300, seed: int = 0):
    """Action 1 pays 1, action 0 pays 0, action 2 pays -1 and is never logged. The behaviour
    policy takes action 1 only 20% of the time."""
    rng = np.random.default_rng(seed)
    probs = [0.8, 0.2, 0.0]
    records = []
    for e in range(episodes):
        for t in range(CHAIN):
            a = int(rng.random() < 0.2)
            records.append(StepRecord(f"e{e}", t, np.eye(CHAIN)[t], a, probs, float(a), False, t == CHAIN - 1))
    return build_dataset(records)


def test_cql_improves_over_the_behaviour_policy() -> None:
    data = chain_logs()
    behaviour_return = float(np.mean([data.rewards[s].sum() for s in data.episode_slices()]))
    # alpha is the conservatism: with an action logged only 20% of the time, alpha ~1 holds its
    # value down by about as much as the reward gap of 1 here; 0.2 keeps it conservative only
    # where there is no data (action 2).
    policy = train_cql(data, steps=1500, gamma=0.9, alpha=0.2, target_update=100, learning_rate=1e-3, seed=0)
    with torch.no_grad():
        probs, value = policy(torch.eye(CHAIN))
        q = policy.q(torch.eye(CHAIN))
    assert torch.all(q[:, 2] < q[:, :2].min(dim=1).values - 1.0), q  # the never-logged action is pushed down
    greedy = probs.argmax(1).numpy()
    learned_return = float(sum(1.0 if a == 1 else (-1.0 if a == 2 else 0.0) for a in greedy))
    assert learned_return == CHAIN > behaviour_return + 2.0, (greedy, behaviour_return)
    assert torch.allclose(probs.sum(1), torch.ones(CHAIN))
    assert value.shape == (CHAIN,)
