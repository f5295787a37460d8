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
from training.rl.policy_export import NumpyPolicy

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


def test_model_mode_without_any_human_label_says_so_not_that_the_dataset_is_broken() -> None:
    """Human-acted steps, none carrying the human's action: the fit had nothing to learn from, gave
    every human step propensities summing to human_noise, and the dataset check then blamed the
    logs ("sum to 0.05, not 1 (rebuild the dataset ...)")."""
    from training.rl.ope_humans import HumanStepsRefused

    records = [StepRecord(f"e{e}", t, np.array([e, t], float), 0, [1.0, 0.0] if t == 1 else [0.5, 0.5], 1.0, False,
                          t == 2, human_action=None, source="human" if t == 1 else "model",
                          route="HUMAN" if t == 1 else "AUTO")
               for e in range(20) for t in range(3)]
    data = build_dataset(records)
    with pytest.raises(HumanStepsRefused, match=r"20 steps were acted on by a human, but no step carries the human's "
                                                r"action .* use 'as_logged'"):
        with_human_steps(data, "model")
    assert with_human_steps(data, "as_logged")[0] is data


def test_as_logged_noisy_humans_bias_unnormalised_is_down_and_weighted_is_up_here() -> None:
    """docs/rl.md's measured example: positive rewards, a noisy human (0.7 / 0.3) logged one-hot in
    the state that pays little. Per-decision IS shrinks every weight through a human step, so it
    is biased down; WIS normalises, so it shifts weight to the episodes that avoided the human's
    state, which pay more here: biased up. (One large log: both biases persist as it grows.)"""
    rng = np.random.default_rng(0)
    horizon, gamma, human = 4, 0.9, np.array([0.7, 0.3])
    pi, rewards = np.array([[0.2, 0.8], [0.9, 0.1]]), np.array([[1.0, 0.8], [0.05, 0.0]])

    def nxt(s, a):
        return np.array([0.2, 0.8]) if (s == 0 and a == 1) else np.eye(2)[s]

    v = np.zeros(2)
    for _ in range(horizon):
        v = (pi * np.array([[rewards[s, a] + gamma * nxt(s, a) @ v for a in (0, 1)] for s in (0, 1)])).sum(1)
    truth = v[0]  # 1.3178
    records = []
    for e in range(20_000):
        s = 0
        for t in range(horizon):
            probs = np.array([0.5, 0.5]) if s == 0 else human
            a = int(rng.random() < probs[1])
            records.append(StepRecord(f"e{e:05d}", t, np.eye(2)[s], a, probs if s == 0 else np.eye(2)[a],
                                      rewards[s, a], False, t == horizon - 1, human_action=a if s == 1 else None,
                                      source="human" if s == 1 else "model", route="HUMAN" if s == 1 else "AUTO"))
            s = int(rng.choice(2, p=nxt(s, a)))
    data, target = build_dataset(records), NumpyPolicy(lambda o: pi[np.asarray(o).argmax(1)], 2)
    weighted, plain = wis(data, target, gamma, bootstrap=20), wis(data, target, gamma, bootstrap=20, weighted=False)
    assert truth == pytest.approx(1.3178, abs=1e-4)
    assert weighted.value - truth > 0.15 and weighted.lower > truth, weighted  # about +0.19
    assert truth - plain.value > 0.03 and plain.upper < truth, plain  # about -0.05
