"""``auditstream rl dataset``: the offline dataset of what the stream logged.

    auditstream rl dataset --out cartpole_logs.npz [--model policy-cartpole-v1] [--version 2]
    auditstream rl dataset --format minari --out datasets/ [--dataset-id auditstream/cartpole/logs-v0]

Reads the ``transitions``, ``decisions`` and ``verdicts`` topics, and the model's requests topic
for its episodes' end requests, from the beginning to their current end (manual assignment of
every partition: no consumer group, nothing committed) and joins them by request id into :class:`training.rl.offline_data.StepRecord` rows, which
:func:`training.rl.offline_data.build_dataset` turns into the dataset, written as a Minari
dataset (:mod:`training.rl.minari_format`) or the d3rlpy-shaped ``.npz`` (docs/rl.md,
"Offline dataset format"):

* observation, action, reward, terminated, truncated: the transition (what the environment did);
* the observation after an episode's last action (the last step's ``next_observations``, the
  Minari ``observations[T]``): the episode's end request, ``InferenceRequest(episode_end=True)``
  at step T, which ``rl run`` sends on the requests topic. Where it is missing (lost, deleted by
  the topic's retention) or unusable (another step, shape or a non-finite value) the step's own
  observation stands in, the episode's ``final_observation_logged`` is False and the report
  counts it (``final_observations_missing``): the episode is kept, never dropped for it;
* source and route: who acted (the transition's ``source``) and the triage route (:func:`route`:
  the model decision's ``details.route``; HUMAN where a human acted, or the fallback after a
  deferral; TIMEOUT where the fallback acted because no answer came at all);
* inclusion_prob: the probability with which the step was sent to an auditor
  (:func:`inclusion_prob`): 1.0 on HUMAN steps; on AUTO_QC steps the QC sampling probability pi
  (the model decision's ``details.qc_inclusion_prob``, else the verdict's ``inclusion_prob``,
  else NaN: not logged); 0.0 on AUTO and TIMEOUT steps (not sent), unless a verdict on the step
  exists anyway (its ``inclusion_prob``) or a human decision (1.0: humans answer deferred
  decisions). A researcher reweights human labels by ``1 / inclusion_prob``;
* propensities: the decision whose ``source`` matches the transition's (who acted): a model
  decision's ``details.propensities`` (what the action was drawn with), a fallback decision's
  one-hot safe action, or, for a human decision, one-hot of the human's action (the assumption
  that humans are a known deterministic policy; OPE can drop or model them instead:
  :mod:`training.rl.ope_humans`);
* human action: the latest verdict on the request that is not a ``skip`` (``correct``: the
  corrected output, ``accept``: the model's output), else a human decision. A skip is "no
  opinion": it never erases an earlier verdict. Where the human action differs from the executed
  action (the fallback acted before the auditor answered, or the auditor corrected a QC-sampled
  action) the dataset marks the step ``overridden``.

Only whole episodes of the selected policy version(s) are kept, and nothing is invented; the
report counts every episode left out, by reason (``episodes_dropped``):

* ``no_propensities`` -- a step whose decision (and so its propensities) cannot be found;
* ``bad_propensities`` -- a step whose logged propensities are not a distribution or give the
  executed action probability 0 (:func:`training.rl.offline_data.propensity_problem`);
* ``bad_route`` -- a step whose decision logged a route it cannot have (a model decision's not
  AUTO or AUTO_QC, a fallback decision's not HUMAN or null);
* ``version_change`` -- an episode that has steps of a selected version and steps of another
  (the live version changed mid-episode): the version filter is applied per episode, so such an
  episode is dropped whole, never cut into a shorter one; episodes wholly of other versions are
  simply not selected;
* and :data:`training.rl.offline_data.DROP_REASONS` -- a lost start, a hole, no end yet,
  steps after the end.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from auditstream.errors import AuditstreamError, BadArguments, ConfigError, DecodeError
from auditstream.wire import Decision, InferenceRequest, Transition, Verdict, VerdictKind
from training.rl.offline_data import (TIMEOUT, DatasetRefused, OfflineDataset, StepRecord, build_dataset,
                                      propensity_problem)

log = logging.getLogger(__name__)


@dataclass
class StreamLogs:
    transitions: list[Transition] = field(default_factory=list)  # of the model, every version
    decisions: dict[tuple[str, str], Decision] = field(default_factory=dict)  # (request id, source) -> first
    verdicts: dict[str, Verdict] = field(default_factory=dict)  # request id -> latest that is not a skip
    ends: dict[str, InferenceRequest] = field(default_factory=dict)  # episode key -> its first end request
    unreadable: int = 0
    versions: frozenset[str] | None = None  # the selected policy versions (None: all)

    def add(self, item: Transition | Decision | Verdict | InferenceRequest) -> None:
        """Keep one decoded record (what :func:`read_logs` does with each); of requests, only an
        episode's end request (its final observation) is kept."""
        if isinstance(item, InferenceRequest):
            if item.episode_end and item.episode_key is not None:
                self.ends.setdefault(item.episode_key, item)
        elif isinstance(item, Transition):
            self.transitions.append(item)
        elif isinstance(item, Decision):
            self.decisions.setdefault((item.request_id, item.source), item)
        elif item.kind != VerdictKind.SKIP:  # a skip is "no opinion": it must not erase an earlier verdict
            previous = self.verdicts.get(item.request_id)
            if previous is None or item.decided_at_s >= previous.decided_at_s:
                self.verdicts[item.request_id] = item


@dataclass
class DatasetReport:
    model: str = ""
    env_id: str = ""  # the card's extra.env_id, where it names one
    episodes: int = 0
    steps: int = 0
    sources: Counter = field(default_factory=Counter)
    human_labels: int = 0
    overrides: int = 0
    episodes_without_propensities: int = 0
    final_observations_missing: int = 0  # kept episodes whose final observation was not logged (copied)
    episodes_dropped: Counter = field(default_factory=Counter)  # by reason (module docstring)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "env_id": self.env_id, "episodes": self.episodes, "steps": self.steps, "sources": dict(self.sources),
                "human_labels": self.human_labels, "overrides": self.overrides,
                "episodes_without_propensities": self.episodes_without_propensities,
                "final_observations_missing": self.final_observations_missing,
                "episodes_dropped": dict(self.episodes_dropped)}


def read_logs(settings: Any, model: str | None = None, version: str | None = None, timeout_s: float = 120.0) -> StreamLogs:
    """The three topics up to their end now, decoded, then the end requests of the requests
    topic of ``model`` (default: of every model whose transitions were read); ``model`` filters
    the records, ``version`` selects episodes (whole episodes, in :func:`step_records`: a record
    filter would cut an episode that spans a version change)."""
    from auditstream import topics as T
    from auditstream.kafka import iter_to_end, read_to_end

    logs = StreamLogs(versions=frozenset([version]) if version else None)
    topics = {settings.topic(T.TRANSITIONS): Transition, settings.topic(T.DECISIONS): Decision,
              settings.topic(T.VERDICTS): Verdict}
    for record in read_to_end(settings, list(topics), timeout_s=timeout_s):
        try:
            item = topics[record.topic].from_bytes(record.value or b"")
        except DecodeError:
            logs.unreadable += 1
            continue
        if model and item.model != model:
            continue
        logs.add(item)
    models = [model] if model else sorted({t.model for t in logs.transitions})
    requests = [settings.request_topic(m) for m in models]
    for record in iter_to_end(settings, requests, timeout_s=timeout_s) if requests else ():
        # Every step's request is on this topic: decode only the episode ends (their JSON says so).
        if record.topic not in requests or b'"episode_end"' not in (record.value or b""):
            continue
        try:
            request = InferenceRequest.from_bytes(record.value or b"")
        except DecodeError:
            logs.unreadable += 1
            continue
        if request.model in models:
            logs.add(request)
    return logs


def final_observation(logs: StreamLogs, last: Transition) -> Any:
    """The observation after an episode's last step ``last``: its end request's, or None where
    there is none or it does not fit (another step, another shape, a value not finite)."""
    end = logs.ends.get(last.episode_key)
    if end is None or not isinstance(end.input, np.ndarray) or end.step != last.step + 1:
        return None
    final = np.asarray(end.input, dtype=np.float64).reshape(-1)
    if final.shape != np.asarray(last.observation).reshape(-1).shape or not np.all(np.isfinite(final)):
        return None
    return final


def human_action(logs: StreamLogs, request_id: str, n_actions: int) -> int | None:
    """The human's answer to a request: a verdict (correct/accept), else a human decision."""
    verdict = logs.verdicts.get(request_id)
    answer: Any = None
    if verdict is not None and verdict.kind == VerdictKind.CORRECT:
        answer = verdict.corrected_output
    elif verdict is not None and verdict.kind == VerdictKind.ACCEPT:
        answer = verdict.model_output
    elif (request_id, "human") in logs.decisions:
        answer = logs.decisions[(request_id, "human")].output
    ok = isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < n_actions
    return answer if ok else None


def propensities(logs: StreamLogs, t: Transition, n_actions: int) -> list[float] | None:
    """What the behaviour policy gave every action at this step (see the module docstring)."""
    decision = logs.decisions.get((t.request_id, t.source))
    if t.source == "human":
        return [1.0 if a == t.action else 0.0 for a in range(n_actions)]
    if decision is None:
        return None
    probs = decision.details.get("propensities")
    if not isinstance(probs, list) or len(probs) != n_actions:
        return None
    try:
        return [float(p) for p in probs]
    except (TypeError, ValueError, OverflowError):  # a string or null in the list: not propensities
        return None


def route(logs: StreamLogs, t: Transition) -> str | None:
    """The step's triage route (:data:`training.rl.offline_data.ROUTES`), or None where the
    decision that acted logged one it cannot have (the episode is then dropped, ``bad_route``):

    * model: the model decision's ``details.route``, AUTO or AUTO_QC (AUTO where it logged none);
    * human: HUMAN (a human answers deferred decisions only);
    * fallback: the fallback decision's ``details.route``, which ``rl run`` sets to the deferred
      marker's route (HUMAN: deferred, no human answered in time) or to null when no answer came
      at all: TIMEOUT, never mistaken for a deferral to an auditor."""
    if t.source == "human":
        return "HUMAN"
    decision = logs.decisions.get((t.request_id, t.source))
    logged = decision.details.get("route") if decision is not None else None
    if t.source == "model":
        return "AUTO" if logged is None else logged if logged in ("AUTO", "AUTO_QC") else None
    return TIMEOUT if logged is None else logged if logged == "HUMAN" else None


def inclusion_prob(logs: StreamLogs, t: Transition, step_route: str) -> float:
    """The probability with which this step was sent to an auditor (module docstring)."""
    verdict = logs.verdicts.get(t.request_id)
    if step_route == "HUMAN":
        return 1.0
    if step_route == "AUTO_QC":
        decision = logs.decisions.get((t.request_id, "model"))
        logged = decision.details.get("qc_inclusion_prob") if decision is not None else None
        if isinstance(logged, (int, float)) and not isinstance(logged, bool) and 0.0 < logged <= 1.0:
            return float(logged)
        return verdict.inclusion_prob if verdict is not None else float("nan")
    if verdict is not None:  # AUTO or TIMEOUT, audited anyway (a late answer to a timed-out step)
        return verdict.inclusion_prob
    return 1.0 if (t.request_id, "human") in logs.decisions else 0.0


def step_records(logs: StreamLogs, n_actions: int, report: DatasetReport) -> list[StepRecord]:
    """The step records of every episode of the selected versions whose every step has usable
    propensities; the others are dropped whole and counted in ``report.episodes_dropped``."""
    by_episode: dict[str, list[Transition]] = defaultdict(list)
    for t in logs.transitions:
        by_episode[t.episode_key].append(t)
    records: list[StepRecord] = []
    for key, steps in by_episode.items():
        if logs.versions is not None:
            selected = [t.model_version in logs.versions for t in steps]
            if not any(selected):
                continue  # an episode of another version: not asked for
            if not all(selected):
                report.episodes_dropped["version_change"] += 1
                log.warning("episode %s spans policy versions %s, not only %s: episode dropped", key,
                            sorted({t.model_version for t in steps}), sorted(logs.versions))
                continue
        rows = []
        for t in steps:
            probs = propensities(logs, t, n_actions)
            problem = "no decision with propensities" if probs is None else propensity_problem(probs, t.action)
            reason = "no_propensities" if probs is None else "bad_propensities"
            step_route = route(logs, t)
            if problem is None and step_route is None:
                problem, reason = f"its {t.source} decision logged an impossible route", "bad_route"
            if problem is not None:
                report.episodes_dropped[reason] += 1
                report.episodes_without_propensities += probs is None
                log.warning("episode %s step %d (%s): %s; episode dropped", key, t.step, t.source, problem)
                rows = []
                break
            final = final_observation(logs, t) if t.terminated or t.truncated else None
            rows.append(StepRecord(key, t.step, t.observation, t.action, probs, t.reward, t.terminated, t.truncated,
                                   human_action(logs, t.request_id, n_actions), t.source, step_route,
                                   inclusion_prob=inclusion_prob(logs, t, step_route), next_observation=final))
        records.extend(rows)
    return records


def build_stream_dataset(settings: Any, model: str | None = None, version: str | None = None,
                         n_actions: int | None = None) -> tuple[OfflineDataset, DatasetReport]:
    """Read the topics and build the dataset; ``n_actions`` defaults to the model card's. A
    ``model`` that is no policy of the registry is refused before the topics are read."""
    if model and n_actions is None:
        check_policy(settings, model)
    logs = read_logs(settings, model, version)
    model = model or _only_model(logs)
    card = _card(settings, model) if n_actions is None else None
    if card is not None:
        n_actions = int(next(o for o in card.outputs if o.name == "action_probs").shape[-1])
    report = DatasetReport(model=model, env_id=str(card.extra.get("env_id", "")) if card is not None else "")
    data = build_dataset(step_records(logs, n_actions, report), dropped=report.episodes_dropped)
    report.episodes, report.steps = data.n_episodes, len(data.actions)
    report.human_labels, report.overrides = int((data.human_actions >= 0).sum()), int(data.overridden.sum())
    report.final_observations_missing = int((~data.final_observation_logged).sum())
    for t in logs.transitions:
        if logs.versions is None or t.model_version in logs.versions:
            report.sources[t.source] += 1
    return data, report


def _only_model(logs: StreamLogs) -> str:
    models = sorted({t.model for t in logs.transitions})
    if len(models) != 1:
        if not models:
            raise DatasetRefused("the transitions topic holds no policy's steps: run episodes first ('auditstream rl "
                                 "run'), or check AUDITSTREAM_TOPIC_PREFIX")
        raise BadArguments(f"transitions of {len(models)} models {models[:5]}: pick one with --model")
    return models[0]


def check_policy(settings: Any, model: str) -> None:
    """:class:`ConfigError` naming ``--model`` unless ``model`` is a policy in the registry (its
    requests topic would otherwise read as a broker without topics); names the policies there."""
    import difflib

    from auditstream import tasks
    from auditstream.registry import ModelRegistry

    registry = ModelRegistry.from_settings(settings)
    names = registry.names()

    def is_policy(name: str) -> bool:  # a kind whose answers act on an environment
        try:
            return tasks.lookup(registry.card(name).task).acts
        except (AuditstreamError, KeyError, ValueError):  # a broken card: not listed here (loading it says why)
            return False

    if model in names and is_policy(model):
        return
    policies = [n for n in names if is_policy(n)]
    what = "no policy" if model in names else "not in the registry"
    close = difflib.get_close_matches(model, policies, n=1)
    known = (f"one of the policies in {registry.root}: {', '.join(policies[:10])}" if policies else
             f"a policy, and {registry.root} has none: train one with 'auditstream train policy' (or point "
             "AUDITSTREAM_MODELS_DIR at the registry that has it)")
    raise ConfigError("--model", model, f"{known} ({model} is {what}"
                                        f"{f'; did you mean {close[0]}?' if close else ''})")


def _card(settings: Any, model: str) -> Any:
    from auditstream.registry import ModelRegistry

    return ModelRegistry.from_settings(settings).card(model)
