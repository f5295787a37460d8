"""Per-episode state of the policy consumer (serving/episodes.py) and the policy path of
process_batch: frame stacks, replays, tombstones, restore; decisions with propensities, actions
and deferred markers, shadow mode; and, on the embedded broker, a SIGKILLed consumer whose
successor continues the episode from the state topic."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.serving.tiny_policy import cartpole_weights, publish_policy

from auditstream import topics as T
from auditstream.errors import EpisodeStateNotRestored
from auditstream.kafka import Record
from auditstream.registry import ModelRegistry
from auditstream.settings import Settings
from auditstream.wire import Action, Decision, InferenceRequest, Prediction, Route
from serving.consumer import ServeConfig, process_batch
from serving.episodes import EpisodeState, EpisodeStore
from serving.runtime import load_session

K, D = 3, 4  # frames stacked, observation width


def frame_policy(tmp_path: Path, **card_args):
    rng = np.random.default_rng(3)
    registry = ModelRegistry(tmp_path / "models")
    return publish_policy(registry, "stacked", rng.standard_normal((K * D, 2)).astype(np.float32),
                          frame_stack=K, **card_args)


def request(step: int, obs, key: str = "ep-1", end: bool = False) -> InferenceRequest:
    return InferenceRequest(f"{key}-s{step}", "stacked", np.asarray(obs, np.float32), 1.0e9 + step, key, step,
                            episode_end=end)


def record(req: InferenceRequest, offset: int, partition: int = 3, topic: str = "t.requests.stacked") -> Record:
    return Record(topic, partition, offset, req.key, req.to_bytes())


def expected_stack(observations: list[np.ndarray], step: int) -> np.ndarray:
    frames = [observations[max(0, s)] for s in range(step - K + 1, step + 1)]
    return np.concatenate(frames)


# -- the store alone


def test_frame_stack_pads_with_the_first_frame_then_slides(tmp_path: Path) -> None:
    store = EpisodeStore(frame_policy(tmp_path).card, "t.episode-state")
    obs = [np.full(D, s, np.float32) for s in range(5)]
    for s in range(5):
        got = store.observe(request(s, obs[s]), obs[s], partition=3)
        np.testing.assert_array_equal(got.input, expected_stack(obs, s))
        context = store.decided(got, action=s % 2)
        assert context == {"steps_seen": s + 1, "previous_action": None if s == 0 else (s - 1) % 2}
    # a replay of the last step gets the same stack and context, and leaves the state alone
    replayed = store.observe(request(4, obs[4]), obs[4], 3)
    assert np.array_equal(replayed.input, expected_stack(obs, 4))
    assert store.decided(replayed, 0) == {"steps_seen": 5, "previous_action": 1}
    assert store.states["ep-1"].next_step == 5 and store.states["ep-1"].steps_seen == 5


def test_checkpoint_writes_changed_states_then_tombstones_ended_and_idle(tmp_path: Path) -> None:
    now = [1000.0]
    store = EpisodeStore(frame_policy(tmp_path).card, "t.episode-state", ttl_s=60.0, clock=lambda: now[0])
    store.observe(request(0, np.zeros(D)), np.zeros(D, np.float32), 3)
    store.observe(request(0, np.zeros(D), key="ep-2"), np.zeros(D, np.float32), 5)
    out = store.checkpoint_outputs()
    assert [(o.key, o.value is None) for o in out] == [(b"ep-1", False), (b"ep-2", False)]
    assert store.checkpoint_outputs() == []  # nothing changed since
    store.end(request(1, np.zeros(D), end=True))
    now[0] += 61.0  # ep-2 went idle
    assert [(o.key, o.value) for o in store.checkpoint_outputs()] == [(b"ep-1", None), (b"ep-2", None)]
    assert store.states == {}


def test_restore_adopts_owned_partitions_and_honours_tombstones(tmp_path: Path) -> None:
    card = frame_policy(tmp_path).card
    states = [EpisodeState("a", 3, 7, 7, 1, [[6, np.ones(D, np.float32), 1]], model="stacked"),
              EpisodeState("b", 4, 2, 2, 0, [], model="stacked"), EpisodeState("c", 3, 9, 9, 0, [], model="stacked")]
    log = [Record("s", 0, i, st.episode_key.encode(), st.to_bytes()) for i, st in enumerate(states)]
    log.append(Record("s", 0, 3, b"c", None))  # c ended
    store = EpisodeStore(card, "s", load_states=lambda: log)
    store.restore([("t.requests.stacked", 3)])
    assert set(store.states) == {"a"} and store.restored == 1
    assert store.states["a"].next_step == 7 and store.states["a"].last_action == 1
    np.testing.assert_array_equal(store.states["a"].frames[0][1], np.ones(D))
    store.forget([("t.requests.stacked", 3)])
    assert store.states == {}


def test_past_max_live_episodes_the_least_recently_stepped_episode_is_ended(tmp_path: Path) -> None:
    """A client stepping ever new episode keys used to grow the consumer's memory without end."""
    store = EpisodeStore(frame_policy(tmp_path).card, "t.episode-state", max_live_episodes=3)
    zero = np.zeros(D, np.float32)
    for key in ("a", "b", "c"):
        store.observe(request(0, zero, key=key), zero, 3)
    store.checkpoint_outputs()
    store.observe(request(1, zero, key="a"), zero, 3)  # a is now the most recently stepped
    store.observe(request(0, zero, key="d"), zero, 3)  # one too many: b goes
    assert list(store.states) == ["c", "a", "d"] and store.evicted == 1
    out = store.checkpoint_outputs()
    assert (b"b", None) in [(o.key, o.value) for o in out]  # its tombstone, with this checkpoint
    # b's next step starts it afresh (within max_step_gap), ending the least recently stepped (c)
    stacked = store.observe(request(1, np.ones(D), key="b"), np.ones(D, np.float32), 3).input
    np.testing.assert_array_equal(stacked, np.tile(np.ones(D, np.float32), K))
    assert list(store.states) == ["a", "d", "b"] and store.evicted == 2 and store.states["b"].next_step == 2


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 3)), max_size=120), st.integers(1, 6))
def test_the_live_episodes_never_exceed_the_bound(steps, bound) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        store = EpisodeStore(frame_policy(Path(tmp)).card, "t.episode-state", max_live_episodes=bound)
        zero = np.zeros(D, np.float32)
        for key, step in steps:
            state = store.states.get(f"k{key}")
            step = step if state is None else state.next_step + step % 2  # in order, sometimes one ahead
            store.observe(request(step, zero, key=f"k{key}"), zero, 3)
            assert len(store.states) <= bound
        ended = {o.key for o in store.checkpoint_outputs() if o.value is None}
        assert not ended & {k.encode() for k in store.states}  # a live episode is never tombstoned


def test_restore_adopts_the_most_recently_stepped_up_to_the_bound_and_ends_the_rest(tmp_path: Path) -> None:
    card = frame_policy(tmp_path).card
    states = [EpisodeState(k, 3, 1, 1, 0, [], updated_at_s=t, model="stacked")
              for k, t in (("old", 10.0), ("new", 30.0), ("mid", 20.0))]
    log = [Record("s", 0, i, s.episode_key.encode(), s.to_bytes()) for i, s in enumerate(states)]
    store = EpisodeStore(card, "s", load_states=lambda: log, max_live_episodes=2, clock=lambda: 40.0)
    store.restore([("t.requests.stacked", 3)])
    assert list(store.states) == ["mid", "new"] and store.restored == 2 and store.evicted == 1
    assert [(o.key, o.value) for o in store.checkpoint_outputs()] == [(b"old", None)]


def test_restore_folds_the_state_log_as_it_reads_it(tmp_path: Path) -> None:
    # An uncompacted state topic (the embedded broker never compacts) holds every snapshot ever
    # written: restore keeps the latest per key while reading, not the log (20 MB here).
    import tracemalloc

    card = frame_policy(tmp_path).card
    padding = b" " * 20_000  # JSON whitespace: a snapshot the size of an episode of several frames

    def log():  # one-shot, like the topic reader: 1,000 snapshots of 4 episodes, then a tombstone and a re-start
        for i in range(1_000):
            key = f"e{i % 4}"
            state = EpisodeState(key, 3, i, i, 0, [], updated_at_s=float(i), model="stacked")
            yield Record("s", 0, i, key.encode(), state.to_bytes() + padding)
        yield Record("s", 0, 1_000, b"e0", None)  # e0 ended ...
        yield Record("s", 0, 1_001, b"e1", None)  # ... and so did e1, which starts again:
        yield Record("s", 0, 1_002, b"e1",
                     EpisodeState("e1", 3, 7, 7, 0, [], updated_at_s=999.5, model="stacked").to_bytes())

    store = EpisodeStore(card, "s", load_states=log, clock=lambda: 1_000.0)
    tracemalloc.start()
    try:
        store.restore([("t.requests.stacked", 3)])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sorted(store.states) == ["e1", "e2", "e3"] and store.states["e1"].next_step == 7
    assert store.states["e2"].next_step == 998 and store.restored == 3
    assert peak < 2_000_000, f"restore held {peak:,} bytes while reading 20 MB of snapshots"


def test_a_state_log_that_fails_while_read_stops_the_first_step(tmp_path: Path) -> None:
    from auditstream.errors import BrokerUnavailable

    card = frame_policy(tmp_path).card

    def log():
        yield Record("s", 0, 0, b"e0", EpisodeState("e0", 3, 1, 1, 0, [], model="stacked").to_bytes())
        raise BrokerUnavailable("127.0.0.1:1", "could not read the topic to its end")

    store = EpisodeStore(card, "s", load_states=log, clock=lambda: 40.0)
    store.restore([("t.requests.stacked", 3)])  # kept, not raised: client libraries swallow a callback's exception
    assert store.states == {} and store.restored == 0  # nothing half-read is adopted
    zero = np.zeros(D, np.float32)
    with pytest.raises(EpisodeStateNotRestored, match="not restored.*could not read"):  # the next step stops it
        store.observe(request(0, zero, key="e0"), zero, 3)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, None])
def test_max_live_episodes_must_be_a_whole_number_of_at_least_one(tmp_path: Path, bad) -> None:
    with pytest.raises(ValueError, match="max_live_episodes"):
        EpisodeStore(frame_policy(tmp_path).card, "s", max_live_episodes=bad)


# -- process_batch on the policy path


def config_for(model, settings: Settings | None = None, **changes) -> ServeConfig:
    settings = settings or Settings(topic_prefix="t", qc_rate=0.0)
    return dataclasses.replace(ServeConfig.from_settings(settings, model.card), **changes)


def test_every_decision_carries_propensities_and_each_route_its_outputs(tmp_path: Path) -> None:
    model = publish_policy(ModelRegistry(tmp_path / "models"), "stacked", cartpole_weights(scale=4.0), threshold=0.6)
    config = config_for(model)
    assert config.policy.qc_rate == 0.01  # a policy keeps at least 1% random audits
    session, store = load_session(model), EpisodeStore(model.card, "t.episode-state")
    rng = np.random.default_rng(0)
    reqs = [InferenceRequest(f"r{i}", "stacked", rng.normal(0, 0.1, 4).astype(np.float32), 1e9, f"ep{i % 7}", i // 7)
            for i in range(400)]
    results = process_batch([Record("t.requests.stacked", 0, i, r.key, r.to_bytes()) for i, r in enumerate(reqs)],
                            session, config, 1e9, store)
    routes = {Route(r.route) for r in results}
    assert routes == {Route.AUTO, Route.AUTO_QC, Route.HUMAN}
    for req, result in zip(reqs, results):
        by_topic = {o.topic: o for o in result.outputs}
        prediction = Prediction.from_bytes(by_topic["t.predictions"].value)
        action = Action.from_bytes(by_topic["t.actions"].value)
        assert (action.episode_key, action.step) == (req.episode_key, req.step)
        if result.route == Route.HUMAN:
            assert action.deferred and "t.decisions" not in by_topic and "t.audit" in by_topic
            continue
        decision = Decision.from_bytes(by_topic["t.decisions"].value)
        probs = decision.details["propensities"]
        assert len(probs) == 2 and abs(sum(probs) - 1) < 1e-5 and probs == decision.details["action_probs"]
        assert decision.output == action.action == prediction.output and probs[decision.output] > 0
        assert decision.details["qc_sampled"] == (result.route == Route.AUTO_QC) == ("t.audit" in by_topic)
        assert decision.details["route"] == result.route.value and "value" in decision.details
        assert decision.details["episode"]["steps_seen"] == req.step + 1


def test_sampled_actions_follow_the_probabilities_and_greedy_is_one_hot(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "models")
    sampled = publish_policy(registry, "stacked", np.zeros((4, 2), np.float32), threshold=0.0)  # 50/50 everywhere
    greedy = publish_policy(registry, "greedy", cartpole_weights(1.0), threshold=0.0, action_selection="greedy")
    reqs = [InferenceRequest(f"r{i}", "stacked", np.ones(4, np.float32), 1e9) for i in range(600)]
    recs = [Record("t.requests.stacked", 0, i, r.key, r.to_bytes()) for i, r in enumerate(reqs)]
    actions = [Prediction.from_bytes(r.outputs[0].value).output
               for r in process_batch(recs, load_session(sampled), config_for(sampled), 1e9)]
    assert 0.4 < np.mean(actions) < 0.6  # a fair coin per request id, fixed on redelivery
    again = process_batch(recs[:50], load_session(sampled), config_for(sampled), 1e9)
    assert [Prediction.from_bytes(r.outputs[0].value).output for r in again] == actions[:50]
    reqs = [dataclasses.replace(r, model="greedy") for r in reqs[:5]]
    out = process_batch([Record("t.requests.greedy", 0, i, r.key, r.to_bytes()) for i, r in enumerate(reqs)],
                        load_session(greedy), config_for(greedy), 1e9)
    details = Prediction.from_bytes(out[0].outputs[0].value).details
    assert details["propensities"] == [0.0, 1.0] and details["action_probs"][1] < 1.0


def test_shadow_writes_flagged_predictions_only(tmp_path: Path) -> None:
    model = publish_policy(ModelRegistry(tmp_path / "models"), "candidate", cartpole_weights(4.0), threshold=0.6)
    config = config_for(model, shadow=True, request_model="live")
    store = EpisodeStore(model.card, None)
    reqs = [InferenceRequest(f"r{i}", "live", np.random.default_rng(i).normal(0, 0.1, 4).astype(np.float32), 1e9,
                             "ep", i) for i in range(50)]
    results = process_batch([Record("t.requests.live", 0, i, r.key, r.to_bytes()) for i, r in enumerate(reqs)],
                            load_session(model), config, 1e9, store)
    assert {r.route for r in results} >= {Route.AUTO, Route.HUMAN}
    assert all([o.topic for o in r.outputs] == ["t.predictions"] for r in results)
    assert all(Prediction.from_bytes(r.outputs[0].value).shadow for r in results)
    assert store.checkpoint_outputs() == []  # a shadow never writes the live consumer's state keys


def test_episode_end_only_ends_the_state(tmp_path: Path) -> None:
    model = frame_policy(tmp_path)
    store = EpisodeStore(model.card, "t.episode-state")
    reqs = [request(0, np.ones(D)), request(1, np.ones(D), end=True)]
    results = process_batch([record(r, i) for i, r in enumerate(reqs)], load_session(model), config_for(model), 1e9, store)
    assert results[1].outputs == [] and results[1].route is None and results[1].dead_letter_reason is None
    assert [(o.key, o.value) for o in store.checkpoint_outputs()] == [(b"ep-1", None)]


# -- on the broker: SIGKILL mid-episode, the successor restores the state


def serve_env(settings: Settings) -> dict[str, str]:
    return dict(os.environ, AUDITSTREAM_BOOTSTRAP_SERVERS=settings.bootstrap_servers,
                AUDITSTREAM_TOPIC_PREFIX=settings.topic_prefix, AUDITSTREAM_MODELS_DIR=str(settings.models_dir),
                AUDITSTREAM_STATE_DIR=str(settings.state_dir), AUDITSTREAM_LOG_LEVEL="INFO")


def start_serve(settings: Settings, model: str, log: Path) -> subprocess.Popen:
    with open(log, "ab") as f:
        return subprocess.Popen([sys.executable, "-m", "auditstream.cli", "serve", "--model", model],
                                env=serve_env(settings), stdout=f, stderr=subprocess.STDOUT)


def step_through(settings: Settings, producer, reader, req: InferenceRequest, timeout_s: float = 60.0) -> Action:
    producer.send(settings.request_topic("stacked"), req.key, req.to_bytes())
    producer.flush(10)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for r in reader.poll(100, 100):
            action = Action.from_bytes(r.value)
            if action.request_id == req.request_id:
                return action
    raise AssertionError(f"no action for {req.request_id} within {timeout_s} s")


@pytest.mark.kafka
@pytest.mark.slow
def test_sigkill_mid_episode_successor_continues_the_episode(broker: Settings, tmp_path: Path) -> None:
    from auditstream.kafka import ensure_model_topics, make_producer, make_reader, read_to_end
    from auditstream.tasks import lookup

    model = frame_policy(tmp_path, threshold=0.0)  # every decision AUTO: each step yields an action
    settings = dataclasses.replace(broker, topic_prefix=f"ep{os.getpid()}x{int(time.time())}",
                                   models_dir=tmp_path / "models", state_dir=tmp_path / "state")
    ensure_model_topics(settings, ["stacked"])
    rng = np.random.default_rng(1)
    obs = [rng.normal(0, 1, D).astype(np.float32) for _ in range(10)]
    reader = make_reader(settings, [settings.topic(T.ACTIONS)], from_beginning=False)
    producer = make_producer(settings)
    first = start_serve(settings, "stacked", tmp_path / "a.log")
    second = None
    try:
        actions = [step_through(settings, producer, reader, request(s, obs[s])) for s in range(6)]
        time.sleep(1.5)  # the quiet stream checkpoints: state and offsets of step 5 are written
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        second = start_serve(settings, "stacked", tmp_path / "b.log")
        actions += [step_through(settings, producer, reader, request(s, obs[s])) for s in range(6, 10)]
        producer.send(settings.request_topic("stacked"), b"ep-1", request(10, obs[9], end=True).to_bytes())
        producer.flush(10)
        time.sleep(1.5)
    finally:
        producer.close()
        reader.close()
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(30)
    log_b = (tmp_path / "b.log").read_text()
    assert "restored 1 episodes" in log_b, log_b[-2000:]
    card = model.card
    session = load_session(model)
    for s, action in enumerate(actions):
        assert action.step == s and action.route != Route.HUMAN
        assert action.details["episode"] == {"steps_seen": s + 1, "previous_action": actions[s - 1].action if s else None}
        # the stacked input after the takeover holds the frames seen by the killed consumer
        stack = expected_stack(obs, s)[None]
        out = session.run(stack)
        want = lookup(card.task).postprocess(card, out)[0].details["action_probs"]
        assert action.details["action_probs"] == want
    state = [r for r in read_to_end(settings, [settings.episode_state_topic(model.card.name)]) if r.key == b"ep-1"]
    assert state and state[-1].value is None  # the episode's end left a tombstone


def test_a_failed_restore_stops_the_consumer_instead_of_resetting_episodes(tmp_path: Path) -> None:
    def broken() -> list[Record]:
        raise ConnectionError("broker gone")

    store = EpisodeStore(frame_policy(tmp_path).card, "s", load_states=broken)
    store.restore([("t.requests.stacked", 3)])  # inside a rebalance callback: must not raise there
    with pytest.raises(EpisodeStateNotRestored, match="not restored"):
        store.observe(request(0, np.zeros(D)), np.zeros(D, np.float32), 3)
