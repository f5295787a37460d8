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

**Whole episodes only.** An episode is kept only when every one of its steps is there, from step
0 to an end (terminated or truncated): one whose start was lost (first step > 0), one with a
hole, one still running and one with steps after its end are dropped whole -- never cut into a
shorter fake episode, never failing the build -- and counted by reason (:data:`DROP_REASONS`)
in the ``dropped`` counter the caller passes (``rl dataset`` reports it). A propensity vector
that is not a probability distribution (not finite, an entry outside [0, 1], a sum off 1) or
that gives the executed action probability 0 is a logging bug, not a lost step: it is refused
with :class:`DatasetRefused` naming the episode and step (``rl dataset`` checks the stream's
propensities first and drops such an episode, counted, so one bad record cannot stop every
build). A dataset loaded from a file is checked the same way.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from auditstream.errors import AuditstreamError

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: sources and routes
SOURCES = ("model", "human", "fallback")
D3RLPY_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")
ARRAY_KEYS = D3RLPY_KEYS + ("next_observations", "propensities", "behaviour_action_prob", "human_actions",
                            "overridden", "sources", "routes", "episode_ids", "steps")
# Why build_dataset left an episode out (the keys of its ``dropped`` counter).
DROP_REASONS = {
    "missing_start": "its first logged step is not 0 (the start was lost)",
    "missing_steps": "steps are missing between its first and last",
    "not_ended": "its last step is neither terminated nor truncated (still running, or its end was lost)",
    "steps_after_end": "it has steps after a terminated or truncated one",
}
PROB_TOLERANCE = 1e-3  # how far a logged probability vector's sum may be from 1 (float32, rounded to 6 places)


class DatasetRefused(AuditstreamError, ValueError):
    """Logged steps that cannot make an offline dataset; the message names the episode and step."""


def propensity_problem(probs: Any, action: int) -> str | None:
    """Why ``probs`` cannot be the behaviour propensities of a step that executed ``action``,
    or None. Importance weights divide by ``probs[action]``: NaN, 0 or a negative there makes
    every off-policy estimate of the episode NaN, infinite or negative."""
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    if p.size == 0 or not np.all(np.isfinite(p)):
        return f"propensities {p.tolist()[:8]} are not all finite"
    if np.any(p < 0) or np.any(p > 1 + PROB_TOLERANCE):
        return f"propensities {p.tolist()[:8]} are not all in [0, 1]"
    if not abs(float(p.sum()) - 1.0) <= PROB_TOLERANCE:
        return f"propensities {p.tolist()[:8]} sum to {float(p.sum()):.6g}, not 1"
    if not 0 <= action < p.size:
        return f"action {action} is outside the {p.size} propensities"
    if not p[action] > 0:
        return f"the executed action {action} has propensity {p[action]:g}: it could not have been taken"
    return None


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
            raise DatasetRefused(f"{int(np.sum(~np.isfinite(self.rewards)))} rewards are not finite (first: "
                                 f"{self.where(int(np.flatnonzero(~np.isfinite(self.rewards))[0]))})")
        if n:
            bad = _bad_propensity_rows(self.propensities, self.actions, self.behaviour_action_prob)
            if len(bad):
                i = int(bad[0])
                why = (propensity_problem(self.propensities[i], int(self.actions[i]))
                       or f"behaviour_action_prob {float(self.behaviour_action_prob[i])!r} is not positive")
                raise DatasetRefused(f"{len(bad)} steps have unusable propensities; first: {self.where(i)}: {why} "
                                     "(rebuild the dataset with 'auditstream rl dataset')")

    def where(self, row: int) -> str:
        """``episode 'KEY' step T`` of a row, for error messages."""
        e = int(self.episode_ids[row])
        key = self.episode_keys[e] if 0 <= e < len(self.episode_keys) else f"#{e}"
        return f"episode {str(key)!r} step {int(self.steps[row])}"

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


def build_dataset(records: Iterable[StepRecord], drop_incomplete: bool = True,
                  dropped: Counter | None = None) -> OfflineDataset:
    """Group records by episode, order them by step and flatten them into arrays.

    Redelivered duplicates (same episode key and step) are dropped, keeping the first. Only whole
    episodes are kept (module docstring): an episode whose start was lost, with a hole, or with
    steps after its end is dropped whole, and so is one still running (its last step neither
    terminated nor truncated) unless ``drop_incomplete=False`` asks to refuse it instead.
    ``dropped`` (if given) counts the dropped episodes by reason (:data:`DROP_REASONS`).
    Propensities that are not a distribution, or give the executed action probability 0, are
    refused with :class:`DatasetRefused` naming the episode and step.
    """
    dropped = Counter() if dropped is None else dropped
    episodes: dict[str, dict[int, StepRecord]] = defaultdict(dict)
    for r in records:
        episodes[r.episode_key].setdefault(int(r.step), r)
    rows: list[tuple[int, StepRecord]] = []
    keys: list[str] = []
    for key in sorted(episodes):
        by_step = episodes[key]
        steps = sorted(by_step)
        for s in steps:
            problem = propensity_problem(by_step[s].action_probs, int(by_step[s].action))
            if problem is not None:
                raise DatasetRefused(f"episode {key!r} step {s}: {problem}; fix the logger (or drop the episode) "
                                     "and rebuild")
        last = by_step[steps[-1]]
        if not (last.terminated or last.truncated) and not drop_incomplete:
            raise DatasetRefused(f"episode {key!r} has not ended: its last step {steps[-1]} is neither terminated "
                                 "nor truncated")
        reason = _incomplete(by_step, steps)
        if reason is not None:
            dropped[reason] += 1
            log.debug("episode %r dropped: %s", key, DROP_REASONS[reason])
            continue
        rows.extend((len(keys), by_step[s]) for s in steps)
        keys.append(key)
    if dropped:
        log.info("build_dataset kept %d episodes, dropped %s", len(keys), dict(dropped))
    if not rows:
        raise DatasetRefused(f"no complete episode in the records ({len(episodes)} episodes, dropped: "
                             f"{dict(dropped) or 'none'})")
    return _flatten(rows, keys)


def _incomplete(by_step: dict[int, StepRecord], steps: list[int]) -> str | None:
    """The :data:`DROP_REASONS` key that makes this episode not whole, or None."""
    if steps[0] != 0:
        return "missing_start"
    if steps[-1] != len(steps) - 1:
        return "missing_steps"
    if not (by_step[steps[-1]].terminated or by_step[steps[-1]].truncated):
        return "not_ended"
    if any(by_step[s].terminated or by_step[s].truncated for s in steps[:-1]):
        return "steps_after_end"
    return None


def _flatten(rows: list[tuple[int, StepRecord]], keys: list[str]) -> OfflineDataset:
    obs = np.stack([np.asarray(r.observation, dtype=np.float32).reshape(-1) for _, r in rows])
    probs = np.stack([np.asarray(r.action_probs, dtype=np.float32).reshape(-1) for _, r in rows])
    actions = np.asarray([int(r.action) for _, r in rows], dtype=np.int64)
    human = np.asarray([-1 if r.human_action is None else int(r.human_action) for _, r in rows], dtype=np.int64)
    unknown = sorted({r.source for _, r in rows} - set(SOURCES))
    if unknown:
        raise DatasetRefused(f"sources {unknown} not one of {SOURCES}")
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


def _bad_propensity_rows(probs: np.ndarray, actions: np.ndarray, taken: np.ndarray) -> np.ndarray:
    """Rows whose propensities :func:`propensity_problem` refuses (vectorised), or whose
    ``behaviour_action_prob`` is not the executed action's propensity."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] == 0:
        return np.arange(len(actions))
    finite = np.isfinite(p).all(axis=1)
    in_range = ((p >= 0) & (p <= 1 + PROB_TOLERANCE)).all(axis=1)
    sums = np.abs(p.sum(axis=1) - 1.0) <= PROB_TOLERANCE
    valid_action = (actions >= 0) & (actions < p.shape[1])
    mu = p[np.arange(len(actions)), np.where(valid_action, actions, 0)]
    taken = np.asarray(taken, dtype=np.float64)
    ok = finite & in_range & sums & valid_action & (mu > 0) & np.isfinite(taken) & (taken > 0)
    return np.flatnonzero(~ok)


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
            raise DatasetRefused(f"{path}: dataset format_version {version}, this build reads {FORMAT_VERSION}; "
                             "rebuild it with 'auditstream rl dataset'")
        missing = [k for k in ARRAY_KEYS + ("episode_keys",) if k not in data]
        if missing:
            raise DatasetRefused(f"{path}: dataset lacks arrays {missing}")
        return OfflineDataset(**{k: data[k] for k in ARRAY_KEYS + ("episode_keys",)})
