"""The RL loop on the embedded broker, end to end: ``rl run`` drives CartPole episodes through a
policy consumer (a tiny ONNX controller; some of its decisions go to humans and fall back to the
safe action), ``rl dataset`` builds the offline dataset (every step has propensities; a late
human verdict shows up as an override), and ``rl promote`` shadows a candidate (which acts on
nothing) and records the gate's decision."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from tests.serving.tiny_policy import cartpole_weights, publish_policy

from auditstream import topics as T
from auditstream.kafka import ensure_model_topics, make_producer, read_to_end
from auditstream.registry import ModelRegistry
from auditstream.settings import Settings
from auditstream.wire import Action, Decision, Prediction, Transition, Verdict, VerdictKind

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
MODEL, EPISODES, MAX_STEPS = "policy-cartpole-v1", 8, 30


@dataclasses.dataclass
class Run:
    settings: Settings
    registry: ModelRegistry
    report: object


@pytest.fixture(scope="module")
def run(broker: Settings, tmp_path_factory: pytest.TempPathFactory) -> Run:
    from serving.app import ServeApp
    from serving.metrics import ServeMetrics
    from training.rl.env_driver import RunArgs
    from training.rl.env_driver import run as run_episodes

    tmp = tmp_path_factory.mktemp("rl-stream")
    settings = dataclasses.replace(broker, topic_prefix=f"rl{uuid.uuid4().hex[:8]}", models_dir=tmp / "models",
                                   state_dir=tmp / "state", qc_rate=0.05)
    registry = ModelRegistry(settings.models_dir)
    live = publish_policy(registry, MODEL, cartpole_weights(scale=10.0), threshold=0.7, safe_action=0)
    registry.set_live(MODEL, live.card.version)
    ensure_model_topics(settings, [MODEL])
    app = ServeApp(settings, live, ServeMetrics(MODEL, CollectorRegistry()))
    consumer = threading.Thread(target=app.run, daemon=True)
    consumer.start()
    try:
        report = run_episodes(settings, RunArgs(env="CartPole-v1", episodes=EPISODES, concurrent=4, max_steps=MAX_STEPS,
                                                decision_timeout_s=10.0, progress=False))
    finally:
        app.loop.stop()
        consumer.join(30)
        app.close()
    return Run(settings, registry, report)


def topic(run: Run, name: str, cls):
    return [cls.from_bytes(r.value) for r in read_to_end(run.settings, [run.settings.topic(name)])]


def test_rl_run_reports_returns_routes_and_logs_every_step(run: Run) -> None:
    summary = run.report.summary()
    assert summary["episodes"] == EPISODES and all(0 < n <= MAX_STEPS for n in run.report.lengths)
    assert summary["mean_return"] == np.mean(run.report.returns) and summary["timeouts"] == 0
    assert summary["routes"]["HUMAN"] > 0 and summary["routes"]["AUTO"] > 0
    # HUMAN routes (no auditor in this test) fell back to the safe action, every other step the model chose
    assert run.report.sources == Counter({"model": summary["routes"]["AUTO"] + summary["routes"].get("AUTO_QC", 0),
                                          "fallback": summary["routes"]["HUMAN"]})
    transitions = topic(run, T.TRANSITIONS, Transition)
    assert len(transitions) == summary["steps"] == sum(run.report.lengths)
    assert {t.episode_key for t in transitions} == set(run.report.episode_keys)
    assert all(t.action == 0 for t in transitions if t.source == "fallback")


def test_every_decision_has_propensities(run: Run) -> None:
    decisions = topic(run, T.DECISIONS, Decision)
    transitions = topic(run, T.TRANSITIONS, Transition)
    assert {(t.request_id, t.source) for t in transitions} == {(d.request_id, d.source) for d in decisions}
    for d in decisions:
        probs = d.details["propensities"]
        assert len(probs) == 2 and abs(sum(probs) - 1) < 1e-5 and probs[d.output] > 0
        if d.source == "fallback":  # what acted was the safe action, with certainty
            assert probs == [1.0, 0.0] and len(d.details["action_probs"]) == 2
    actions = topic(run, T.ACTIONS, Action)
    assert sum(a.deferred for a in actions) == sum(d.source == "fallback" for d in decisions)


def test_rl_dataset_has_propensities_and_marks_a_late_human_override(run: Run, tmp_path: Path) -> None:
    from training.rl.offline_data import load_dataset

    fallback = next(d for d in topic(run, T.DECISIONS, Decision) if d.source == "fallback")
    verdict = Verdict(f"v-{fallback.request_id}", fallback.request_id, MODEL, fallback.model_version, "ann",
                      VerdictKind.CORRECT, 2e9, model_output=fallback.details["action_probs"].index(
                          max(fallback.details["action_probs"])), corrected_output=1)
    producer = make_producer(run.settings)
    producer.send(run.settings.topic(T.VERDICTS), verdict.request_id.encode(), verdict.to_bytes())
    producer.flush(10)
    producer.close()
    env = dict(os.environ, AUDITSTREAM_BOOTSTRAP_SERVERS=run.settings.bootstrap_servers,
               AUDITSTREAM_TOPIC_PREFIX=run.settings.topic_prefix, AUDITSTREAM_MODELS_DIR=str(run.settings.models_dir))
    out = tmp_path / "logs.npz"
    done = subprocess.run([sys.executable, "-m", "auditstream.cli", "rl", "dataset", "--out", str(out), "--model", MODEL],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    data = load_dataset(out)
    assert data.n_episodes == EPISODES and len(data.actions) == sum(run.report.lengths) == summary["steps"]
    np.testing.assert_allclose(data.propensities.sum(axis=1), 1.0, atol=1e-5)
    assert np.all(data.behaviour_action_prob > 0)
    row = np.flatnonzero((data.episode_keys[data.episode_ids] == fallback.episode_key) & (data.steps == fallback.step))
    assert len(row) == 1 and data.overridden[row[0]] and data.human_actions[row[0]] == 1 and data.actions[row[0]] == 0
    assert summary["overrides"] == int(data.overridden.sum()) == 1
    assert set(data.sources[data.routes == "HUMAN"]) <= {"fallback", "human"}
    assert set(data.routes[data.sources == "model"]) <= {"AUTO", "AUTO_QC"}
    # every episode's final observation is its end request off requests.<model>, not a copy
    assert data.final_observation_logged.all() and summary["final_observations_missing"] == 0
    last = np.flatnonzero(data.episode_ends)
    assert (data.next_observations[last] != data.observations[last]).any(axis=1).all()
    assert (data.inclusion_prob[data.routes == "HUMAN"] == 1).all() and (data.inclusion_prob[data.routes == "AUTO"] == 0).all()
    assert ((data.inclusion_prob[data.routes == "AUTO_QC"] > 0) & (data.inclusion_prob[data.routes == "AUTO_QC"] <= 1)).all()

    # The same logs as a Minari dataset, read back by Minari itself from the directory we chose.
    root = tmp_path / "minari"
    done = subprocess.run([sys.executable, "-m", "auditstream.cli", "rl", "dataset", "--format", "minari", "--out",
                           str(root), "--model", MODEL, "--dataset-id", "auditstream/cartpole/logs-v0"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["dataset_id"] == "auditstream/cartpole/logs-v0"
    check_minari_matches(root, "auditstream/cartpole/logs-v0", data)


def check_minari_matches(root: Path, dataset_id: str, data) -> None:
    import minari

    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        dataset = minari.load_dataset(dataset_id)
    finally:
        if old is None:
            del os.environ["MINARI_DATASETS_PATH"]
        else:
            os.environ["MINARI_DATASETS_PATH"] = old
    assert dataset.total_episodes == data.n_episodes and dataset.total_steps == len(data.actions)
    assert dataset.action_space.n == 2 and dataset.observation_space.shape == (4,)
    assert dataset.env_spec.id == "CartPole-v1"
    for episode, s in zip(dataset.iterate_episodes(), data.episode_slices()):
        np.testing.assert_array_equal(episode.actions, data.actions[s])
        np.testing.assert_allclose(episode.observations[:-1], data.observations[s])
        np.testing.assert_allclose(episode.rewards, data.rewards[s])
        assert episode.terminations.tolist() == (data.terminals[s] > 0).tolist()
        assert episode.truncations.tolist() == (data.timeouts[s] > 0).tolist()
        np.testing.assert_allclose(episode.infos["propensities"][:-1], data.propensities[s])
        assert episode.infos["route"][:-1].tolist() == data.routes[s].tolist()
        assert episode.infos["source"][:-1].tolist() == data.sources[s].tolist()
        assert episode.infos["human_action"][:-1].tolist() == data.human_actions[s].tolist()
        np.testing.assert_allclose(episode.observations[-1], data.next_observations[s][-1])
        np.testing.assert_allclose(episode.infos["inclusion_prob"][:-1], data.inclusion_prob[s])
        assert episode.infos["final_observation_logged"].tolist() == [True] * (len(episode) + 1)


def test_shadow_candidate_acts_on_nothing_and_the_gate_is_recorded(run: Run) -> None:
    from training.rl.promotion import PromotionConfig
    from training.rl.shadow import PROMOTION_FILE, PromoteArgs, promote

    candidate = publish_policy(run.registry, MODEL, cartpole_weights(scale=20.0), threshold=0.7, safe_action=0)
    topics = [run.settings.topic(name) for name in (T.DECISIONS, T.ACTIONS, T.AUDIT)] + \
        [run.settings.episode_state_topic(MODEL)]
    before = {topic: len(read_to_end(run.settings, [topic])) for topic in topics}
    record = promote(run.settings, PromoteArgs(candidate=f"{MODEL}:{candidate.card.version}", live=f"{MODEL}:1",
                                               shadow_idle_s=3.0, bootstrap=50),
                     PromotionConfig(min_episodes=4, gamma=0.99))
    after = {topic: len(read_to_end(run.settings, [topic])) for topic in before}
    assert after == before  # shadow: no decisions, actions, audit items or episode state
    shadow = [p for p in topic(run, T.PREDICTIONS, Prediction) if p.model_version == candidate.card.version]
    requests = sum(run.report.lengths)
    assert len(shadow) == record["shadow"]["requests"] - EPISODES == requests  # episode-end markers get no answer
    assert all(p.shadow for p in shadow) and record["shadow"]["compared"] > 0
    assert 0.5 < record["shadow"]["agreement"] <= 1.0
    saved = json.loads((candidate.directory / PROMOTION_FILE).read_text())["decisions"][-1]  # appended to the history
    decision = saved["decision"]
    assert decision["candidate"] == f"{MODEL}/{candidate.card.version}" and decision["live"] == f"{MODEL}/1"
    assert set(decision["candidate_estimates"]) == {"wis", "dr", "fqe"} and decision["n_episodes"] == EPISODES
    # the live side is the live policy estimated the same way (the logs hold routed steps)
    assert set(decision["live_estimates"]) == {"wis", "dr", "fqe"} and decision["comparison"].startswith("unrouted")
    assert saved["dataset"]["steps"] == requests
    live_now = run.registry.live_version(MODEL)
    assert live_now == (candidate.card.version if decision["promote"] else "1")
