"""What OPE assumes about human steps: one-hot as logged, excluded, or modelled. On the two-state
MDP of rl_toy, state 1 is handed to a *noisy* human (action 0 with probability 0.7) whose steps
the log records one-hot: the as-logged assumption is then wrong and biased, modelling the human
recovers the true value."""

from __future__ import annotations

import numpy as np
import pytest
from tests.training.rl.rl_toy import GAMMA, HORIZON, MU, PI, mean_reward, next_dist, table_policy, true_value

from training.rl.offline_data import StepRecord, build_dataset
from training.rl.ope import wis
from training.rl.ope_humans import human_action_model, with_human_steps

HUMAN = np.array([0.7, 0.3])  # the human's true action probabilities in state 1


def logs_with_a_noisy_human(episodes: int, seed: int):
    rng = np.random.default_rng(seed)
    records = []
    for e in range(episodes):
        s = 0
        for t in range(HORIZON):
            human = s == 1
            probs = HUMAN if human else MU[s]
            a = int(rng.random() < probs[1])
            logged = np.eye(2)[a] if human else probs  # what the decision log writes
            records.append(StepRecord(f"e{e:05d}", t, np.eye(2)[s], a, logged, mean_reward(s, a) + rng.normal(0, 0.1),
                                      False, t == HORIZON - 1, human_action=a if human else None,
                                      source="human" if human else "model", route="HUMAN" if human else "AUTO"))
            s = int(rng.choice(2, p=next_dist(s, a)))
    return build_dataset(records)


def test_modelling_a_noisy_human_removes_the_one_hot_bias() -> None:
    data = logs_with_a_noisy_human(3000, seed=0)
    truth, target = true_value(PI), table_policy(PI)
    as_logged = wis(data, target, GAMMA, weighted=False, seed=0)
    modelled_data, report = with_human_steps(data, "model", human_noise=0.01)
    modelled = wis(modelled_data, target, GAMMA, weighted=False, seed=0)
    assert report["human_acted_steps"] == int(data.human_acted.sum()) > 1000
    np.testing.assert_allclose(modelled_data.propensities[data.human_acted].mean(axis=0), HUMAN * 0.99 + 0.005,
                               atol=0.03)
    assert modelled.covers(truth), (modelled, truth)
    assert not as_logged.covers(truth) and abs(as_logged.value - truth) > 3 * abs(modelled.value - truth)
    # untouched where the model acted
    np.testing.assert_array_equal(modelled_data.propensities[~data.human_acted], data.propensities[~data.human_acted])


def test_exclude_keeps_only_episodes_no_human_acted_in() -> None:
    data = logs_with_a_noisy_human(200, seed=1)
    kept, report = with_human_steps(data, "exclude")
    assert not kept.human_acted.any() and kept.n_episodes == data.n_episodes - report["episodes_dropped"] > 0
    assert with_human_steps(data, "as_logged")[0] is data


def test_bad_modes_and_all_human_logs() -> None:
    data = logs_with_a_noisy_human(50, seed=2)
    with pytest.raises(ValueError, match="human_steps"):
        with_human_steps(data, "ignore")
    with pytest.raises(ValueError, match="human_noise"):
        human_action_model(data, human_noise=0.0)
    everyone = build_dataset([StepRecord("a", 0, [0.0], 1, [0.0, 1.0], 1.0, True, False, human_action=1, source="human")])
    with pytest.raises(ValueError, match="every one of the 1 episodes"):
        with_human_steps(everyone, "exclude")
    probs, fit = human_action_model(everyone, human_noise=0.1)  # one answer only: its frequencies
    np.testing.assert_allclose(probs, [[0.05, 0.95]])
    assert fit["model"] == "frequencies"
