"""The offline dataset as a Minari dataset: what offline RL code outside auditstream reads.

Minari (Farama, the Gymnasium team) is the standard format of offline RL datasets:
``minari.load_dataset(dataset_id)`` finds ``$MINARI_DATASETS_PATH/<dataset_id>/data`` and yields
episodes with ``observations`` [T+1, ...] (the last one is the observation after the last
action), ``actions``, ``rewards``, ``terminations`` and ``truncations`` [T], and ``infos``.

:func:`write_minari` writes an :class:`~training.rl.offline_data.OfflineDataset` under a root
directory of the caller's choice (``<root>/<dataset_id>/data``, arrow storage: pyarrow is
Minari's lighter backend); nothing is read from or written to ``~/.minari`` and nothing is
downloaded. A reader points ``MINARI_DATASETS_PATH`` at the root, or opens
``minari.MinariDataset("<root>/<dataset_id>/data")`` directly. What off-policy evaluation and
learning from humans need travels in the per-step ``infos``, row t describing the decision on
``observations[t]`` (the final row, the observation after the episode's last action, has no
decision: ``propensities`` 0, ``human_action`` -1, ``source`` and ``route`` ""):

==================  ============  ===================================================
infos key           shape/dtype   meaning
==================  ============  ===================================================
propensities        [T+1, A] f32  the behaviour policy's full action-probability vector
human_action        [T+1] i64     the auditor's action where one answered, else -1
source              [T+1] str     who chose the executed action: model, human, fallback
route               [T+1] str     the decision's triage route: AUTO, AUTO_QC, HUMAN
step                [T+1] i64     the step index in the stream's episode
==================  ============  ===================================================

Each episode's metadata holds ``episode_key`` (the stream's key). The stream does not log the
observation after an episode's last action, so there ``observations[T]`` repeats
``observations[T-1]``; the learners here never bootstrap from an episode's last step.
:func:`read_minari` turns such a dataset back into an ``OfflineDataset`` for the learners and
off-policy evaluation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from training.rl.offline_data import OfflineDataset

INFO_KEYS = ("propensities", "human_action", "source", "route", "step")
FORMAT_NAME = "auditstream-decision-log/1"  # in the dataset metadata: what the infos hold


def dataset_dir(root: Path | str, dataset_id: str) -> Path:
    """Where ``dataset_id`` lives under ``root`` (Minari's own layout)."""
    return Path(root) / dataset_id


def is_minari_dataset(path: Path | str) -> bool:
    path = Path(path)
    return (path / "data" / "metadata.json").is_file() or (path / "metadata.json").is_file()


def _spaces(env_id: str, data: OfflineDataset) -> tuple[Any, Any, Any]:
    """(observation space, action space, env spec): the environment's when it is known,
    else an unbounded float32 Box and Discrete(n_actions) from the arrays."""
    import gymnasium as gym

    if env_id:
        env = gym.make(env_id)
        try:
            if env.action_space.n != data.n_actions or env.observation_space.shape != data.observations.shape[1:]:
                raise ValueError(f"{env_id} has observations {env.observation_space.shape} and {env.action_space.n} "
                                 f"actions; the dataset has {data.observations.shape[1:]} and {data.n_actions}")
            return env.observation_space, env.action_space, env.spec
        finally:
            env.close()
    box = gym.spaces.Box(-np.inf, np.inf, shape=data.observations.shape[1:], dtype=np.float32)
    return box, gym.spaces.Discrete(data.n_actions), None


def _episode_buffer(data: OfflineDataset, s: slice, index: int) -> Any:
    from minari.data_collector import EpisodeBuffer

    observations = np.concatenate([data.observations[s], data.next_observations[s][-1:]])
    infos = {
        "propensities": np.concatenate([data.propensities[s], np.zeros((1, data.n_actions), np.float32)]),
        # Per-step scalars go in as lists: minari 0.5.4's arrow reader cannot decode a 1-D
        # numpy array in the infos (it writes an empty shape and fails to parse it back).
        "human_action": [int(x) for x in data.human_actions[s]] + [-1],
        "source": [str(x) for x in data.sources[s]] + [""],
        "route": [str(x) for x in data.routes[s]] + [""],
        "step": [int(x) for x in data.steps[s]] + [int(data.steps[s.stop - 1]) + 1],
    }
    return EpisodeBuffer(id=index, observations=observations, actions=data.actions[s].astype(np.int64),
                         rewards=data.rewards[s].astype(np.float64).tolist(),
                         terminations=(data.terminals[s] > 0).tolist(), truncations=(data.timeouts[s] > 0).tolist(),
                         infos=infos)


def write_minari(data: OfflineDataset, root: Path | str, dataset_id: str, env_id: str = "",
                 algorithm_name: str = "auditstream decision log", description: str = "") -> Path:
    """Write ``data`` as the Minari dataset ``dataset_id`` under ``root``; returns its directory.

    Refuses an id that exists already (Minari datasets are immutable: bump the ``-vN``)."""
    import minari
    from minari.dataset.minari_dataset import parse_dataset_id
    from minari.dataset.minari_storage import MinariStorage

    parse_dataset_id(dataset_id)  # ValueError with Minari's own explanation of the id syntax
    target = dataset_dir(root, dataset_id)
    if target.exists():
        raise ValueError(f"Minari dataset {dataset_id!r} exists already at {target}: pick another --dataset-id "
                         "(or bump its -vN version)")
    observation_space, action_space, env_spec = _spaces(env_id, data)
    (target / "data").mkdir(parents=True)
    storage = MinariStorage.new(target / "data", observation_space=observation_space, action_space=action_space,
                                env_spec=env_spec, data_format="arrow")
    storage.update_metadata({
        "dataset_id": dataset_id, "minari_version": minari.__version__, "algorithm_name": algorithm_name,
        "author": {"auditstream"},
        "description": description or (f"{data.n_episodes} episodes ({len(data.actions)} steps) of logged decisions "
                                       "with behaviour propensities, human actions, sources and routes in the infos"),
        "auditstream_format": FORMAT_NAME,
    })
    slices = data.episode_slices()
    storage.update_episodes(_episode_buffer(data, s, i) for i, s in enumerate(slices))
    storage.update_episode_metadata([{"episode_key": str(k)} for k in data.episode_keys], range(len(slices)))
    return target


def open_minari(path: Path | str) -> Any:
    """The ``minari.MinariDataset`` at ``path`` (the dataset's directory or its ``data`` folder)."""
    from minari import MinariDataset

    path = Path(path)
    if not is_minari_dataset(path):
        raise ValueError(f"{path} is not a Minari dataset (no data/metadata.json): write one with "
                         "'auditstream rl dataset --format minari --out DIR'")
    return MinariDataset(path / "data" if (path / "data").is_dir() else path)


def read_minari(source: Any) -> OfflineDataset:
    """An ``OfflineDataset`` from a Minari dataset (a ``MinariDataset`` or a path) written by
    :func:`write_minari`: its infos must hold the behaviour propensities."""
    import gymnasium as gym

    dataset = source if hasattr(source, "iterate_episodes") else open_minari(source)
    if not isinstance(dataset.action_space, gym.spaces.Discrete):
        raise ValueError(f"Minari dataset {dataset.id}: action space {dataset.action_space} is not Discrete; the "
                         "learners here need discrete actions")
    keys = [m.get("episode_key", str(m["id"])) for m in dataset.storage.get_episode_metadata(dataset.episode_indices)]
    columns: dict[str, list[np.ndarray]] = {k: [] for k in ("obs", "next_obs", "actions", "rewards", "terminals",
                                                              "timeouts", "episode_ids", *INFO_KEYS)}
    for e, episode in enumerate(dataset.iterate_episodes()):
        missing = [k for k in INFO_KEYS if k not in episode.infos]
        if missing:
            raise ValueError(f"Minari dataset {dataset.id}, episode {episode.id}: infos lack {missing}; off-policy "
                             "evaluation and the learners need the behaviour propensities (write the dataset with "
                             "'auditstream rl dataset --format minari')")
        n = len(episode)
        obs = np.asarray(episode.observations, dtype=np.float32).reshape(n + 1, -1)
        columns["obs"].append(obs[:-1])
        columns["next_obs"].append(obs[1:])
        columns["actions"].append(np.asarray(episode.actions, dtype=np.int64).reshape(n))
        columns["rewards"].append(np.asarray(episode.rewards, dtype=np.float32))
        columns["terminals"].append(np.asarray(episode.terminations, dtype=np.float32))
        columns["timeouts"].append(np.asarray(episode.truncations, dtype=np.float32) * (1 - columns["terminals"][-1]))
        columns["episode_ids"].append(np.full(n, e, dtype=np.int64))
        for k in INFO_KEYS:
            columns[k].append(np.asarray(episode.infos[k])[:n])
    cat = {k: np.concatenate(v) for k, v in columns.items()}
    actions, probs = cat["actions"], cat["propensities"].astype(np.float32)
    human = cat["human_action"].astype(np.int64)
    return OfflineDataset(
        observations=cat["obs"], actions=actions, rewards=cat["rewards"], terminals=cat["terminals"],
        timeouts=cat["timeouts"], next_observations=cat["next_obs"], propensities=probs,
        behaviour_action_prob=probs[np.arange(len(actions)), actions], human_actions=human,
        overridden=(human >= 0) & (human != actions), sources=cat["source"].astype(str),
        routes=cat["route"].astype(str), episode_ids=cat["episode_ids"], steps=cat["step"].astype(np.int64),
        episode_keys=np.asarray(keys, dtype=str))
