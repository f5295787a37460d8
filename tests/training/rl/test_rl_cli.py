"""The RL commands end to end on tiny budgets: rl train-offline (CQL and BC) and bench ope; the
card's OPE numbers are those of the policy as it will serve (greedy: one-hot argmax)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from auditstream.cli import main
from auditstream.registry import ModelRegistry
from training.rl.args import OfflineArgs
from training.rl.offline_data import StepRecord, build_dataset, load_dataset, save_dataset


def logged_dataset(path, episodes: int = 120, seed: int = 0):
    """Short 2-D episodes logged by a uniform policy; auditors corrected a few decisions."""
    rng = np.random.default_rng(seed)
    records = []
    for e in range(episodes):
        x = rng.normal(size=2)
        for t in range(5):
            a = int(rng.integers(2))
            human = int(x[0] > 0) if rng.random() < 0.2 else None
            reward = float(a == (x[0] > 0))
            records.append(StepRecord(f"e{e}", t, x.copy(), a, [0.5, 0.5], reward, False, t == 4, human))
            x = x + rng.normal(scale=0.1, size=2)
    return save_dataset(build_dataset(records), path)


def test_train_offline_publishes_a_policy(tmp_path, capsys) -> None:
    data = logged_dataset(tmp_path / "logs.npz")
    for algorithm in ("cql", "bc"):
        rc = main(["rl", "train-offline", "--dataset", str(data), "--algorithm", algorithm, "--steps", "300",
                   "--gamma", "0.9", "--no-progress", "--models-dir", str(tmp_path / "models"), "--json"])
        assert rc == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert summary["algorithm"] == algorithm and summary["parity_max_abs_diff"] <= 1e-4
        assert {"ope_wis", "ope_dr", "ope_fqe", "ope_dr_lower", "logged_policy_value"} <= set(summary)
        card = ModelRegistry(tmp_path / "models").load(summary["model"]).card
        assert card.task == "policy" and card.metrics["ope"]["dr"]["method"] == "dr"
        assert card.training["algorithm"] == algorithm


def test_bench_ope_prints_estimator_table(capsys) -> None:
    rc = main(["bench", "ope", "--envs", "CartPole-v1", "--trials", "2", "--episodes", "30", "--truth-episodes", "60",
               "--bootstrap", "50", "--horizon", "40", "--no-progress", "--json"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for name in ("wis", "dr", "fqe"):
        assert set(result[name]) == {"coverage", "bias", "width"}
        assert 0.0 <= result["per_env"]["CartPole-v1"][name]["coverage"] <= 1.0
        assert result["per_env"]["CartPole-v1"][name]["width"] > 0


class SoftLeft(torch.nn.Module):
    """Prefers action 0 with probability 0.7 everywhere: greedy, it always takes action 0."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(2, 2)
        with torch.no_grad():
            self.linear.weight.zero_()
            self.linear.bias.copy_(torch.log(torch.tensor([0.7, 0.3])))

    def forward(self, obs):
        return torch.softmax(self.linear(obs), dim=-1), obs.sum(dim=-1) * 0.0


@pytest.mark.parametrize("selection", ["greedy", "sample"])
def test_the_cards_ope_is_of_the_policy_as_served(tmp_path, monkeypatch, selection) -> None:
    """A greedy card's OPE is that of the argmax policy (one-hot on action 0), not of its soft
    probabilities (0.7 / 0.3), which on these logs (action 1 pays where x0 > 0) differ."""
    import training.rl.offline_train as offline_train
    from training.rl.ope import evaluate
    from training.rl.policy_export import NumpyPolicy

    path = logged_dataset(tmp_path / "logs.npz")
    monkeypatch.setattr(offline_train, "train_policy", lambda args, data: SoftLeft())
    args = OfflineArgs(dataset=path, algorithm="bc", gamma=0.9, action_selection=selection, progress=False)
    summary = offline_train.run(args, str(tmp_path / "models"))
    card = ModelRegistry(tmp_path / "models").load(summary["model"]).card
    probs = {"greedy": [1.0, 0.0], "sample": [0.7, 0.3]}
    data = load_dataset(path)
    served = evaluate(data, NumpyPolicy(lambda obs: np.tile(probs[selection], (len(obs), 1)), 2), 0.9, seed=args.seed)
    other = evaluate(data, NumpyPolicy(lambda obs: np.tile(probs[{"greedy": "sample", "sample": "greedy"}[selection]],
                                                           (len(obs), 1)), 2), 0.9, seed=args.seed)
    for name in ("wis", "dr", "fqe"):
        assert card.metrics["ope"][name]["value"] == pytest.approx(served[name].value, rel=1e-6)  # float32 softmax
        assert summary[f"ope_{name}"] == pytest.approx(served[name].value, abs=1e-4)
    assert abs(served["dr"].value - other["dr"].value) > 0.05
    assert card.metrics["ope_policy"].startswith("the policy as served")


def test_undefined_ope_is_null_with_its_reason_and_an_unsupported_fqe_is_flagged(tmp_path, monkeypatch, capsys) -> None:
    """Greedy on action 0 over logs where every episode starts with action 1: no episode keeps
    importance weight, WIS and DR are undefined and FQE is Q's extrapolation. --json printed NaN
    (not JSON) and card.json held NaN; FQE's number stood as if it were evidence."""
    import training.rl.offline_train as offline_train

    rng = np.random.default_rng(0)
    records = [StepRecord(f"e{e}", t, rng.normal(size=2), 1 if t == 0 else int(rng.integers(2)), [0.5, 0.5],
                          1.0, False, t == 4) for e in range(40) for t in range(5)]
    path = save_dataset(build_dataset(records), tmp_path / "logs.npz")
    monkeypatch.setattr(offline_train, "train_policy", lambda args, data: SoftLeft())

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))

    rc = main(["rl", "train-offline", "--dataset", str(path), "--algorithm", "bc", "--action-selection", "greedy",
               "--gamma", "0.9", "--no-progress", "--models-dir", str(tmp_path / "models"), "--json"])
    assert rc == 0
    out = capsys.readouterr().out.strip().splitlines()
    summary = strict(out[-1])
    assert "OPE wis undefined dr undefined" in out[-2] and "unsupported by the logs" in out[-2]
    assert summary["ope_wis"] is None and summary["ope_dr_lower"] is None and summary["ope_fqe"] is not None
    assert set(summary["ope_undefined"]) == {"wis", "dr"}
    assert "importance weights are all 0" in summary["ope_undefined"]["wis"]
    assert "fqe" in summary["ope_unsupported"] and "effective episodes" in summary["ope_unsupported"]["fqe"]
    registered = ModelRegistry(tmp_path / "models").load(summary["model"])
    card = strict((registered.directory / "card.json").read_text())
    assert card["metrics"]["ope"]["wis"]["value"] is None and card["metrics"]["ope"]["dr"]["undefined"]
    assert card["metrics"]["ope_unsupported"]["fqe"] == summary["ope_unsupported"]["fqe"]


def cartpole_shaped(path, env_id: str = "", episodes: int = 4):
    """Episodes with CartPole's 4 observations and 2 actions, recording ``env_id`` when given."""
    rng = np.random.default_rng(1)
    records = [StepRecord(f"e{e}", t, rng.normal(size=4), t % 2, [0.5, 0.5], 1.0, False, t == 2)
               for e in range(episodes) for t in range(3)]
    return save_dataset(build_dataset(records), path, env_id=env_id)


def test_train_offline_refuses_an_env_the_dataset_does_not_fit_before_training(tmp_path, monkeypatch, capsys) -> None:
    """Before, --env LunarLander-v3 on CartPole logs trained all --steps, then crashed in the online
    evaluation ('mat1 and mat2 shapes cannot be multiplied'). Now one line naming --env, exit 2,
    before training; the environment the dataset records is named."""
    from training.rl import offline_train
    from training.rl.minari_format import write_minari
    from training.rl.offline_data import dataset_env_id, load_dataset

    monkeypatch.setattr(offline_train, "train_policy", lambda *a: pytest.fail("trained before the check"))
    recorded = cartpole_shaped(tmp_path / "cartpole_logs.npz", "CartPole-v1")
    unrecorded = cartpole_shaped(tmp_path / "unrecorded.npz")
    minari = write_minari(load_dataset(recorded), tmp_path / "datasets", "cp-v0", env_id="CartPole-v1")
    assert dataset_env_id(recorded) == dataset_env_id(minari) == "CartPole-v1" and dataset_env_id(unrecorded) == ""
    cases = [(recorded, "LunarLander-v3", "expected the environment the dataset was logged on, CartPole-v1"),
             (minari, "LunarLander-v3", "expected the environment the dataset was logged on, CartPole-v1"),
             (recorded, "CartPole-v0", "expected the environment the dataset was logged on, CartPole-v1"),
             (unrecorded, "LunarLander-v3", "observations (4,) and 2 actions (LunarLander-v3 has (8,) and 4)"),
             (logged_dataset(tmp_path / "two_d.npz", episodes=3), "CartPole-v1", "observations (2,) and 2 actions")]
    for dataset, env, says in cases:
        assert main(["rl", "train-offline", "--dataset", str(dataset), "--algorithm", "bc", "--env", env,
                     "--no-progress", "--models-dir", str(tmp_path / "models")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith(f"auditstream: error: invalid --env='{env}'"), err
        assert says in err, err
    assert not (tmp_path / "models").exists()


def test_without_env_the_card_describes_the_environment_the_dataset_records(tmp_path, capsys) -> None:
    """Before, a card trained without --env was named after the dataset file (policy-bc-cartpole_logs)
    and its actions were '0' and '1' though the dataset says it was logged on CartPole-v1."""
    dataset = cartpole_shaped(tmp_path / "cartpole_logs.npz", "CartPole-v1", episodes=8)
    assert main(["rl", "train-offline", "--dataset", str(dataset), "--algorithm", "bc", "--steps", "50",
                 "--no-progress", "--models-dir", str(tmp_path / "models"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    card = ModelRegistry(tmp_path / "models").load(summary["model"]).card
    assert card.name == "policy-bc-cartpole-v1" and card.labels == ["push_left", "push_right"]
