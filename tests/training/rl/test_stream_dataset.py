"""Joining the stream's logs into the offline dataset, and the env driver's decision handling,
without a broker: propensities by who acted, human labels from verdicts or human decisions,
episodes without propensities dropped; a deferred step taken by a human in time, or by the
safe-action fallback; promotion to a live name the candidate was not published under. Reading
the topics: the version filter keeps whole episodes only, episodes with a lost start or unusable
propensities are dropped and counted, and a skip verdict never erases an earlier one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from tests.serving.tiny_policy import cartpole_weights, publish_policy

from auditstream.kafka import Record
from auditstream.registry import ModelRegistry
from auditstream.settings import Settings
from auditstream.wire import Action, Decision, InferenceRequest, Route, Transition, Verdict, VerdictKind
from training.rl.offline_data import build_dataset
from training.rl.stream_dataset import DatasetReport, StreamLogs, step_records


def transition(ep: str, step: int, action: int, source: str, last: bool = False) -> Transition:
    return Transition(f"{ep}-s{step}", "p", "1", ep, step, np.full(4, step, np.float32), action, source, 1.0,
                      last, False, 1e9)


def decision(t: Transition, propensities: list[float] | None) -> Decision:
    details = {} if propensities is None else {"propensities": propensities}
    if t.source == "fallback":
        details["route"] = "HUMAN"  # what rl run logs after a deferred marker no human answered in time
    return Decision(t.request_id, "p", "1", t.action, t.source, 1e9, t.episode_key, t.step, details)


def logs_of(steps: list[tuple[Transition, list[float] | None]], verdicts: list[Verdict] = ()) -> StreamLogs:
    logs = StreamLogs()
    for t, probs in steps:
        logs.transitions.append(t)
        if t.source != "human":
            logs.decisions[(t.request_id, t.source)] = decision(t, probs)
    logs.verdicts = {v.request_id: v for v in verdicts}
    return logs


def test_propensities_by_who_acted_and_overrides_from_late_verdicts() -> None:
    a = [transition("a", 0, 1, "model"), transition("a", 1, 0, "fallback"), transition("a", 2, 1, "human", last=True)]
    logs = logs_of([(a[0], [0.3, 0.7]), (a[1], [1.0, 0.0]), (a[2], None)],
                   [Verdict("v1", "a-s1", "p", "1", "ann", VerdictKind.CORRECT, 2e9, 0, corrected_output=1),
                    Verdict("v0", "a-s0", "p", "1", "ann", VerdictKind.ACCEPT, 2e9, model_output=1, item_route=Route.AUTO_QC)])
    data = build_dataset(step_records(logs, 2, DatasetReport()))
    np.testing.assert_allclose(data.propensities, [[0.3, 0.7], [1.0, 0.0], [0.0, 1.0]])
    assert data.human_actions.tolist() == [1, 1, -1] and data.overridden.tolist() == [False, True, False]
    assert data.behaviour_action_prob.tolist() == pytest.approx([0.7, 1.0, 1.0])
    assert data.sources.tolist() == ["model", "fallback", "human"] and data.routes.tolist() == ["AUTO", "HUMAN", "HUMAN"]
    assert data.human_acted.tolist() == [False, False, True]


def test_a_step_without_propensities_drops_its_episode_not_the_others() -> None:
    good = [transition("g", 0, 1, "model", last=True)]
    bad = [transition("b", 0, 1, "model"), transition("b", 1, 0, "model", last=True)]
    report = DatasetReport()
    logs = logs_of([(good[0], [0.4, 0.6]), (bad[0], [0.5, 0.5]), (bad[1], None)])
    records = step_records(logs, 2, report)
    assert {r.episode_key for r in records} == {"g"} and report.episodes_without_propensities == 1


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []

    def send(self, topic, key, value, headers=()):
        self.sent.append((topic, key, value))


class FakeEnv:
    def __init__(self) -> None:
        self.actions: list[int] = []

    def reset(self, seed=None):
        return np.zeros(4, np.float32), {}

    def step(self, action):
        self.actions.append(action)  # observation k after k actions: every one tells its step apart
        return np.full(4, float(len(self.actions)), np.float32), 1.0, len(self.actions) >= 3, False, {}


def driver_with_one_episode(tmp_path: Path, human_wait_s: float):
    from training.rl.env_driver import Driver, RunArgs, _Slot

    registry = ModelRegistry(tmp_path / "models")
    card = publish_policy(registry, "policy-cartpole-v1", cartpole_weights(), safe_action=0).card
    settings = Settings(topic_prefix="t", models_dir=tmp_path / "models")
    driver = Driver(settings, RunArgs(episodes=1, human_wait_s=human_wait_s, decision_timeout_s=1.0), card,
                    FakeProducer(), None)
    slot = _Slot(FakeEnv())
    driver._start_episode(slot, now=0.0)
    return driver, slot


def deferred(driver, slot) -> Record:
    action = Action(slot.request_id, "policy-cartpole-v1", "1", slot.episode_key, slot.step, None, Route.HUMAN, 1e9,
                    {"action_probs": [0.55, 0.45], "value": 3.0})
    return Record("t.actions", 0, 0, action.key, action.to_bytes())


def test_a_human_decision_in_time_is_applied_as_human(tmp_path: Path) -> None:
    driver, slot = driver_with_one_episode(tmp_path, human_wait_s=5.0)
    rid = slot.request_id
    driver.on_record(deferred(driver, slot), now=0.1)
    driver.expire(now=0.5)  # still waiting for the human
    assert slot.env.actions == []
    human = Decision(rid, "policy-cartpole-v1", "1", 1, "human", 1e9, slot.episode_key, 0)
    driver.on_record(Record("t.decisions", 0, 0, slot.episode_key.encode(), human.to_bytes()), now=0.6)
    assert slot.env.actions == [1] and driver.report.sources == {"human": 1}
    sent = [Transition.from_bytes(v) for t, _, v in driver.producer.sent if t == "t.transitions"]
    assert [(x.request_id, x.source, x.action) for x in sent] == [(rid, "human", 1)]


def test_no_human_in_time_falls_back_to_the_safe_action_and_logs_it(tmp_path: Path) -> None:
    driver, slot = driver_with_one_episode(tmp_path, human_wait_s=0.2)
    rid = slot.request_id
    driver.on_record(deferred(driver, slot), now=0.1)
    driver.expire(now=0.31)
    assert slot.env.actions == [0] and driver.report.sources == {"fallback": 1} and driver.report.timeouts == 0
    fallback = [Decision.from_bytes(v) for t, _, v in driver.producer.sent if t == "t.decisions"]
    assert [(d.request_id, d.source, d.output) for d in fallback] == [(rid, "fallback", 0)]
    assert fallback[0].details["propensities"] == [1.0, 0.0] and fallback[0].details["action_probs"] == [0.55, 0.45]
    # no answer at all (consumer down): the deadline also falls back, counted as a timeout
    driver.expire(now=100.0)
    assert slot.env.actions == [0, 0] and driver.report.timeouts == 1


def logs_of_driver(driver) -> StreamLogs:
    """What ``rl dataset`` reads back of what the driver sent (the consumer's decisions added by
    the test)."""
    logs = StreamLogs()
    for topic, _, value in driver.producer.sent:
        if topic == "t.transitions":
            logs.add(Transition.from_bytes(value))
        elif topic == "t.decisions":
            logs.add(Decision.from_bytes(value))
        elif topic == "t.requests.policy-cartpole-v1":
            logs.add(InferenceRequest.from_bytes(value))  # only the end request is kept
    return logs


def run_one_episode_through_the_driver(tmp_path: Path):
    """Step 0 deferred and no human in time (fallback), step 1 no answer at all (fallback),
    step 2 the model's QC-sampled action; the episode then ends. Returns (driver, the
    consumer's model decision on step 2)."""
    driver, slot = driver_with_one_episode(tmp_path, human_wait_s=0.0)
    key = slot.episode_key
    driver.on_record(deferred(driver, slot), now=0.1)
    driver.expire(now=0.1)  # step 0: deferred, nobody answered: fallback, route HUMAN
    driver.expire(now=100.0)  # step 1: no answer at all: fallback, route null
    rid = slot.request_id
    model = Decision(rid, "policy-cartpole-v1", "1", 1, "model", 1e9, key, 2,
                     {"propensities": [0.2, 0.8], "route": "AUTO_QC", "qc_sampled": True, "qc_inclusion_prob": 0.05})
    action = Action(rid, "policy-cartpole-v1", "1", key, 2, 1, Route.AUTO_QC, 1e9, {})
    driver.on_record(Record("t.actions", 0, 0, action.key, action.to_bytes()), now=100.1)
    assert slot.env.actions == [0, 0, 1] and driver.report.timeouts == 1 and len(driver.report.returns) == 1
    return driver, model


def test_a_step_no_answer_reached_is_a_timeout_not_a_deferral_to_a_human(tmp_path: Path) -> None:
    """The driver's fallback after a deferral logs route HUMAN, after no answer at all route null:
    the dataset tells them apart (TIMEOUT), and only the deferred step counts as routed to a human."""
    driver, model = run_one_episode_through_the_driver(tmp_path)
    logs = logs_of_driver(driver)
    logs.add(model)
    fallbacks = [logs.decisions[(f"{model.episode_key}-s{t}", "fallback")].details["route"] for t in (0, 1)]
    assert fallbacks == ["HUMAN", None]
    report = DatasetReport()
    data = build_dataset(step_records(logs, 2, report))
    assert data.sources.tolist() == ["fallback", "fallback", "model"]
    assert data.routes.tolist() == ["HUMAN", "TIMEOUT", "AUTO_QC"] and not report.episodes_dropped


def test_the_qc_inclusion_probability_travels_with_every_step(tmp_path: Path) -> None:
    """Human labels on auto-accepted steps exist only where QC sampled them, with probability pi:
    the dataset carries it (1.0 deferred, pi QC-sampled, 0.0 not sent to an auditor)."""
    driver, model = run_one_episode_through_the_driver(tmp_path)
    logs = logs_of_driver(driver)
    logs.add(model)
    data = build_dataset(step_records(logs, 2, DatasetReport()))
    assert data.routes.tolist() == ["HUMAN", "TIMEOUT", "AUTO_QC"]
    assert data.inclusion_prob.tolist() == pytest.approx([1.0, 0.0, 0.05])


def test_inclusion_probability_from_the_verdict_where_the_decision_lacks_it() -> None:
    """AUTO_QC: the decision's qc_inclusion_prob, else the verdict's, else NaN (not logged); AUTO
    0.0; a timed-out step the consumer's late answer sent to QC: its verdict's."""
    steps = [transition("a", t, 1, "fallback" if t == 3 else "model", last=t == 3) for t in range(4)]
    logs = logs_of([(t, [0.0, 1.0]) for t in steps])
    routes = ["AUTO", "AUTO_QC", "AUTO_QC", None]
    for t, r in zip(steps, routes):
        logs.decisions[(t.request_id, t.source)].details["route"] = r
    logs.decisions[("a-s1", "model")].details["qc_inclusion_prob"] = 0.05
    logs.verdicts = {v.request_id: v for v in [
        Verdict("v1", "a-s1", "p", "1", "ann", VerdictKind.ACCEPT, 2e9, 1, item_route=Route.AUTO_QC, inclusion_prob=0.05),
        Verdict("v3", "a-s3", "p", "1", "ann", VerdictKind.CORRECT, 2e9, 1, 0, item_route=Route.AUTO_QC,
                inclusion_prob=0.3)]}
    data = build_dataset(step_records(logs, 2, DatasetReport()))
    assert data.routes.tolist() == ["AUTO", "AUTO_QC", "AUTO_QC", "TIMEOUT"]
    assert data.human_actions.tolist() == [-1, 1, -1, 0]
    np.testing.assert_allclose(data.inclusion_prob, [0.0, 0.05, np.nan, 0.3], rtol=1e-6)
    logs.verdicts["a-s2"] = Verdict("v2", "a-s2", "p", "1", "ann", VerdictKind.ACCEPT, 2e9, 1, item_route=Route.AUTO_QC,
                                    inclusion_prob=0.2)
    data = build_dataset(step_records(logs, 2, DatasetReport()))
    np.testing.assert_allclose(data.inclusion_prob, [0.0, 0.05, 0.2, 0.3], rtol=1e-6)


def test_the_final_observation_is_the_end_request_the_driver_sent(tmp_path: Path) -> None:
    """The env's observation after the last action (3: FakeEnv returns k after k actions) travels
    as the '<key>-end' request: it is the last step's next observation and Minari's
    observations[T], not a copy of observations[T-1] (2)."""
    driver, model = run_one_episode_through_the_driver(tmp_path)
    logs = logs_of_driver(driver)
    logs.add(model)
    assert list(logs.ends) == [model.episode_key] and logs.ends[model.episode_key].step == 3
    data = build_dataset(step_records(logs, 2, DatasetReport()))
    assert data.observations[:, 0].tolist() == [0.0, 1.0, 2.0]
    assert data.next_observations[:, 0].tolist() == [1.0, 2.0, 3.0]
    assert data.final_observation_logged.tolist() == [True]


def test_without_its_end_request_an_episode_is_kept_with_the_copy_and_flagged(tmp_path: Path) -> None:
    driver, model = run_one_episode_through_the_driver(tmp_path)
    logs = logs_of_driver(driver)
    logs.add(model)
    end = logs.ends.pop(model.episode_key)
    for unusable in (None, InferenceRequest(end.request_id, end.model, end.input, 1.0, end.episode_key, 2, True),
                     InferenceRequest(end.request_id, end.model, np.zeros(3, np.float32), 1.0, end.episode_key, 3, True)):
        logs.ends = {} if unusable is None else {end.episode_key: unusable}  # missing, another step, another shape
        data = build_dataset(step_records(logs, 2, DatasetReport()))
        assert data.next_observations[:, 0].tolist() == [1.0, 2.0, 2.0] and data.final_observation_logged.tolist() == [False]


@pytest.mark.parametrize("source,logged", [("model", "HUMAN"), ("model", "TIMEOUT"), ("fallback", "AUTO"),
                                           ("fallback", "TIMEOUT"), ("model", 3)])
def test_a_decision_logging_a_route_it_cannot_have_drops_its_episode(source, logged) -> None:
    """A model decision routes AUTO or AUTO_QC, a fallback decision HUMAN or null: anything else is
    a forged or foreign record, dropped and counted (never a dataset route outside ROUTES)."""
    bad = [transition("b", 0, 1, source, last=True)]
    logs = logs_of([(transition("g", 0, 1, "model", last=True), [0.4, 0.6]), (bad[0], [0.0, 1.0])])
    logs.decisions[("b-s0", source)].details["route"] = logged
    report = DatasetReport()
    data = build_dataset(step_records(logs, 2, report), dropped=report.episodes_dropped)
    assert data.episode_keys.tolist() == ["g"] and report.episodes_dropped == {"bad_route": 1}


def test_promoting_a_candidate_of_another_name_publishes_it_under_the_live_name(tmp_path: Path) -> None:
    from training.rl.shadow import _make_live

    registry = ModelRegistry(tmp_path / "models")
    live = publish_policy(registry, "policy-cartpole-v1", cartpole_weights(5.0))
    registry.set_live("policy-cartpole-v1", live.card.version)
    candidate = publish_policy(registry, "policy-bc-cartpole-v1", cartpole_weights(20.0))
    version = _make_live(registry, candidate, "policy-cartpole-v1")
    assert version == "2" and registry.live_version("policy-cartpole-v1") == "2"
    promoted = registry.load("policy-cartpole-v1")
    assert promoted.card.extra["promoted_from"] == "policy-bc-cartpole-v1/1"
    assert promoted.onnx_path.read_bytes() == candidate.onnx_path.read_bytes()


# -- reading the topics (read_to_end replaced by the records it would return)


def topics_returning(monkeypatch: pytest.MonkeyPatch, items: list) -> Settings:
    """Settings whose read_to_end yields ``items`` (wire records) as the three topics' records and
    whose iter_to_end yields the requests (``InferenceRequest`` items) of model p's requests topic."""
    import auditstream.kafka

    settings = Settings(topic_prefix="t")
    topic = {Transition: "transitions", Decision: "decisions", Verdict: "verdicts", InferenceRequest: "requests.p"}
    records = [Record(settings.topic(topic[type(x)]), 0, i, None, x.to_bytes()) for i, x in enumerate(items)]
    requests = [r for r in records if r.topic == settings.request_topic("p")]
    monkeypatch.setattr(auditstream.kafka, "read_to_end", lambda *a, **k: [r for r in records if r not in requests])
    monkeypatch.setattr(auditstream.kafka, "iter_to_end", lambda s, topics, *a, **k: iter(
        [r for r in requests if r.topic in topics]))
    return settings


def episode(ep: str, versions: list[str], probs: list[float] | None = None, end: bool = True) -> list:
    """Transitions (and model decisions) of an episode whose step t was served by versions[t],
    and (``end``) the driver's end request with its final observation (T + 100)."""
    out: list = []
    for t, version in enumerate(versions):
        tr = Transition(f"{ep}-s{t}", "p", version, ep, t, np.full(4, t, np.float32), 1, "model", 1.0,
                        t == len(versions) - 1, False, 1e9)
        out += [tr, Decision(tr.request_id, "p", version, 1, "model", 1e9, ep, t,
                             {"propensities": probs or [0.4, 0.6], "route": "AUTO"})]
    n = len(versions)
    return out + ([InferenceRequest(f"{ep}-end", "p", np.full(4, n + 100, np.float32), 1e9, ep, n, True)] if end else [])


def test_rl_dataset_reads_the_end_requests_off_the_requests_topic(monkeypatch) -> None:
    """Of the requests topic only the end requests are kept (not a step's request), those of another
    model are not taken; an episode without one keeps the copy, flagged and counted."""
    from training.rl.stream_dataset import build_stream_dataset, read_logs

    step = InferenceRequest("a-s0", "p", np.zeros(4, np.float32), 1e9, "a", 0)
    other = InferenceRequest("b-end", "q", np.full(4, 7.0, np.float32), 1e9, "b", 2, True)
    items = episode("a", ["1", "1"]) + episode("b", ["1", "1"], end=False) + [step, other]
    settings = topics_returning(monkeypatch, items)
    assert list(read_logs(settings, "p").ends) == ["a"] and list(read_logs(settings).ends) == ["a"]
    data, report = build_stream_dataset(settings, None, None, n_actions=2)
    assert data.episode_keys.tolist() == ["a", "b"] and data.final_observation_logged.tolist() == [True, False]
    assert data.next_observations[:, 0].tolist() == [1.0, 102.0, 1.0, 1.0]
    assert report.final_observations_missing == 1 and report.to_dict()["final_observations_missing"] == 1


def test_an_episode_spanning_a_version_change_is_dropped_whole_never_cut(monkeypatch) -> None:
    """Selecting version 2: the episode that switched from 1 to 2 at step 3 is neither kept as a
    3-step episode starting at step 3 nor allowed to fail the build; it is counted."""
    from training.rl.stream_dataset import build_stream_dataset

    items = episode("mixed", ["1", "1", "1", "2", "2", "2"]) + episode("v2", ["2", "2"]) + episode("v1", ["1"] * 3)
    settings = topics_returning(monkeypatch, items)
    data, report = build_stream_dataset(settings, "p", "2", n_actions=2)
    assert data.episode_keys.tolist() == ["v2"] and data.steps.tolist() == [0, 1]
    assert report.episodes_dropped == {"version_change": 1} and report.to_dict()["episodes_dropped"] == {"version_change": 1}
    assert report.sources == {"model": 5}  # the selected version's transitions
    data, report = build_stream_dataset(settings, "p", "1", n_actions=2)
    assert data.episode_keys.tolist() == ["v1"] and report.episodes_dropped == {"version_change": 1}
    data, report = build_stream_dataset(settings, "p", None, n_actions=2)  # every version: all whole
    assert data.episode_keys.tolist() == ["mixed", "v1", "v2"] and not report.episodes_dropped


def test_an_episode_whose_start_was_lost_is_dropped_and_counted(monkeypatch) -> None:
    from training.rl.stream_dataset import build_stream_dataset

    items = episode("whole", ["1", "1"]) + episode("headless", ["1"] * 4)[2:]  # steps 1-3 only
    data, report = build_stream_dataset(topics_returning(monkeypatch, items), "p", "1", n_actions=2)
    assert data.episode_keys.tolist() == ["whole"] and report.episodes_dropped == {"missing_start": 1}


@pytest.mark.parametrize("probs", [[-0.2, 1.2], [1.0, 0.0], [0.3, 0.3], [1.5, 0.6], ["x", 1.0]])
def test_an_episode_with_unusable_logged_propensities_is_dropped_and_counted(monkeypatch, probs) -> None:
    """The executed action is 1; negative, > 1, 0 for it, not summing to 1 (the wire carries no
    NaN): the episode is dropped (one forged decision record cannot stop every build), the others
    kept."""
    from training.rl.stream_dataset import build_stream_dataset

    bad = episode("bad", ["1", "1"])
    bad[3] = Decision(bad[3].request_id, "p", "1", 1, "model", 1e9, "bad", 1, {"propensities": probs})
    data, report = build_stream_dataset(topics_returning(monkeypatch, episode("good", ["1"]) + bad), "p", "1",
                                        n_actions=2)
    reason = "no_propensities" if "x" in probs else "bad_propensities"
    assert data.episode_keys.tolist() == ["good"] and report.episodes_dropped == {reason: 1}


def verdict(kind: VerdictKind, at: float, corrected=None, vid: str = "v") -> Verdict:
    return Verdict(vid, "a-s0", "p", "1", "ann", kind, at, model_output=1, corrected_output=corrected)


def test_a_later_skip_does_not_erase_an_earlier_correction(monkeypatch) -> None:
    from training.rl.stream_dataset import human_action, read_logs

    items = episode("a", ["1"]) + [verdict(VerdictKind.CORRECT, 2e9, corrected=0, vid="v1"),
                                   verdict(VerdictKind.SKIP, 3e9, vid="v2")]
    logs = read_logs(topics_returning(monkeypatch, items), "p")
    assert human_action(logs, "a-s0", 2) == 0  # the correction stands
    data = build_dataset(step_records(logs, 2, DatasetReport()))
    assert data.human_actions.tolist() == [0] and data.overridden.tolist() == [True]


@hyp_settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(list(VerdictKind)), st.integers(0, 5), st.integers(0, 1)), max_size=8))
def test_the_latest_verdict_that_is_not_a_skip_wins(verdicts) -> None:
    """Any sequence of verdicts on one request (read in this order, possibly out of time order):
    the human action is that of the latest non-skip verdict by time (a tie: the one read last)."""
    from training.rl.stream_dataset import human_action

    logs = StreamLogs()
    for i, (kind, at, corrected) in enumerate(verdicts):
        logs.add(verdict(kind, float(at), corrected=corrected, vid=f"v{i}"))
    opinions = [(at, i, kind, c) for i, (kind, at, c) in enumerate(verdicts) if kind != VerdictKind.SKIP]
    expected = None
    if opinions:
        _, _, kind, corrected = max(opinions)
        expected = {VerdictKind.CORRECT: corrected, VerdictKind.ACCEPT: 1}.get(kind)
    assert human_action(logs, "a-s0", 2) == expected


def test_a_fallback_without_any_answer_names_the_version_serving_the_episode(tmp_path: Path) -> None:
    """The consumer switched to version 2 (hot reload) while the driver holds card version 1: a
    step that then times out is logged as version 2's, so the episode is not a fake version change."""
    driver, slot = driver_with_one_episode(tmp_path, human_wait_s=0.0)
    action = Action(slot.request_id, "policy-cartpole-v1", "2", slot.episode_key, 0, 1, Route.AUTO, 1e9, {})
    driver.on_record(Record("t.actions", 0, 0, action.key, action.to_bytes()), now=0.1)
    driver.expire(now=100.0)  # step 1: no answer at all
    sent = [Transition.from_bytes(v) for t, _, v in driver.producer.sent if t == "t.transitions"]
    assert [(x.step, x.source, x.model_version) for x in sent] == [(0, "model", "2"), (1, "fallback", "2")]
    fallback = [Decision.from_bytes(v) for t, _, v in driver.producer.sent if t == "t.decisions"]
    assert [d.model_version for d in fallback] == ["2"]


def test_a_run_where_no_episode_finished_summarises_as_json_with_null_returns() -> None:
    """``rl run``'s summary when no episode finished: its returns are null, not NaN (which no
    strict JSON reader takes, and the strict writer refuses)."""
    import json

    from auditstream import finite_json
    from training.rl.env_driver import RunReport

    summary = RunReport(env="CartPole-v1", model="policy-cartpole-v1/1").summary()
    assert summary["episodes"] == 0 and summary["mean_return"] is None and summary["std_return"] is None
    assert json.loads(finite_json.dumps(summary))["mean_return"] is None


def test_rl_dataset_refuses_a_model_that_is_no_policy_of_the_registry_before_reading(tmp_path, monkeypatch,
                                                                                     capsys) -> None:
    """Before, a misspelt --model read the topics and then said the broker was unavailable (the
    model's requests topic does not exist) although it was up. Now: one line naming --model and
    the registry's policies, exit 2, nothing read."""
    import auditstream.kafka
    from tests.conftest import tiny_card, tiny_classifier_onnx

    from auditstream.cli import main

    registry = ModelRegistry(tmp_path / "models")
    publish_policy(registry, "policy-cartpole-v1", cartpole_weights())
    registry.publish(tiny_card("digits"), tiny_classifier_onnx())
    monkeypatch.setenv("AUDITSTREAM_MODELS_DIR", str(registry.root))
    monkeypatch.setattr(auditstream.kafka, "read_to_end", lambda *a, **k: pytest.fail("the topics were read"))
    for model, says in (("policy-cartpol-v1", "policy-cartpol-v1 is not in the registry; did you mean "
                                              "policy-cartpole-v1?"),
                        ("digits", "digits is no policy")):
        assert main(["rl", "dataset", "--out", str(tmp_path / "x" / "ds.npz"), "--model", model]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith(f"auditstream: error: invalid --model='{model}': "
                                                             "expected one of the policies in"), err
        assert "policy-cartpole-v1" in err and says in err, err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("fmt, out, says", [
    ("npz", "README.md/x.npz", "(README.md is a file, not a folder)"),
    ("npz", "README.md/sub/x.npz", "(README.md is a file, not a folder)"),
    ("npz", "folder", "expected a file (folder is a folder)"),
    ("minari", "README.md", "expected a folder (README.md is a file)"),
    ("minari", "README.md/datasets", "(README.md is a file, not a folder)"),
])
def test_rl_dataset_refuses_an_out_it_cannot_write_before_reading(fmt, out, says, tmp_path, monkeypatch,
                                                                  capsys) -> None:
    """Before, --out README.md/x.npz ended in a FileExistsError traceback after the topics were read."""
    import auditstream.kafka

    from auditstream.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "README.md").write_text("a file")
    (tmp_path / "folder").mkdir()
    monkeypatch.setattr(auditstream.kafka, "read_to_end", lambda *a, **k: pytest.fail("the topics were read"))
    assert main(["rl", "dataset", "--format", fmt, "--out", out]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"auditstream: error: invalid --out='{out}': expected"), err
    assert says in err, err
