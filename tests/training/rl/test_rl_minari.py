"""The offline dataset as a Minari dataset: written where the caller says, read back by Minari
itself and by the learners, with the behaviour propensities and routes in the infos."""

from __future__ import annotations

import gymnasium as gym
import minari
import numpy as np
import pytest
from minari.data_collector import EpisodeBuffer
from tests.training.rl.test_rl_offline_data import records

from auditstream.cli import main
from auditstream.errors import BadArguments, ConfigError
from training.rl.minari_format import read_minari, write_minari
from training.rl.offline_data import DatasetRefused, StepRecord, build_dataset
from training.rl.offline_train import load_logs


def logged() -> object:
    # one-hot on the action each took (propensity 0 for an executed action is refused)
    extra = [StepRecord("d", 0, [0.5, 0.5], 1, [0.0, 1.0], 1.0, False, False, human_action=1, source="human",
                        route="HUMAN"),
             StepRecord("d", 1, [0.6, 0.4], 0, [1.0, 0.0], 1.0, True, False, source="fallback", route="HUMAN",
                        next_observation=[0.7, 0.3])]  # "d" logged its final observation, "a" and "b" did not
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
    # observations[T] is the logged final observation (the driver's end request), flagged so; where
    # none was logged, observations[T] repeats observations[T-1], flagged False
    np.testing.assert_allclose(episode.observations[-1], [0.7, 0.3])
    assert episode.infos["final_observation_logged"].tolist() == [True] * 3
    first = dataset[0]
    np.testing.assert_array_equal(first.observations[-1], first.observations[-2])
    assert first.infos["final_observation_logged"].tolist() == [False] * 3
    assert episode.terminations.tolist() == [False, True] and episode.truncations.tolist() == [False, False]
    assert episode.infos["source"].tolist() == ["human", "fallback", ""]
    assert episode.infos["route"].tolist() == ["HUMAN", "HUMAN", ""]
    np.testing.assert_allclose(episode.infos["propensities"], [[0, 1], [1, 0], [0, 0]])
    assert episode.infos["human_action"].tolist() == [1, -1, -1]
    assert episode.infos["inclusion_prob"].tolist() == [1.0, 1.0, 0.0]  # HUMAN steps; the final row has no decision
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
    with pytest.raises(DatasetRefused, match="LunarLander-v3 has observations"):
        write_minari(data, tmp_path, "lunar-v0", env_id="LunarLander-v3")


def test_clear_errors(tmp_path, monkeypatch) -> None:
    data = logged()
    write_minari(data, tmp_path, "toy-v0")
    with pytest.raises(ConfigError, match="exists already.*e.g. toy-v1"):
        write_minari(data, tmp_path, "toy-v0")
    for malformed in ("no spaces allowed", "no-version"):  # Minari 0.5 raises a TypeError on the second
        with pytest.raises(ConfigError, match=r"a Minari dataset id, \(namespace/\)name-vVERSION"):
            write_minari(data, tmp_path, malformed)
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


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and err.startswith("auditstream: error: "), err
    return err


def test_rl_dataset_refuses_a_taken_or_malformed_id_in_one_line(tmp_path, monkeypatch, capsys) -> None:
    """Before, write_minari's ValueError for an id that exists (and Minari's TypeError for an id
    without -vN) reached the command line as a traceback, exit 1, after the topics were read."""
    import training.rl.stream_dataset as stream_dataset

    reads = []

    def topics_read(settings, model=None, version=None):
        reads.append(model)
        return logged(), stream_dataset.DatasetReport(model=model or "toy", env_id="")

    monkeypatch.setattr(stream_dataset, "build_stream_dataset", topics_read)
    monkeypatch.setattr("training.rl.stream_cli._settings", lambda: None)
    out = ["rl", "dataset", "--format", "minari", "--out", str(tmp_path)]
    assert main([*out, "--dataset-id", "toy-v0"]) == 0 and len(reads) == 1
    capsys.readouterr()
    # given (or implied by --model): refused before the topics are read
    for given in (["--dataset-id", "toy-v0"], ["--model", "toy", "--dataset-id", "toy-v0"]):
        assert main([*out, *given]) == 2
        line = _one_line(capsys)
        assert line.startswith("auditstream: error: invalid --dataset-id='toy-v0': expected an id not used yet")
        assert "e.g. toy-v1" in line and len(reads) == 1
    assert main([*out, "--model", "toy"]) == 0 and len(reads) == 2  # auditstream/toy/logs-v0
    capsys.readouterr()
    assert main([*out, "--model", "toy"]) == 2 and len(reads) == 2
    assert "e.g. auditstream/toy/logs-v1" in _one_line(capsys)
    # the default id of the one model in the logs is known only once they are read: refused before writing
    assert main(out) == 2 and len(reads) == 3
    assert "invalid --dataset-id='auditstream/toy/logs-v0'" in _one_line(capsys)
    assert main([*out, "--dataset-id", "no-version"]) == 2 and len(reads) == 3
    assert "expected a Minari dataset id" in _one_line(capsys)


def test_logs_of_several_models_or_none_are_a_one_line_refusal() -> None:
    from types import SimpleNamespace

    from training.rl.stream_dataset import _only_model

    with pytest.raises(BadArguments, match=r"transitions of 2 models \['a', 'b'\]: pick one with --model"):
        _only_model(SimpleNamespace(transitions=[SimpleNamespace(model="b"), SimpleNamespace(model="a")]))
    with pytest.raises(DatasetRefused, match="holds no policy's steps"):
        _only_model(SimpleNamespace(transitions=[]))


def _stream_read_as(monkeypatch, reads: list | None = None) -> None:
    import training.rl.stream_dataset as stream_dataset

    def topics_read(settings, model=None, version=None):
        if reads is not None:
            reads.append(model)
        return logged(), stream_dataset.DatasetReport(model=model or "toy", env_id="")

    monkeypatch.setattr(stream_dataset, "build_stream_dataset", topics_read)
    monkeypatch.setattr("training.rl.stream_cli._settings", lambda: None)


def test_rl_dataset_minari_to_a_relative_out(tmp_path, monkeypatch, capsys) -> None:
    """Before, a relative --out (the README's 'datasets/') crashed inside Minari 0.5.4 with a
    FileNotFoundError on a doubled path (datasets/x/data/datasets/x/data/0) and left a folder
    whose metadata said 0 episodes."""
    _stream_read_as(monkeypatch)
    monkeypatch.chdir(tmp_path)
    assert main(["rl", "dataset", "--format", "minari", "--out", "datasets/", "--dataset-id", "auditstream/toy/logs-v0"]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and f"MINARI_DATASETS_PATH={tmp_path / 'datasets'}" in captured.err
    path = tmp_path / "datasets/auditstream/toy/logs-v0"
    back = load_logs(path)
    assert back.n_episodes == 3 and len(back.actions) == 6
    assert load_logs("datasets/auditstream/toy/logs-v0").n_episodes == 3  # and relative to the same folder
    monkeypatch.setenv("MINARI_DATASETS_PATH", "datasets")  # what docs/rl.md tells a reader to do
    assert minari.load_dataset("auditstream/toy/logs-v0").total_episodes == 3


def test_a_failed_minari_write_leaves_no_dataset(tmp_path, monkeypatch) -> None:
    """A failure part-way through writing (Minari's, a full disk) leaves nothing that a later read
    takes for a dataset (before: a data/metadata.json with total_episodes 0, refused later as 'has
    no episodes'), and a disk error is one line naming the dataset."""
    from minari.dataset._storages.arrow_storage import ArrowStorage

    from training.rl.offline_data import DatasetNotWritten

    def fail(self, episodes):
        next(iter(episodes))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ArrowStorage, "update_episodes", fail)
    with pytest.raises(DatasetNotWritten, match=r"cannot write the dataset .*toy-v0: OSError: .*No space left"):
        write_minari(logged(), tmp_path, "toy-v0")
    assert not (tmp_path / "toy-v0").exists() and list(tmp_path.iterdir()) == []
    monkeypatch.setattr(ArrowStorage, "update_episodes", lambda self, episodes: 1 / 0)
    with pytest.raises(ZeroDivisionError):  # not an OSError: a bug, shown in full, and still nothing left behind
        write_minari(logged(), tmp_path, "ns/toy-v0")
    assert not (tmp_path / "ns/toy-v0").exists() and list((tmp_path / "ns").iterdir()) == []
    monkeypatch.undo()
    write_minari(logged(), tmp_path, "toy-v0")  # the id is still free
    assert load_logs(tmp_path / "toy-v0").n_episodes == 3


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_datasets_get_the_mode_a_plain_create_would_give(tmp_path, mask) -> None:
    """Both formats are written under a temporary name (mkdtemp/mkstemp: 0700/0600) and renamed;
    a reader in the group or another service account must still open them as before."""
    import os
    import stat

    from training.rl.offline_data import process_umask, save_dataset

    old = os.umask(mask)
    try:
        assert process_umask() == mask
        folder = write_minari(logged(), tmp_path, "ns/toy-v0")
        npz = save_dataset(logged(), tmp_path / "logs.npz")
    finally:
        os.umask(old)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~mask
    assert stat.S_IMODE(npz.stat().st_mode) == 0o666 & ~mask
