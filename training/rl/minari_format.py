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
decision: ``propensities`` 0, ``human_action`` -1, ``inclusion_prob`` 0, ``source`` and ``route``
""):

========================  ============  =======================================================
infos key                 shape/dtype   meaning
========================  ============  =======================================================
propensities              [T+1, A] f32  the behaviour policy's full action-probability vector
human_action              [T+1] i64     the auditor's action where one answered, else -1
source                    [T+1] str     who chose the executed action: model, human, fallback
route                     [T+1] str     the decision's triage route: AUTO, AUTO_QC, HUMAN, TIMEOUT
                                        (:data:`~training.rl.offline_data.ROUTES`)
inclusion_prob            [T+1] f32     the probability with which the step was sent to an
                                        auditor: 1.0 (HUMAN), the QC sampling probability pi
                                        (AUTO_QC), 0.0 where not sent (AUTO, TIMEOUT); NaN:
                                        not logged (``training.rl.offline_data``)
step                      [T+1] i64     the step index in the stream's episode
final_observation_logged  [T+1] bool    the episode's flag, the same on every row: True where
                                        ``observations[T]`` is the logged observation after the
                                        last action, False where it was not logged and
                                        ``observations[T]`` repeats ``observations[T-1]``
========================  ============  =======================================================

Each episode's metadata holds ``episode_key`` (the stream's key). ``observations[T]`` is the
observation after the episode's last action: ``rl run`` sends it as the episode's end request
(``<episode_key>-end``, ``episode_end`` true) on the requests topic and ``rl dataset`` reads it
from there. Where that request is missing (lost, or deleted by retention) ``observations[T]``
repeats ``observations[T-1]`` and ``final_observation_logged`` is False: a learner that
bootstraps after a time-limit truncation must not bootstrap from such an episode's last step
(the learners here never bootstrap from an episode's last step).
:func:`read_minari` turns such a dataset back into an ``OfflineDataset`` for the learners and
off-policy evaluation. It checks the dataset's ``metadata.json`` (:data:`METADATA_KEYS`) before
Minari opens it, each episode's arrays (rows, kinds, actions inside the action space) before
anything indexes with them, and whatever Minari or pyarrow fail to decode becomes one
:class:`~training.rl.offline_data.DatasetRefused` naming the dataset; the arrays it assembles
then pass ``OfflineDataset``'s own rules.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from auditstream.errors import ConfigError
from training.rl.offline_data import DatasetNotWritten, DatasetRefused, OfflineDataset, one_line, process_umask

INFO_KEYS = ("propensities", "human_action", "source", "route", "inclusion_prob", "step", "final_observation_logged")
# in the dataset metadata: what the infos hold (2: inclusion_prob, final_observation_logged)
FORMAT_NAME = "auditstream-decision-log/2"
REWRITE = "write it again with 'auditstream rl dataset --format minari'"
# What Minari, pyarrow and h5py raise on files they cannot decode (pyarrow's errors are ValueError,
# OSError or KeyError subclasses; Minari asserts on the types it reads).
MINARI_READ_ERRORS = (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError, AssertionError, EOFError,
                      RuntimeError)


def dataset_dir(root: Path | str, dataset_id: str) -> Path:
    """Where ``dataset_id`` lives under ``root`` (Minari's own layout)."""
    return Path(root) / dataset_id


def check_dataset_id(root: Path | str, dataset_id: str) -> Path:
    """Where a new dataset ``dataset_id`` goes under ``root``; :class:`ConfigError` naming
    ``--dataset-id`` when Minari's id syntax refuses it or a dataset is there already (Minari
    datasets are immutable: the error proposes the next free version). Cheap: ``rl dataset``
    calls it before reading the stream, :func:`write_minari` again before writing."""
    from minari.dataset.minari_dataset import parse_dataset_id

    try:
        namespace, name, version = parse_dataset_id(dataset_id)
    except (ValueError, TypeError):  # a missing "-vN" is a TypeError inside Minari 0.5
        raise ConfigError("--dataset-id", dataset_id, "a Minari dataset id, (namespace/)name-vVERSION, e.g. "
                                                      "auditstream/policy-cartpole-v1/logs-v0") from None
    target = dataset_dir(root, dataset_id)
    if target.exists():
        prefix = f"{namespace}/{name}" if namespace else name
        free = next(v for v in range(version + 1, version + 10_000) if not dataset_dir(root, f"{prefix}-v{v}").exists())
        raise ConfigError("--dataset-id", dataset_id, f"an id not used yet under {root} (a dataset exists already "
                                                      f"at {target}, and Minari datasets are immutable: bump the "
                                                      f"version), e.g. {prefix}-v{free}")
    return target


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
                raise DatasetRefused(f"{env_id} has observations {env.observation_space.shape} and {env.action_space.n} "
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
        "inclusion_prob": [float(x) for x in data.inclusion_prob[s]] + [0.0],
        "step": [int(x) for x in data.steps[s]] + [int(data.steps[s.stop - 1]) + 1],
        "final_observation_logged": [bool(data.final_observation_logged[index])] * (s.stop - s.start + 1),
    }
    return EpisodeBuffer(id=index, observations=observations, actions=data.actions[s].astype(np.int64),
                         rewards=data.rewards[s].astype(np.float64).tolist(),
                         terminations=(data.terminals[s] > 0).tolist(), truncations=(data.timeouts[s] > 0).tolist(),
                         infos=infos)


def write_minari(data: OfflineDataset, root: Path | str, dataset_id: str, env_id: str = "",
                 algorithm_name: str = "auditstream decision log", description: str = "") -> Path:
    """Write ``data`` as the Minari dataset ``dataset_id`` under ``root``; returns its directory.

    Refuses (:class:`ConfigError`) an id Minari's syntax does not allow or that exists already
    (Minari datasets are immutable: bump the ``-vN``); :class:`DatasetRefused` when ``env_id``'s
    spaces do not fit the data."""
    import minari
    from minari.dataset.minari_storage import MinariStorage

    # Absolute: Minari 0.5.4 joins a relative data path onto itself when it sizes the episodes
    # (datasets/x/data/datasets/x/data/0: FileNotFoundError after the first episode is written).
    root = Path(os.path.abspath(root))
    target = check_dataset_id(root, dataset_id)
    observation_space, action_space, env_spec = _spaces(env_id, data)
    # Written beside the target and renamed into place once complete, so a failure part-way (a
    # full disk, an error inside Minari, ^C) leaves no half-written dataset that a later read
    # would take for one without episodes: the target appears whole or not at all.
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    except OSError as e:
        raise DatasetNotWritten(target, e) from None
    try:
        (staging / "data").mkdir()
        storage = MinariStorage.new(staging / "data", observation_space=observation_space,
                                    action_space=action_space, env_spec=env_spec, data_format="arrow")
        storage.update_metadata({
            "dataset_id": dataset_id, "minari_version": minari.__version__, "algorithm_name": algorithm_name,
            "author": {"auditstream"},
            "description": description or (f"{data.n_episodes} episodes ({len(data.actions)} steps) of logged "
                                           "decisions with behaviour propensities, human actions, sources, routes "
                                           "and QC inclusion probabilities in the infos"),
            "auditstream_format": FORMAT_NAME,
        })
        slices = data.episode_slices()
        storage.update_episodes(_episode_buffer(data, s, i) for i, s in enumerate(slices))
        storage.update_episode_metadata([{"episode_key": str(k)} for k in data.episode_keys], range(len(slices)))
        os.chmod(staging, 0o777 & ~process_umask())  # mkdtemp made it 0700; a plain mkdir would not have
        os.rename(staging, target)
    except OSError as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise DatasetNotWritten(target, e) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


# What a dataset's metadata.json must hold before Minari is asked to open it, and its type. The
# spaces are required: without them Minari would build the environment its env_spec names
# (importing and calling whatever entry point the file says) just to learn them.
METADATA_KEYS = {"dataset_id": str, "minari_version": str, "data_format": str, "observation_space": str,
                 "action_space": str, "total_episodes": int, "total_steps": int}


def data_path(path: Path | str) -> Path:
    """The folder holding ``metadata.json``: ``path/data`` for a dataset's directory, else ``path``."""
    path = Path(path)
    return path / "data" if (path / "data" / "metadata.json").is_file() else path


def check_metadata(path: Path | str) -> dict[str, Any]:
    """The dataset-level metadata at ``path`` (a dataset's directory or its ``data`` folder), or
    :class:`DatasetRefused` saying what is missing or malformed in it."""
    from minari.dataset._storages import get_storage_keys

    where = data_path(path) / "metadata.json"
    try:
        metadata = json.loads(where.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DatasetRefused(f"Minari dataset {path}: cannot read {where.name} ({one_line(e)}); {REWRITE}") from None
    if not isinstance(metadata, dict):
        raise DatasetRefused(f"Minari dataset {path}: {where.name} holds a {type(metadata).__name__}, not an object; "
                             f"{REWRITE}")
    for key, kind in METADATA_KEYS.items():
        if key not in metadata:
            raise DatasetRefused(f"Minari dataset {path}: {where.name} lacks {key!r}; {REWRITE}")
        if not isinstance(metadata[key], kind) or isinstance(metadata[key], bool):
            raise DatasetRefused(f"Minari dataset {path}: {where.name}'s {key!r} is {metadata[key]!r:.60}, not a "
                                 f"{kind.__name__}; {REWRITE}")
    if metadata["data_format"] not in get_storage_keys():
        raise DatasetRefused(f"Minari dataset {path}: data_format {metadata['data_format']!r:.40} is not one of "
                             f"{get_storage_keys()}; {REWRITE}")
    if metadata["total_episodes"] < 1:
        raise DatasetRefused(f"Minari dataset {path} has no episodes (total_episodes {metadata['total_episodes']}); "
                             f"{REWRITE}")
    return metadata


def open_minari(path: Path | str) -> Any:
    """The ``minari.MinariDataset`` at ``path`` (the dataset's directory or its ``data`` folder);
    :class:`DatasetRefused` when it is not one, or its metadata or files cannot be read."""
    from minari import MinariDataset

    if not is_minari_dataset(path):
        raise DatasetRefused(f"{path} is not a Minari dataset (no data/metadata.json): write one with "
                             "'auditstream rl dataset --format minari --out DIR'")
    check_metadata(path)
    try:
        return MinariDataset(data_path(path))
    except MINARI_READ_ERRORS as e:
        raise DatasetRefused(f"Minari dataset {path}: Minari cannot open it ({one_line(e)}); {REWRITE}") from None


def read_minari(source: Any) -> OfflineDataset:
    """An ``OfflineDataset`` from a Minari dataset (a ``MinariDataset`` or a path) written by
    :func:`write_minari`: its infos must hold the behaviour propensities. Whatever is wrong with
    it -- metadata, a file Minari or pyarrow cannot decode, an episode's arrays of the wrong length,
    an action outside the action space, a rule of :class:`OfflineDataset` broken -- is one
    :class:`DatasetRefused` naming the dataset (and the episode)."""
    dataset = source if hasattr(source, "iterate_episodes") else open_minari(source)
    name = f"Minari dataset {source if isinstance(source, (str, Path)) else getattr(dataset, 'id', '?')}"
    try:
        columns, keys, final_logged = _read_episodes(dataset, name)
    except DatasetRefused:
        raise
    except MINARI_READ_ERRORS as e:
        raise DatasetRefused(f"{name}: cannot read its episodes ({one_line(e)}); {REWRITE}") from None
    cat = {k: np.concatenate(v) for k, v in columns.items()}
    actions, probs = cat["actions"], cat["propensities"]
    human = cat["human_action"]
    try:
        return OfflineDataset(
            observations=cat["obs"], actions=actions, rewards=cat["rewards"], terminals=cat["terminals"],
            timeouts=cat["timeouts"], next_observations=cat["next_obs"], propensities=probs,
            behaviour_action_prob=probs[np.arange(len(actions)), actions], human_actions=human,
            overridden=(human >= 0) & (human != actions), sources=cat["source"], routes=cat["route"],
            inclusion_prob=cat["inclusion_prob"],
            episode_ids=cat["episode_ids"], steps=cat["step"], episode_keys=np.asarray(keys, dtype=str),
            final_observation_logged=np.asarray(final_logged, dtype=bool))
    except DatasetRefused as e:
        raise DatasetRefused(f"{name}: {e}") from None


def _read_episodes(dataset: Any, name: str) -> tuple[dict[str, list[np.ndarray]], list[str], list[bool]]:
    """Per-episode columns (each checked for its length and kind before anything indexes with it),
    the episode keys and each episode's ``final_observation_logged``."""
    import gymnasium as gym

    if not isinstance(dataset.action_space, gym.spaces.Discrete):
        raise DatasetRefused(f"{name}: action space {dataset.action_space} is not Discrete; the learners here need "
                             "discrete actions")
    if not isinstance(dataset.observation_space, gym.spaces.Box):
        raise DatasetRefused(f"{name}: observation space {dataset.observation_space} is not a Box; the learners here "
                             "need flat numeric observations")
    n_actions = int(dataset.action_space.n)
    metadata = list(dataset.storage.get_episode_metadata(dataset.episode_indices))
    keys, final_logged = [], []
    columns: dict[str, list[np.ndarray]] = {k: [] for k in ("obs", "next_obs", "actions", "rewards", "terminals",
                                                              "timeouts", "episode_ids", *(k for k in INFO_KEYS if k != "final_observation_logged"))}
    for e, episode in enumerate(dataset.iterate_episodes()):
        where = f"{name}, episode {episode.id}"
        missing = [k for k in INFO_KEYS if k not in episode.infos]
        if missing:
            raise DatasetRefused(f"{where}: infos lack {missing}; off-policy evaluation and the learners need the "
                                 "behaviour propensities (write the dataset with 'auditstream rl dataset --format "
                                 "minari')")
        m = metadata[e] if e < len(metadata) else None
        if not isinstance(m, dict) or "episode_key" not in m:
            raise DatasetRefused(f"{where}: its metadata lacks 'episode_key' (the stream's key); {REWRITE}")
        keys.append(str(m["episode_key"]))
        n = len(episode)
        if n == 0:
            raise DatasetRefused(f"{where} has no steps; {REWRITE}")
        obs = _column(where, "observations", episode.observations, n + 1, "fiub")
        obs = obs.reshape(n + 1, -1).astype(np.float32)
        actions = _column(where, "actions", episode.actions, n, "iub")
        bad = np.flatnonzero((actions < 0) | (actions >= n_actions))
        if len(bad):
            raise DatasetRefused(f"{where}, step {int(bad[0])}: action {int(actions[bad[0]])} is outside the action "
                                 f"space Discrete({n_actions}); {REWRITE}")
        terminals = _column(where, "terminations", episode.terminations, n, "biuf").astype(np.float32)
        truncations = _column(where, "truncations", episode.truncations, n, "biuf").astype(np.float32)
        probs = _column(where, "infos propensities", episode.infos["propensities"], n + 1, "fiub")
        if probs.ndim != 2 or probs.shape[1] != n_actions:
            raise DatasetRefused(f"{where}: infos propensities have shape {probs.shape}, expected "
                                 f"[{n + 1}, {n_actions}] (one probability per action of Discrete({n_actions})); "
                                 f"{REWRITE}")
        columns["obs"].append(obs[:-1])
        columns["next_obs"].append(obs[1:])
        columns["actions"].append(actions.astype(np.int64))
        columns["rewards"].append(_column(where, "rewards", episode.rewards, n, "fiub").astype(np.float32))
        columns["terminals"].append(terminals)
        columns["timeouts"].append(truncations * (1 - terminals))
        columns["episode_ids"].append(np.full(n, e, dtype=np.int64))
        columns["propensities"].append(probs[:n].astype(np.float32))
        columns["human_action"].append(_column(where, "infos human_action", episode.infos["human_action"], n + 1,
                                               "iu")[:n].astype(np.int64))
        columns["inclusion_prob"].append(_column(where, "infos inclusion_prob", episode.infos["inclusion_prob"], n + 1,
                                                 "fiub")[:n].astype(np.float32))
        columns["step"].append(_column(where, "infos step", episode.infos["step"], n + 1, "iu")[:n].astype(np.int64))
        for k in ("source", "route"):
            columns[k].append(_column(where, f"infos {k}", episode.infos[k], n + 1, "U")[:n])
        flags = _column(where, "infos final_observation_logged", episode.infos["final_observation_logged"], n + 1, "b")
        if flags.min() != flags.max():
            raise DatasetRefused(f"{where}: infos final_observation_logged is not the same on every row (it is the "
                                 f"episode's flag); {REWRITE}")
        final_logged.append(bool(flags[0]))
    if not keys or not columns["actions"]:
        raise DatasetRefused(f"{name} has no episodes; {REWRITE}")
    if len(metadata) != len(keys):
        raise DatasetRefused(f"{name}: {len(metadata)} episodes have metadata, {len(keys)} have steps; {REWRITE}")
    return columns, keys, final_logged


def _column(where: str, what: str, values: Any, rows: int, kinds: str) -> np.ndarray:
    """``values`` as an array of ``rows`` rows whose dtype kind is one of ``kinds``, or
    :class:`DatasetRefused` saying what it is instead. Integer kinds accept whole floats only."""
    a = np.asarray(values)
    if a.ndim == 0 or len(a) != rows:
        raise DatasetRefused(f"{where}: {what} has {len(a) if a.ndim else 'no'} rows, expected {rows}; {REWRITE}")
    if kinds == "U" and a.dtype.kind == "O" and all(isinstance(x, str) for x in a.reshape(-1)):
        a = a.astype(str)
    if a.dtype.kind not in kinds:
        whole = "i" in kinds and a.dtype.kind == "f" and np.all(np.isfinite(a)) and np.all(a == np.round(a))
        if not whole:
            expected = ("strings" if kinds == "U" else "booleans" if kinds == "b" else "whole numbers" if "f" not in kinds
                        else "numbers")
            raise DatasetRefused(f"{where}: {what} has dtype {a.dtype}, expected {expected}; {REWRITE}")
    return a
