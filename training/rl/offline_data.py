"""The offline RL dataset: logged decisions as flat per-step arrays, saved as one ``.npz``.

The layout is the one d3rlpy's ``MDPDataset(observations, actions, rewards, terminals, timeouts)``
takes: steps of all episodes concatenated in episode order, an episode ending where
``terminals`` (the environment ended it) or ``timeouts`` (it was cut by a time limit) is 1. So a
d3rlpy user writes ``MDPDataset(**dataset.d3rlpy_arrays())``. On top of those five arrays we
keep what off-policy evaluation and learning from humans need:

==========================  ============  ==================================================
array                       shape/dtype   meaning
==========================  ============  ==================================================
observations                [N, D] f32    observation the decision was made on
actions                     [N] i64       action the environment executed
rewards                     [N] f32       reward received after the action
terminals / timeouts        [N] f32       episode ended by the env / by a time limit
next_observations           [N, D] f32    next step's observation; a copy of the step's own
                                          observation on an episode's last step (unknown)
propensities                [N, A] f32    full action-probability vector of the logging policy
behaviour_action_prob       [N] f32       propensities[t, actions[t]]
human_actions               [N] i64       the human's action where one answered, else -1
overridden                  [N] bool      a human answered and chose differently than executed
sources                     [N] str       who chose the executed action: model, human, fallback
routes                      [N] str       the triage route of the decision: AUTO, AUTO_QC, HUMAN
episode_ids / steps         [N] i64       episode number (0..E-1) and step index in it
==========================  ============  ==================================================

``episode_keys`` (the string keys, [E]) maps episode numbers back to the stream. The same
dataset as a Minari dataset (what most offline RL code reads): :mod:`training.rl.minari_format`.

Propensities of human steps (``sources == "human"``) are one-hot on the human's action: the
log does not know what else the auditor might have done, so a one-hot vector is the assumption
that humans are a known deterministic policy. Off-policy evaluation can instead drop the
episodes humans acted in or model the humans' action probabilities
(:mod:`training.rl.ope_humans`).

:func:`build_dataset` turns per-step records (what the decisions/verdicts topics carry, one
:class:`StepRecord` per decision) into a dataset; it is the function ``rl dataset`` feeds.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

FORMAT_VERSION = 2  # 2: sources and routes
SOURCES = ("model", "human", "fallback")
D3RLPY_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")
ARRAY_KEYS = D3RLPY_KEYS + ("next_observations", "propensities", "behaviour_action_prob", "human_actions",
                            "overridden", "sources", "routes", "episode_ids", "steps")


@dataclass(frozen=True)
class StepRecord:
    """One logged decision and its outcome. ``action`` is what the environment executed;
    ``action_probs`` what the logging policy gave every action; ``human_action`` the auditor's
    answer if one came (before or after the fact), else None; ``source`` who chose ``action``
    (model, human or fallback) and ``route`` the decision's triage route."""

    episode_key: str
    step: int
    observation: Any
    action: int
    action_probs: Any
    reward: float
    terminated: bool
    truncated: bool
    human_action: int | None = None
    source: str = "model"
    route: str = "AUTO"


@dataclass(frozen=True)
class OfflineDataset:
    """Per-step arrays (see the module docstring); build with :func:`build_dataset`."""

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminals: np.ndarray
    timeouts: np.ndarray
    next_observations: np.ndarray
    propensities: np.ndarray
    behaviour_action_prob: np.ndarray
    human_actions: np.ndarray
    overridden: np.ndarray
    sources: np.ndarray
    routes: np.ndarray
    episode_ids: np.ndarray
    steps: np.ndarray
    episode_keys: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.actions)
        for key in ARRAY_KEYS:
            if len(getattr(self, key)) != n:
                raise ValueError(f"array {key} has {len(getattr(self, key))} rows, actions has {n}")
        if n and not np.all(np.isfinite(self.rewards)):
            raise ValueError(f"{int(np.sum(~np.isfinite(self.rewards)))} rewards are not finite")

    @property
    def n_actions(self) -> int:
        return int(self.propensities.shape[1])

    @property
    def n_episodes(self) -> int:
        return len(self.episode_keys)

    @property
    def human_acted(self) -> np.ndarray:
        """True where a human chose the executed action (its propensity is one-hot by assumption)."""
        return self.sources == "human"

    @property
    def episode_ends(self) -> np.ndarray:
        """True on the last step of every episode."""
        return (self.terminals > 0) | (self.timeouts > 0)

    def episode_slices(self) -> list[slice]:
        starts = np.flatnonzero(np.r_[True, np.diff(self.episode_ids) != 0])
        stops = np.r_[starts[1:], len(self.episode_ids)]
        return [slice(int(a), int(b)) for a, b in zip(starts, stops)]

    def d3rlpy_arrays(self) -> dict[str, np.ndarray]:
        """Keyword arguments of ``d3rlpy.dataset.MDPDataset``."""
        return {k: getattr(self, k) for k in D3RLPY_KEYS}

    def select_episodes(self, episodes: np.ndarray) -> "OfflineDataset":
        """The dataset made of the given episode numbers (repeats allowed: a bootstrap resample),
        renumbered 0..len(episodes)-1."""
        slices = self.episode_slices()
        rows = np.concatenate([np.arange(slices[e].start, slices[e].stop) for e in episodes]) if len(episodes) else []
        rows = np.asarray(rows, dtype=np.int64)
        lengths = [slices[e].stop - slices[e].start for e in episodes]
        values = {k: getattr(self, k)[rows] for k in ARRAY_KEYS}
        values["episode_ids"] = np.repeat(np.arange(len(episodes)), lengths).astype(np.int64)
        values["episode_keys"] = self.episode_keys[np.asarray(episodes, dtype=np.int64)]
        return OfflineDataset(**values)


def build_dataset(records: Iterable[StepRecord], drop_incomplete: bool = True) -> OfflineDataset:
    """Group records by episode, order them by step and flatten them into arrays.

    Redelivered duplicates (same episode key and step) are dropped, keeping the first. An
    episode whose last step is neither terminated nor truncated is still running: it is dropped
    (``drop_incomplete``) or refused. A gap in an episode's steps is refused with the missing
    step numbers, since next observations and returns would silently be wrong.
    """
    episodes: dict[str, dict[int, StepRecord]] = defaultdict(dict)
    for r in records:
        episodes[r.episode_key].setdefault(int(r.step), r)
    rows: list[tuple[int, StepRecord]] = []
    keys: list[str] = []
    for key in sorted(episodes):
        by_step = episodes[key]
        steps = sorted(by_step)
        missing = sorted(set(range(steps[0], steps[-1] + 1)) - set(steps))
        if missing:
            raise ValueError(f"episode {key!r} is missing steps {missing[:10]} between {steps[0]} and {steps[-1]}")
        last = by_step[steps[-1]]
        if not (last.terminated or last.truncated):
            if drop_incomplete:
                continue
            raise ValueError(f"episode {key!r} has not ended: its last step {steps[-1]} is neither terminated "
                             "nor truncated")
        ended_early = [s for s in steps[:-1] if by_step[s].terminated or by_step[s].truncated]
        if ended_early:
            raise ValueError(f"episode {key!r} ends at step {ended_early[0]} but has steps up to {steps[-1]}")
        rows.extend((len(keys), by_step[s]) for s in steps)
        keys.append(key)
    if not rows:
        raise ValueError("no complete episode in the records")
    return _flatten(rows, keys)


def _flatten(rows: list[tuple[int, StepRecord]], keys: list[str]) -> OfflineDataset:
    obs = np.stack([np.asarray(r.observation, dtype=np.float32).reshape(-1) for _, r in rows])
    probs = np.stack([np.asarray(r.action_probs, dtype=np.float32).reshape(-1) for _, r in rows])
    actions = np.asarray([int(r.action) for _, r in rows], dtype=np.int64)
    if np.any(actions < 0) or np.any(actions >= probs.shape[1]):
        raise ValueError(f"actions {sorted(set(actions.tolist()))[:10]} outside 0..{probs.shape[1] - 1}")
    bad = np.flatnonzero(np.abs(probs.sum(axis=1) - 1.0) > 1e-3)
    if len(bad):
        raise ValueError(f"action_probs of {len(bad)} steps do not sum to 1 (first: {probs[bad[0]].tolist()})")
    human = np.asarray([-1 if r.human_action is None else int(r.human_action) for _, r in rows], dtype=np.int64)
    unknown = sorted({r.source for _, r in rows} - set(SOURCES))
    if unknown:
        raise ValueError(f"sources {unknown} not one of {SOURCES}")
    episode_ids = np.asarray([e for e, _ in rows], dtype=np.int64)
    terminals = np.asarray([float(r.terminated) for _, r in rows], dtype=np.float32)
    timeouts = np.asarray([float(r.truncated and not r.terminated) for _, r in rows], dtype=np.float32)
    next_obs = obs.copy()
    same_episode = episode_ids[1:] == episode_ids[:-1]
    next_obs[:-1][same_episode] = obs[1:][same_episode]
    return OfflineDataset(
        observations=obs, actions=actions,
        rewards=np.asarray([float(r.reward) for _, r in rows], dtype=np.float32),
        terminals=terminals, timeouts=timeouts, next_observations=next_obs, propensities=probs,
        behaviour_action_prob=probs[np.arange(len(actions)), actions],
        human_actions=human, overridden=(human >= 0) & (human != actions),
        sources=np.asarray([r.source for _, r in rows], dtype=str),
        routes=np.asarray([r.route for _, r in rows], dtype=str),
        episode_ids=episode_ids, steps=np.asarray([int(r.step) for _, r in rows], dtype=np.int64),
        episode_keys=np.asarray(keys, dtype=str),
    )


def save_dataset(dataset: OfflineDataset, path: Path | str) -> Path:
    """Write ``path`` (.npz, compressed) with every array and ``format_version``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {k: getattr(dataset, k) for k in ARRAY_KEYS}
    with open(path, "wb") as f:  # an open file keeps numpy from appending a second ".npz"
        np.savez_compressed(f, episode_keys=dataset.episode_keys, format_version=np.int64(FORMAT_VERSION), **arrays)
    return path


def load_dataset(path: Path | str) -> OfflineDataset:
    with np.load(Path(path), allow_pickle=False) as data:
        version = int(data["format_version"]) if "format_version" in data else None
        if version != FORMAT_VERSION:
            raise ValueError(f"{path}: dataset format_version {version}, this build reads {FORMAT_VERSION}; "
                             "rebuild it with 'auditstream rl dataset'")
        missing = [k for k in ARRAY_KEYS + ("episode_keys",) if k not in data]
        if missing:
            raise ValueError(f"{path}: dataset lacks arrays {missing}")
        return OfflineDataset(**{k: data[k] for k in ARRAY_KEYS + ("episode_keys",)})
