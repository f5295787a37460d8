"""The offline dataset as a Minari dataset: written where the caller says, read back by Minari
itself and by the learners, with the behaviour propensities and routes in the infos."""

from __future__ import annotations

import gymnasium as gym
import minari
import numpy as np
import pytest
from minari.data_collector import EpisodeBuffer
from tests.training.rl.test_rl_offline_data import records

from training.rl.minari_format import read_minari, write_minari
from training.rl.offline_data import StepRecord, build_dataset
from training.rl.offline_train import load_logs


def logged() -> object:
    # one-hot on the action each took (propensity 0 for an executed action is refused)
    extra = [StepRecord("d", 0, [0.5, 0.5], 1, [0.0, 1.0], 1.0, False, False, human_action=1, source="human",
                        route="HUMAN"),
             StepRecord("d", 1, [0.6, 0.4], 0, [1.0, 0.0], 1.0, True, False, source="fallback", route="HUMAN")]
    return build_dataset(records() + extra)


def test_minari_reads_what_we_write(tmp_path, monkeypatch) -> None:
    data = logged()
    path = write_minari(data, tmp_path, "auditstream/toy/logs-v0")
    assert path == tmp_path / "auditstream/toy/logs-v0"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    dataset = minari.load_dataset("auditstream/toy/logs-v0")
    assert dataset.total_episodes == 3 and dataset.total_steps == len(data.actions) == 6
    assert dataset.action_space == gym.spaces.Discrete(2) and dataset.observation_space.shape == (2,)
    episode = dataset[2]  # "d": a human acted, then the fallback
    assert episode.observations.shape == (3, 2) and episode.actions.tolist() == [1, 0]
    assert episode.terminations.tolist() == [False, True] and episode.truncations.tolist() == [False, False]
    assert episode.infos["source"].tolist() == ["human", "fallback", ""]
    assert episode.infos["route"].tolist() == ["HUMAN", "HUMAN", ""]
    np.testing.assert_allclose(episode.infos["propensities"], [[0, 1], [1, 0], [0, 0]])
    assert episode.infos["human_action"].tolist() == [1, -1, -1]
    assert [m["episode_key"] for m in dataset.storage.get_episode_metadata([0, 1, 2])] == ["a", "b", "d"]
    assert minari.list_local_datasets()["auditstream/toy/logs-v0"]["dataset_id"] == "auditstream/toy/logs-v0"


def test_round_trip_and_the_learners_read_it(tmp_path) -> None:
    data = logged()
    path = write_minari(data, tmp_path, "toy-v1")
    for back in (read_minari(path), load_logs(path), load_logs(path / "data")):
        for key in data.__dataclass_fields__:
            np.testing.assert_array_equal(getattr(back, key), getattr(data, key), err_msg=key)
    assert back.human_acted.tolist() == [False, False, False, False, True, False]


def test_env_spaces_and_spec_when_the_env_is_known(tmp_path) -> None:
    rng = np.random.default_rng(0)
    data = build_dataset([StepRecord("e", t, rng.normal(size=4), t % 2, [0.5, 0.5], 1.0, False, t == 2)
                          for t in range(3)])
    dataset = minari.MinariDataset(write_minari(data, tmp_path, "cartpole-v0", env_id="CartPole-v1") / "data")
    assert dataset.env_spec.id == "CartPole-v1"
    assert dataset.observation_space == gym.make("CartPole-v1").observation_space
    with pytest.raises(ValueError, match="LunarLander-v3 has observations"):
        write_minari(data, tmp_path, "lunar-v0", env_id="LunarLander-v3")


def test_clear_errors(tmp_path, monkeypatch) -> None:
    data = logged()
    write_minari(data, tmp_path, "toy-v0")
    with pytest.raises(ValueError, match="exists already"):
        write_minari(data, tmp_path, "toy-v0")
    with pytest.raises(ValueError, match="Malformed dataset ID"):
        write_minari(data, tmp_path, "no spaces allowed")
    with pytest.raises(ValueError, match="not a Minari dataset"):
        read_minari(tmp_path / "nowhere")
    # A Minari dataset from elsewhere, without behaviour propensities in its infos.
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    plain = EpisodeBuffer(observations=np.zeros((3, 2), np.float32), actions=[0, 1], rewards=[1.0, 1.0],
                          terminations=[False, True], truncations=[False, False])
    minari.create_dataset_from_buffers("plain-v0", [plain], action_space=gym.spaces.Discrete(2),
                                       observation_space=gym.spaces.Box(-1, 1, (2,)), data_format="arrow",
                                       author="t", author_email="t", code_permalink="t", algorithm_name="t",
                                       description="t")
    with pytest.raises(ValueError, match="infos lack"):
        read_minari(tmp_path / "plain-v0")
