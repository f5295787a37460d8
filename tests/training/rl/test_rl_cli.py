"""The RL commands end to end on tiny budgets: rl train-offline (CQL and BC) and bench ope."""

from __future__ import annotations

import json

import numpy as np

from auditstream.cli import main
from auditstream.registry import ModelRegistry
from training.rl.offline_data import StepRecord, build_dataset, save_dataset


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
