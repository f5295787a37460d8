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
next_observations           [N, D] f32    next step's observation; on an episode's last step the
                                          observation after its last action (``rl dataset``:
                                          the driver's end request), or, where that was not
                                          logged, a copy of the step's own observation
propensities                [N, A] f32    full action-probability vector of the logging policy
behaviour_action_prob       [N] f32       propensities[t, actions[t]]
human_actions               [N] i64       the human's action where one answered, else -1
overridden                  [N] bool      a human answered and chose differently than executed
sources                     [N] str       who chose the executed action: model, human, fallback
routes                      [N] str       the triage route of the decision: AUTO, AUTO_QC, HUMAN,
                                          or TIMEOUT (no answer reached the logger: :data:`ROUTES`)
inclusion_prob              [N] f32       the probability with which the step was sent to an
                                          auditor (:func:`inclusion_by_route`): 1.0 (HUMAN),
                                          the QC sampling probability pi (AUTO_QC), 0.0 where
                                          it was not sent (AUTO, TIMEOUT); NaN: not logged
episode_ids / steps         [N] i64       episode number (0..E-1) and step index in it
==========================  ============  ==================================================

Two arrays are per episode ([E]): ``episode_keys`` (the string keys) maps episode numbers back to
the stream, and ``final_observation_logged`` (bool) says whether the last step's
``next_observations`` is the logged observation after the episode's last action (False: it was
not logged, and the step's own observation stands in; the learners here never bootstrap from an
episode's last step, but a learner that bootstraps after a time-limit truncation must skip
those episodes' last steps). The same
dataset as a Minari dataset (what most offline RL code reads): :mod:`training.rl.minari_format`.

Propensities of human steps (``sources == "human"``) are one-hot on the human's action: the
log does not know what else the auditor might have done, so a one-hot vector is the assumption
that humans are a known deterministic policy. Off-policy evaluation can instead drop the
episodes humans acted in or model the humans' action probabilities
(:mod:`training.rl.ope_humans`).

**Human labels are a sample.** An auditor sees every deferred decision (HUMAN) but, of the
auto-accepted ones, only those QC sampled (AUTO_QC), each with a confidence-dependent
probability pi (the verdict's ``inclusion_prob``, the model decision's ``qc_inclusion_prob``):
``inclusion_prob`` carries it, so an estimate over human-labelled steps weighs each by
``1 / inclusion_prob`` (Horvitz-Thompson). It is 1.0 on HUMAN steps, pi on AUTO_QC steps, and
0.0 where the step was not sent to an auditor (AUTO; TIMEOUT, where no triage answer reached the
driver) -- unless a verdict on such a step exists anyway (the consumer's late answer to a
timed-out step was audited), whose ``inclusion_prob`` it then is. NaN: an AUTO_QC step whose
probability was not logged.

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

**What a dataset must hold** -- checked once, in :meth:`OfflineDataset.__post_init__`, which
every builder and loader (:func:`build_dataset`, :func:`load_dataset`, ``read_minari``,
:meth:`~OfflineDataset.select_episodes`) passes through, so no learner sees anything else:
arrays of the kinds and shapes of the table, as many rows each; episodes numbered 0..E-1 in
order, each one contiguous run of rows with steps 0, 1, 2, ..., ending (terminated or
truncated, flags 0 or 1) on its last row and nowhere before, E episode keys; finite
observations, next observations and rewards, ``next_observations[t]`` equal to
``observations[t+1]`` within an episode, and to ``observations[t]`` on the last step of an
episode whose ``final_observation_logged`` is False; usable propensities with ``behaviour_action_prob`` the
executed action's; ``human_actions`` in -1..A-1; ``inclusion_prob`` in [0, 1] or NaN;
``overridden``, ``sources`` and ``routes`` as defined above. Anything else is a :class:`DatasetRefused` naming the first offending episode and step.
:func:`load_dataset` also refuses, naming the file, what is not a readable ``.npz`` at all.
"""

from __future__ import annotations

import logging
import os
import tempfile
import zipfile
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from auditstream.errors import AuditstreamError
from auditstream.wire import DECISION_SOURCES, Route

log = logging.getLogger(__name__)

FORMAT_VERSION = 3  # 2: sources and routes; 3: inclusion_prob, final_observation_logged (and the true final observation)
SOURCES = DECISION_SOURCES  # who chose each logged action: the wire format's names
# The triage route of each logged step: the wire's routes (AUTO and AUTO_QC: the model acted; HUMAN:
# deferred to an auditor, then a human or, when none answered in time, the fallback acted) and
# TIMEOUT, the dataset's own: no answer at all reached the logger in time and the fallback acted
# (``rl run`` logs such a fallback decision with route null). A TIMEOUT step was never deferred to
# an auditor as far as the logger knows; like HUMAN, its source is never "model".
TIMEOUT = "TIMEOUT"
ROUTES = tuple(r.value for r in Route) + (TIMEOUT,)


def inclusion_by_route(route: str) -> float:
    """The inclusion probability of a step whose logger gave none, by its route: HUMAN 1.0 (every
    deferred decision goes to an auditor), AUTO and TIMEOUT 0.0 (not sent to one), AUTO_QC NaN
    (sampled with a probability that was not logged)."""
    return {"HUMAN": 1.0, "AUTO_QC": float("nan")}.get(route, 0.0)
D3RLPY_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")
ARRAY_KEYS = D3RLPY_KEYS + ("next_observations", "propensities", "behaviour_action_prob", "human_actions",
                            "overridden", "sources", "routes", "inclusion_prob", "episode_ids", "steps")
EPISODE_KEYS = ("episode_keys", "final_observation_logged")  # the per-episode arrays, [E]
# Why build_dataset left an episode out (the keys of its ``dropped`` counter).
DROP_REASONS = {
    "missing_start": "its first logged step is not 0 (the start was lost)",
    "missing_steps": "steps are missing between its first and last",
    "not_ended": "its last step is neither terminated nor truncated (still running, or its end was lost)",
    "steps_after_end": "it has steps after a terminated or truncated one",
}
PROB_TOLERANCE = 1e-3  # how far a logged probability vector's sum may be from 1 (float32, rounded to 6 places)
REBUILD = "rebuild the dataset with 'auditstream rl dataset'"
MATRIX_KEYS = ("observations", "next_observations", "propensities")  # [N, D]; every other array is [N]
# numpy dtype kinds each array may have (an .npz or Minari file can hold anything)
ARRAY_KINDS = {**{k: "fiub" for k in ("observations", "rewards", "terminals", "timeouts", "next_observations",
                                       "propensities", "behaviour_action_prob", "overridden", "inclusion_prob")},
               **{k: "iu" for k in ("actions", "human_actions", "episode_ids", "steps")},
               **{k: "U" for k in ("sources", "routes", "episode_keys")}, "final_observation_logged": "b"}
KIND_NAMES = {"fiub": "numbers", "iu": "integers", "U": "strings", "b": "booleans"}


class DatasetRefused(AuditstreamError, ValueError):
    """Logged steps that cannot make an offline dataset; the message names the episode and step."""


class DatasetNotWritten(AuditstreamError, OSError):
    """An offline dataset could not be written (no such folder, no permission, a full disk); nothing
    half-written is left at ``path``."""

    def __init__(self, path: object, error: BaseException) -> None:
        self.path = path
        super().__init__(f"cannot write the dataset {path}: {one_line(error)}; give --out a folder this user may "
                         "write to, with room")


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
    (model, human or fallback) and ``route`` the decision's triage route (:data:`ROUTES`);
    ``inclusion_prob`` the probability with which it was sent to an auditor (None: by the route,
    :func:`inclusion_by_route`); ``next_observation`` the observation after the action where it
    was logged (used on an episode's last step)."""

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
    # The probability with which the step was sent to an auditor (the QC inclusion probability;
    # human labels on QC-sampled steps weigh 1 / inclusion_prob); None: :func:`inclusion_by_route`.
    inclusion_prob: float | None = None
    # The observation after the action, where it was logged. Only an episode's last step's is
    # used (elsewhere the next step's observation is the next observation); None there: unknown,
    # the step's own observation stands in and the episode's final_observation_logged is False.
    next_observation: Any = None


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
    inclusion_prob: np.ndarray
    episode_ids: np.ndarray
    steps: np.ndarray
    episode_keys: np.ndarray
    final_observation_logged: np.ndarray

    def __post_init__(self) -> None:
        """Every rule of the format (module docstring, "What a dataset must hold"), checked once,
        here, whichever loader or builder made the arrays: a :class:`DatasetRefused` names the
        first offending row."""
        for key in ARRAY_KEYS + EPISODE_KEYS:
            if not isinstance(getattr(self, key), np.ndarray):
                object.__setattr__(self, key, np.asarray(getattr(self, key)))
        self._check_arrays()
        self._check_episodes()
        self._check_values()

    def _refuse(self, what: str) -> None:
        raise DatasetRefused(f"{what}; {REBUILD}")

    def _check_arrays(self) -> None:
        """Kinds, dimensions and row counts: what every other check and the learners index with."""
        for key in ARRAY_KEYS + EPISODE_KEYS:
            a = getattr(self, key)
            kind = ARRAY_KINDS[key]
            if a.dtype.kind not in kind:
                self._refuse(f"array {key} has dtype {a.dtype}, expected {KIND_NAMES[kind]}")
            ndim = 2 if key in MATRIX_KEYS else 1
            if a.ndim != ndim or (ndim == 2 and a.shape[1] == 0):
                expected = "[N, D] with D >= 1" if ndim == 2 else "[N]"
                self._refuse(f"array {key} has shape {a.shape}, expected {expected}")
        n = len(self.actions)
        for key in ARRAY_KEYS:
            if len(getattr(self, key)) != n:
                self._refuse(f"array {key} has {len(getattr(self, key))} rows, actions has {n}")
        if self.next_observations.shape != self.observations.shape:
            self._refuse(f"next_observations has shape {self.next_observations.shape}, observations "
                         f"{self.observations.shape}")

    def _check_episodes(self) -> None:
        """Episodes are numbered 0..E-1 in order, each a contiguous run of rows with steps 0, 1, 2,
        ... that ends (terminated or truncated) on its last row and nowhere before."""
        ids, n, n_keys = self.episode_ids, len(self.actions), len(self.episode_keys)
        if n == 0:
            if n_keys or len(self.final_observation_logged):
                self._refuse(f"no steps but {n_keys} episode_keys and {len(self.final_observation_logged)} "
                             "final_observation_logged")
            return
        if ids[0] != 0:
            self._refuse(f"episode_ids start at {int(ids[0])}, not 0")
        jumps = np.diff(ids)
        bad = np.flatnonzero((jumps != 0) & (jumps != 1))
        if len(bad):
            i = int(bad[0]) + 1
            self._refuse(f"episode_ids are not contiguous and in order: row {i} has episode {int(ids[i])} after "
                         f"episode {int(ids[i - 1])} (an episode's steps must be one run of rows, episodes numbered "
                         "0, 1, 2, ... in order)")
        if int(ids[-1]) + 1 != n_keys:
            self._refuse(f"episode_ids number {int(ids[-1]) + 1} episodes but there are {n_keys} episode_keys")
        if len(self.final_observation_logged) != n_keys:
            self._refuse(f"array final_observation_logged has {len(self.final_observation_logged)} rows, episode_keys "
                         f"has {n_keys}")
        last = np.r_[jumps != 0, True]
        first = np.r_[True, jumps != 0]
        position = np.arange(n) - np.flatnonzero(first)[ids]
        bad = np.flatnonzero(self.steps != position)
        if len(bad):
            i = int(bad[0])
            self._refuse(f"{self.where(i)} is step {int(position[i])} of its episode's rows: steps must run 0, 1, "
                         "2, ... (whole episodes only)")
        for key in ("terminals", "timeouts"):
            flags = getattr(self, key)
            bad = np.flatnonzero((flags != 0) & (flags != 1))
            if len(bad):
                self._refuse(f"{key} must be 0 or 1; {self.where(int(bad[0]))} has {float(flags[bad[0]])!r}")
        bad = np.flatnonzero(self.episode_ends != last)
        if len(bad):
            i = int(bad[0])
            if last[i]:
                self._refuse(f"{self.where(i)} is its episode's last step but neither terminated nor truncated "
                             "(the episode has not ended, or its end was lost)")
            self._refuse(f"{self.where(i)} is terminated or truncated but its episode goes on to step "
                         f"{int(self.steps[np.flatnonzero(last[i:])[0] + i])}")

    def _check_values(self) -> None:
        """Finite observations and rewards, next_observations that are the next step's, usable
        propensities, human actions in range, overridden, sources and routes as the format defines
        them."""
        n = len(self.actions)
        if n == 0:
            return
        for key in ("observations", "next_observations", "rewards"):
            a = getattr(self, key)
            bad = np.flatnonzero(~np.isfinite(a).reshape(n, -1).all(axis=1))
            if len(bad):
                self._refuse(f"{len(bad)} steps have {key} that are not finite (first: {self.where(int(bad[0]))})")
        last = np.r_[np.diff(self.episode_ids) != 0, True]
        bad = np.flatnonzero(~last[:-1] & (self.next_observations[:-1] != self.observations[1:]).any(axis=1))
        if len(bad):
            self._refuse(f"{self.where(int(bad[0]))}: next_observations is not the next step's observation")
        copied = last & ~self.final_observation_logged[self.episode_ids]
        bad = np.flatnonzero(copied & (self.next_observations != self.observations).any(axis=1))
        if len(bad):
            self._refuse(f"{self.where(int(bad[0]))}: final_observation_logged is false but next_observations is not "
                         "the step's own observation (the stand-in for a final observation that was not logged)")
        bad = _bad_propensity_rows(self.propensities, self.actions, self.behaviour_action_prob)
        if len(bad):
            i = int(bad[0])
            why = propensity_problem(self.propensities[i], int(self.actions[i])) or (
                f"behaviour_action_prob {float(self.behaviour_action_prob[i])!r} is not the executed action's "
                f"propensity {float(self.propensities[i, int(self.actions[i])])!r}")
            raise DatasetRefused(f"{len(bad)} steps have unusable propensities; first: {self.where(i)}: {why} "
                                 f"({REBUILD})")
        human = self.human_actions
        bad = np.flatnonzero((human < -1) | (human >= self.n_actions))
        if len(bad):
            i = int(bad[0])
            self._refuse(f"{len(bad)} human_actions are outside -1..{self.n_actions - 1} (-1: no human answered; "
                         f"{self.n_actions} actions); first: {self.where(i)} has human action {int(human[i])}")
        bad = np.flatnonzero(self.overridden != ((human >= 0) & (human != self.actions)))
        if len(bad):
            self._refuse(f"{self.where(int(bad[0]))}: overridden must be true exactly where a human answered and "
                         "chose another action than the executed one")
        bad = np.flatnonzero(~np.isin(self.sources, SOURCES))
        if len(bad):
            self._refuse(f"{len(bad)} steps have a source not one of {SOURCES}; first: {self.where(int(bad[0]))} has "
                         f"{str(self.sources[bad[0]])!r}")
        p = self.inclusion_prob.astype(np.float64)
        bad = np.flatnonzero(~np.isnan(p) & ~((p >= 0) & (p <= 1)))
        if len(bad):
            self._refuse(f"{len(bad)} inclusion_prob are outside [0, 1] (NaN: not logged); first: "
                         f"{self.where(int(bad[0]))} has {float(p[bad[0]])!r}")
        bad = np.flatnonzero(~np.isin(self.routes, ROUTES))
        if len(bad):
            self._refuse(f"{len(bad)} steps have a route not one of {ROUTES}; first: {self.where(int(bad[0]))} has "
                         f"{str(self.routes[bad[0]])!r}")

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
        values["final_observation_logged"] = self.final_observation_logged[np.asarray(episodes, dtype=np.int64)]
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
    episode_ids = np.asarray([e for e, _ in rows], dtype=np.int64)
    terminals = np.asarray([float(r.terminated) for _, r in rows], dtype=np.float32)
    timeouts = np.asarray([float(r.truncated and not r.terminated) for _, r in rows], dtype=np.float32)
    next_obs = obs.copy()
    same_episode = episode_ids[1:] == episode_ids[:-1]
    next_obs[:-1][same_episode] = obs[1:][same_episode]
    final_logged = np.zeros(len(keys), dtype=bool)
    for i in np.flatnonzero(np.r_[~same_episode, True]):  # each episode's last row
        final = rows[i][1].next_observation
        if final is not None:
            final = np.asarray(final, dtype=np.float32).reshape(-1)
            if final.shape != obs[i].shape:
                raise DatasetRefused(f"episode {keys[rows[i][0]]!r} step {int(rows[i][1].step)}: its next observation has "
                                     f"{final.size} values, its observation {obs.shape[1]}")
            next_obs[i], final_logged[rows[i][0]] = final, True
    return OfflineDataset(
        observations=obs, actions=actions,
        rewards=np.asarray([float(r.reward) for _, r in rows], dtype=np.float32),
        terminals=terminals, timeouts=timeouts, next_observations=next_obs, propensities=probs,
        behaviour_action_prob=probs[np.arange(len(actions)), actions],
        human_actions=human, overridden=(human >= 0) & (human != actions),
        sources=np.asarray([r.source for _, r in rows], dtype=str),
        routes=np.asarray([r.route for _, r in rows], dtype=str),
        inclusion_prob=np.asarray([inclusion_by_route(r.route) if r.inclusion_prob is None else float(r.inclusion_prob)
                                   for _, r in rows], dtype=np.float32),
        episode_ids=episode_ids, steps=np.asarray([int(r.step) for _, r in rows], dtype=np.int64),
        episode_keys=np.asarray(keys, dtype=str), final_observation_logged=final_logged,
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
    same = np.abs(taken - mu) <= 1e-6 * np.maximum(1.0, np.abs(mu))
    ok = finite & in_range & sums & valid_action & (mu > 0) & np.isfinite(taken) & same
    return np.flatnonzero(~ok)


def save_dataset(dataset: OfflineDataset, path: Path | str, env_id: str = "") -> Path:
    """Write ``path`` (.npz, compressed) with every array and ``format_version``; ``env_id``, the
    Gymnasium id the steps were logged on when known, as the optional member ``env_id``
    (:func:`dataset_env_id`; a reader that does not know it ignores it)."""
    path = Path(path)
    arrays = {k: getattr(dataset, k) for k in ARRAY_KEYS}
    if env_id:
        arrays["env_id"] = np.array(env_id)
    try:  # written beside ``path`` and renamed over it once complete: never a truncated file
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(prefix=f".{path.name}.partial-", dir=path.parent)
    except OSError as e:
        raise DatasetNotWritten(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:  # an open file keeps numpy from appending a second ".npz"
            np.savez_compressed(f, episode_keys=dataset.episode_keys, format_version=np.int64(FORMAT_VERSION),
                                final_observation_logged=dataset.final_observation_logged, **arrays)
        os.chmod(partial, 0o666 & ~process_umask())
        os.replace(partial, path)
    except OSError as e:
        Path(partial).unlink(missing_ok=True)
        raise DatasetNotWritten(path, e) from None
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    return path


def process_umask() -> int:
    """This process's umask, for files written under a temporary name (``mkstemp``/``mkdtemp``
    make them 0600/0700) to get the mode a plain create would have given. Read from /proc where
    it is there: ``os.umask`` can only read it by setting it, which another thread could see."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)  # briefly the strictest usual mask, never 0: a racing create is private, not open
    os.umask(mask)
    return mask


def dataset_env_id(path: Path | str) -> str:
    """The Gymnasium id a dataset at ``path`` says its steps were logged on: an ``.npz``'s
    ``env_id`` member, a Minari dataset's ``env_spec`` id; "" where it says none (or cannot be
    read: :func:`load_dataset` and ``read_minari`` say why)."""
    import json

    path = Path(path)
    metadata = next((m for m in (path / "data" / "metadata.json", path / "metadata.json") if m.is_file()), None)
    try:
        if metadata is not None:
            spec = json.loads(metadata.read_text()).get("env_spec")
            spec = json.loads(spec) if isinstance(spec, str) else spec
            return str(spec.get("id") or "") if isinstance(spec, dict) else ""
        with np.load(path, allow_pickle=False) as data:
            if "env_id" not in data.files:
                return ""
            value = data["env_id"]
            return str(value) if isinstance(value, np.ndarray) and value.shape == () and value.dtype.kind == "U" else ""
    except (*NPZ_READ_ERRORS, AttributeError):
        return ""


def one_line(error: BaseException) -> str:
    """``Type: message`` of an error raised by a reader (numpy, zipfile, Minari, pyarrow) on one
    line, shortened: it goes into a :class:`DatasetRefused` message."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:200] + '...' if len(text) > 200 else text}"


# What numpy and zipfile raise on a damaged or foreign .npz (a truncated member, a bad CRC, an
# object array that would need pickle, a member that is not an .npy).
NPZ_READ_ERRORS = (OSError, EOFError, ValueError, TypeError, KeyError, zipfile.BadZipFile, zlib.error)
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip's first local header, or an empty zip's end record


def load_dataset(path: Path | str) -> OfflineDataset:
    """The dataset :func:`save_dataset` wrote at ``path``. Anything else -- no such file, a
    directory, a file that is not an .npz, a damaged archive, an old format, an array missing or
    breaking a rule of the format -- is refused with one :class:`DatasetRefused` naming the file.
    Nothing is unpickled (``allow_pickle=False``)."""
    path = Path(path)
    if not path.exists():
        raise DatasetRefused(f"{path}: no such file; give the .npz (or the Minari dataset directory) that "
                             "'auditstream rl dataset' wrote")
    if path.is_dir():
        raise DatasetRefused(f"{path} is a directory but not a Minari dataset (no metadata.json nor data/metadata.json "
                             "in it); give the .npz file or the Minari dataset directory that 'auditstream rl dataset' "
                             "wrote")
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError as e:
        raise DatasetRefused(f"{path}: cannot read it ({one_line(e)})") from None
    if head == b"\x93NUMPY":
        raise DatasetRefused(f"{path} is a single numpy array (.npy), not an .npz dataset; {REBUILD}")
    if head[:4] not in ZIP_MAGIC:
        raise DatasetRefused(f"{path} is not an .npz dataset (not a zip archive); give the .npz or the Minari dataset "
                             "directory that 'auditstream rl dataset' wrote")
    key = "the archive"
    try:
        with np.load(path, allow_pickle=False) as data:
            names = set(data.files)
            key = "format_version"
            version = data["format_version"] if "format_version" in names else None
            if version is not None and not isinstance(version, np.ndarray):
                raise DatasetRefused(f"{path}: member format_version is not a numpy array; {REBUILD}")
            if version is not None:
                version = int(version) if version.shape == () and version.dtype.kind in "iu" else repr(version)[:40]
            if version != FORMAT_VERSION:
                raise DatasetRefused(f"{path}: dataset format_version {version}, this build reads {FORMAT_VERSION}; "
                                     f"{REBUILD}")
            missing = [k for k in ARRAY_KEYS + EPISODE_KEYS if k not in names]
            if missing:
                raise DatasetRefused(f"{path}: dataset lacks arrays {missing}; {REBUILD}")
            arrays = {}
            for key in ARRAY_KEYS + EPISODE_KEYS:
                arrays[key] = data[key]
                if not isinstance(arrays[key], np.ndarray):  # numpy hands back a member without the .npy header raw
                    raise DatasetRefused(f"{path}: member {key} is not a numpy array; {REBUILD}")
    except DatasetRefused:
        raise
    except NPZ_READ_ERRORS as e:
        raise DatasetRefused(f"{path}: cannot read {key} as an .npz dataset ({one_line(e)}); {REBUILD}") from None
    try:
        dataset = OfflineDataset(**arrays)
    except DatasetRefused as e:
        raise DatasetRefused(f"{path}: {e}") from None
    if not len(dataset.actions):
        raise DatasetRefused(f"{path}: the dataset has no steps; {REBUILD}")
    return dataset
