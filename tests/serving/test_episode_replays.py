"""A policy consumer's episodes across batches, replays and restores (serving/episodes.py,
serving/consumer.py), each case one the reviewer reproduced on the old code:

* a failed restore stopped nothing: every record was dead-lettered as processing_failed, and the
  error outlived a later successful restore;
* two policy models shared one state topic and adopted (and tombstoned) each other's episodes;
* with frame_stack k >= 2, the replay of a step other than the newest (a crash between the
  state's flush and the commit replays the whole checkpoint window) was stacked with padding;
* two steps of one episode in one batch logged the wrong context (previous_action None, or
  ``{}`` for a step batched with its episode's end);
* a frame whose shape changed mid-episode (a dynamic dimension, k > 1) failed np.stack: a
  processing_failed dead letter at every step until the idle expiry;
* each checkpoint scanned every live episode for the idle expiry.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tests.serving.tiny_policy import policy_card, publish_policy

from auditstream.errors import BatchFailed, DecodeError, EpisodeStateNotRestored
from auditstream.kafka import Record
from auditstream.registry import ModelRegistry, TensorSpec
from auditstream.settings import Settings
from auditstream.stream import BatchingConfig, LoopHooks, StreamLoop
from auditstream.wire import DeadLetter, InferenceRequest, Prediction, Reason
from serving.consumer import ServeConfig, process_batch
from serving.episodes import DEFAULT_REPLAY_WINDOW, EpisodeState, EpisodeStore
from serving.runtime import load_session

K, D = 3, 4  # frames stacked, observation width
PARTITION = 0


def stacked_policy(tmp_path: Path, name: str = "pol", k: int = K):
    weights = np.random.default_rng(3).standard_normal((k * D, 2)).astype(np.float32)
    return publish_policy(ModelRegistry(tmp_path / "models"), name, weights, frame_stack=k, threshold=0.0)


def config_for(model) -> ServeConfig:
    return ServeConfig.from_settings(Settings(topic_prefix="t", qc_rate=0.0), model.card)


def req(step: int, obs: np.ndarray, key: str = "ep-1", model: str = "pol", end: bool = False) -> InferenceRequest:
    return InferenceRequest(f"{key}-s{step}" + ("-end" if end else ""), model, obs, 1.0e9, key, step, episode_end=end)


def rec(r: InferenceRequest, offset: int, topic: str = "t.requests.pol") -> Record:
    return Record(topic, PARTITION, offset, r.key, r.to_bytes())


def details(result) -> dict:
    return Prediction.from_bytes(result.outputs[0].value).details


class StateTopic:
    """A compacted state topic in memory: what checkpoints wrote, read back by a restore."""

    def __init__(self, name: str) -> None:
        self.name, self.log = name, []

    def load(self) -> list[Record]:
        return [Record(self.name, 0, i, k, v) for i, (k, v) in enumerate(self.log)]

    def flush(self, store: EpisodeStore) -> None:
        self.log += [(o.key, o.value) for o in store.checkpoint_outputs() if o.topic == self.name]


# -- a failed restore stops the consumer


def broken() -> list[Record]:
    raise ConnectionError("broker gone")


def test_a_failed_restore_raises_out_of_the_batch_before_any_record(tmp_path: Path) -> None:
    model = stacked_policy(tmp_path)
    store = EpisodeStore(model.card, "t.episode-state.pol", load_states=broken)
    store.restore([("t.requests.pol", PARTITION)])  # inside a rebalance callback: kept, not raised there
    obs = np.zeros(D, np.float32)
    records = [rec(req(s, obs), s) for s in range(3)] + [rec(req(3, obs, end=True), 3)]
    with pytest.raises(EpisodeStateNotRestored, match="episode state was not restored.*broker gone"):
        process_batch(records, load_session(model), config_for(model), 1.0e9, store)
    assert store.states == {} and store.checkpoint_outputs() == []  # nothing observed, nothing to write
    with pytest.raises(EpisodeStateNotRestored):  # also raised by the store itself, never a record's failure
        store.observe(req(0, obs), obs, PARTITION)


def test_the_loop_stops_on_a_failed_restore_and_commits_nothing_past_it(tmp_path: Path) -> None:
    """The consumer's loop: a batch after the failed restore raises BatchFailed (the process
    exits non-zero); the batch before it was committed, nothing after."""
    model = stacked_policy(tmp_path)
    store = EpisodeStore(model.card, "t.episode-state.pol", load_states=lambda: [])
    session, config = load_session(model), config_for(model)
    obs = np.zeros(D, np.float32)

    class Consumer:
        def __init__(self) -> None:
            self.polls, self.commits = 0, []

        def poll(self, max_records: int, timeout_ms: int) -> list[Record]:
            self.polls += 1
            if self.polls > 5:  # (a loop that did not stop: end the test)
                loop.stop()
            if self.polls == 2:  # a rebalance inside poll: this restore fails
                store.load_states = broken
                store.restore([("t.requests.pol", PARTITION)])
            return [rec(req(self.polls - 1, obs), self.polls - 1)]

        def assignment(self) -> list:
            return [("t.requests.pol", PARTITION)]

        def commit(self, offsets: dict) -> None:
            self.commits.append(dict(offsets))

        def close(self) -> None:
            pass

    class Producer:
        def send(self, *a, **k) -> None:
            pass

        def flush(self, timeout_s: float) -> None:
            pass

        def close(self) -> None:
            pass

    consumer = Consumer()
    loop = StreamLoop(consumer, Producer(), lambda records: [r.outputs for r in process_batch(
        records, session, config, 1.0e9, store)], BatchingConfig(max_batch_size=1, max_in_flight_batches=1),
        hooks=LoopHooks(before_checkpoint=store.checkpoint_outputs))
    with pytest.raises(BatchFailed, match="episode state was not restored") as stopped:
        loop.run()
    assert isinstance(stopped.value.__cause__, EpisodeStateNotRestored)
    assert consumer.commits == [{("t.requests.pol", PARTITION): 1}]  # step 0's batch only


def test_a_successful_restore_of_the_same_partitions_or_their_revocation_clears_the_failure(tmp_path: Path) -> None:
    store = EpisodeStore(stacked_policy(tmp_path).card, "t.episode-state.pol", load_states=broken)
    store.restore([("t.requests.pol", 0), ("t.requests.pol", 1)])
    store.load_states = lambda: []
    store.restore([("t.requests.pol", 2)])  # another partition restored: 0 and 1 still have no state
    with pytest.raises(EpisodeStateNotRestored, match=r"partitions \[0, 1\]"):
        store.check_restored()
    store.restore([("t.requests.pol", 0)])  # 0 restored now
    with pytest.raises(EpisodeStateNotRestored, match=r"partitions \[1\]"):
        store.check_restored()
    store.forget([("t.requests.pol", 1)])  # 1 revoked: another consumer's to restore
    store.check_restored()
    assert store.restore_error is None


# -- one state topic per policy model


def test_each_policy_model_keeps_its_episodes_on_its_own_state_topic(tmp_path: Path) -> None:
    """The reviewer's case: B's episode ep-7, then A (another model) restarts and a client of A
    uses the same episode key and ends it. B's episode survives A's tombstone."""
    settings = Settings(topic_prefix="t")
    a, b = stacked_policy(tmp_path, "pol-a"), stacked_policy(tmp_path, "pol-b")
    topic_a, topic_b = (StateTopic(settings.episode_state_topic(m)) for m in ("pol-a", "pol-b"))
    assert (topic_a.name, topic_b.name) == ("t.episode-state.pol-a", "t.episode-state.pol-b")
    obs = [np.full(D, s, np.float32) for s in range(6)]
    sb = EpisodeStore(b.card, topic_b.name, load_states=topic_b.load)
    first = process_batch([rec(req(s, obs[s], "ep-7", "pol-b"), s, "t.requests.pol-b") for s in range(5)],
                          load_session(b), config_for(b), 1.0e9, sb)
    topic_b.flush(sb)
    sa = EpisodeStore(a.card, topic_a.name, load_states=topic_a.load)
    sa.restore([("t.requests.pol-a", PARTITION)])
    assert sa.states == {}  # nothing of B's
    process_batch([rec(req(0, obs[0], "ep-7", "pol-a", end=True), 0, "t.requests.pol-a")],
                  load_session(a), config_for(a), 1.0e9, sa)
    topic_a.flush(sa)
    assert topic_a.log == [(b"ep-7", None)] and all(v is not None for _, v in topic_b.log)
    sb2 = EpisodeStore(b.card, topic_b.name, load_states=topic_b.load)
    sb2.restore([("t.requests.pol-b", PARTITION)])
    (again,) = process_batch([rec(req(4, obs[4], "ep-7", "pol-b"), 4, "t.requests.pol-b"),
                              rec(req(5, obs[5], "ep-7", "pol-b"), 5, "t.requests.pol-b")],
                             load_session(b), config_for(b), 1.0e9, sb2)[1:]
    previous = Prediction.from_bytes(first[4].outputs[0].value).output
    assert details(again)["episode"] == {"steps_seen": 6, "previous_action": previous}
    # and should a state topic hold another model's record anyway, restore skips and counts it
    stray = EpisodeStore(a.card, topic_b.name, load_states=topic_b.load)
    stray.restore([("t.requests.pol-b", PARTITION)])
    assert stray.states == {} and stray.skipped == 1 and stray.restored == 0


# -- replays of any step of the checkpoint window


@pytest.mark.parametrize("k", [1, 2, K, 5])
@pytest.mark.parametrize("window", [1, DEFAULT_REPLAY_WINDOW, 4])
def test_every_step_a_crash_can_replay_is_answered_as_the_first_time(tmp_path: Path, k: int, window: int) -> None:
    """Steps 0-5 committed, then ``window`` batches of one step each flushed but not committed
    (a driver that waits for each action); after a crash the successor restores the state and
    the window comes back: every answer (action_probs, action, context) is the first one's."""
    model = stacked_policy(tmp_path, k=k)
    session, config = load_session(model), config_for(model)
    obs = [np.random.default_rng(s).normal(0, 1, D).astype(np.float32) for s in range(6 + window)]
    records = [rec(req(s, obs[s]), s) for s in range(6 + window)]
    topic = StateTopic("t.episode-state.pol")
    first = EpisodeStore(model.card, topic.name, load_states=topic.load, replay_window=window)
    answers = [process_batch([r], session, config, 1.0e9, first)[0] for r in records[:6]]
    topic.flush(first)
    answers += [process_batch([r], session, config, 1.0e9, first)[0] for r in records[6:]]
    topic.flush(first)  # ... and the consumer dies before the commit
    second = EpisodeStore(model.card, topic.name, load_states=topic.load, replay_window=window)
    second.restore([("t.requests.pol", PARTITION)])
    assert len(second.states["ep-1"].frames) == min(6 + window, max(k, 2) - 1 + window)
    replayed = process_batch(records[6:], session, config, 1.0e9, second)
    for s, (was, now) in enumerate(zip(answers[6:], replayed), start=6):
        assert [(o.topic, o.value) for o in now.outputs] == [(o.topic, o.value) for o in was.outputs], s
    assert second.restarted == 0 and second.states["ep-1"].next_step == 6 + window


# -- the context of steps batched together


def test_steps_of_one_episode_in_one_batch_log_the_context_they_log_alone(tmp_path: Path) -> None:
    model = stacked_policy(tmp_path, k=1)
    session, config = load_session(model), config_for(model)
    obs = [np.random.default_rng(s).normal(0, 0.1, D).astype(np.float32) for s in range(8)]
    records = [rec(req(s, obs[s]), s) for s in range(8)]
    alone = EpisodeStore(model.card, None)
    one_by_one = [details(process_batch([r], session, config, 1.0e9, alone)[0])["episode"] for r in records]
    for batch in ([0, 1, 2], [3, 4, 5, 6, 7]), ([0], [1, 2, 3, 4, 5, 6, 7]), ([0, 1, 2, 3, 4, 5, 6, 7],):
        store = EpisodeStore(model.card, None)
        together = [details(r)["episode"] for part in batch
                    for r in process_batch([records[i] for i in part], session, config, 1.0e9, store)]
        assert together == one_by_one, batch
    assert [c["previous_action"] is None for c in one_by_one] == [True] + [False] * 7


def test_a_step_batched_with_its_episodes_end_logs_its_context(tmp_path: Path) -> None:
    model = stacked_policy(tmp_path)
    session, config = load_session(model), config_for(model)
    obs = [np.full(D, s, np.float32) for s in range(6)]
    store = EpisodeStore(model.card, "t.episode-state.pol")
    earlier = process_batch([rec(req(s, obs[s]), s) for s in range(5)], session, config, 1.0e9, store)
    store.checkpoint_outputs()
    last, end = process_batch([rec(req(5, obs[5]), 5), rec(req(6, obs[5], end=True), 6)],
                              session, config, 1.0e9, store)
    previous = Prediction.from_bytes(earlier[4].outputs[0].value).output
    assert details(last)["episode"] == {"steps_seen": 6, "previous_action": previous}
    assert end.outputs == [] and [(o.key, o.value) for o in store.checkpoint_outputs()] == [(b"ep-1", None)]


def test_steps_of_other_shapes_in_one_batch_are_still_decided_in_record_order() -> None:
    """Inference groups a batch by input shape; the answers are decided in record order, so a
    step's previous action is its previous step's even when that step's input was grouped later."""
    card = policy_card("dyn", D)  # frame_stack 1, a dynamic frame width
    card.inputs[0] = TensorSpec("obs", "float32", [None, None])
    store = EpisodeStore(card, None)

    class Runner:  # any width: the probabilities of a fixed two-action policy
        def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
            return {"action_probs": np.tile(np.array([[0.25, 0.75]], np.float32), (len(batch), 1)),
                    "value": np.zeros(len(batch), np.float32)}

    config = ServeConfig.from_settings(Settings(topic_prefix="t", qc_rate=0.0), card)
    widths = [5, 4, 5, 4]  # step 1's width first appears after step 0's: grouped second
    records = [Record("t.requests.dyn", 0, s, b"ep", InferenceRequest(f"s{s}", "dyn", np.zeros(w, np.float32), 1e9,
                                                                      "ep", s).to_bytes())
               for s, w in enumerate(widths)]
    results = process_batch(records, Runner(), config, 1.0e9, store)
    outputs = [Prediction.from_bytes(r.outputs[0].value) for r in results]
    assert [p.details["episode"]["previous_action"] for p in outputs] == [None] + [p.output for p in outputs[:-1]]


# -- a frame that changes shape mid-episode


def dynamic_card(k: int = K):
    card = policy_card("dyn", 4, frame_stack=k)
    card.inputs[0] = TensorSpec("obs", "float32", [None, k, None])
    return card


def test_a_frame_of_another_shape_mid_episode_is_bad_input_and_the_state_stays() -> None:
    store = EpisodeStore(dynamic_card(), "t.episode-state.dyn")
    step = lambda s, w: InferenceRequest(f"s{s}", "dyn", np.zeros(w, np.float32), 1e9, "ep", s)  # noqa: E731
    for s in range(2):
        assert store.observe(step(s, 4), np.zeros(4, np.float32), 0).input.shape == (K, 4)
    before = store.states["ep"].to_bytes()
    for s in (2, 2, 3):  # the driver insists: refused each time, nothing moves
        with pytest.raises(DecodeError) as refused:
            store.observe(step(s, 5), np.zeros(5, np.float32), 0)
        assert refused.value.code == Reason.BAD_INPUT.value and "must have one shape" in refused.value.detail
        assert store.states["ep"].to_bytes() == before
    assert store.observe(step(2, 4), np.zeros(4, np.float32), 0).input.shape == (K, 4)  # its frames go on
    assert store.observe(step(0, 5), np.zeros(5, np.float32), 0).input.shape == (K, 5)  # a restart from step 0
    assert store.observe(step(0, 5), np.zeros(5, np.float32), 0).input.shape == (K, 5)  # (its replay)
    other = EpisodeStore(dynamic_card(k=1), None)  # k = 1 stacks nothing: any shape, any step
    other.observe(step(0, 4), np.zeros(4, np.float32), 0)
    assert other.observe(step(1, 5), np.zeros(5, np.float32), 0).input.shape == (5,)


def test_process_batch_dead_letters_a_reshaped_frame_with_its_bytes(tmp_path: Path) -> None:
    card = dynamic_card()
    store = EpisodeStore(card, None)

    class Runner:
        def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
            return {"action_probs": np.tile(np.array([[0.5, 0.5]], np.float32), (len(batch), 1)),
                    "value": np.zeros(len(batch), np.float32)}

    config = ServeConfig.from_settings(Settings(topic_prefix="t", qc_rate=0.0), card)
    records = [Record("t.requests.dyn", 0, s, b"ep", InferenceRequest(f"s{s}", "dyn", np.zeros(w, np.float32), 1e9,
                                                                      "ep", s).to_bytes())
               for s, w in enumerate([4, 4, 5, 5])]
    results = process_batch(records, Runner(), config, 1.0e9, store)
    assert [r.dead_letter_reason for r in results] == [None, None, Reason.BAD_INPUT.value, Reason.BAD_INPUT.value]
    assert DeadLetter.from_bytes(results[2].outputs[0].value).value == records[2].value
    assert store.states["ep"].next_step == 2


def test_restore_skips_a_stacked_state_whose_frames_differ_in_shape() -> None:
    card = dynamic_card()
    mixed = EpisodeState("ep", 0, 2, 2, 0, [[0, np.zeros(4, np.float32), 0], [1, np.zeros(5, np.float32), 0]], 1e9,
                         model="dyn")
    store = EpisodeStore(card, "t", load_states=lambda: [Record("t", 0, 0, b"ep", mixed.to_bytes())],
                         clock=lambda: 1e9)
    store.restore([("t.requests.dyn", 0)])
    assert store.states == {} and store.skipped == 1


# -- the idle expiry costs what expires, not what lives


class CountingStates(dict):
    """``states`` that counts the entries a scan of it visits."""

    visited = 0

    def items(self):
        for item in super().items():
            self.visited += 1
            yield item


def test_a_checkpoint_visits_only_the_expired_episodes_and_the_first_live_one(tmp_path: Path) -> None:
    now = [1000.0]
    store = EpisodeStore(stacked_policy(tmp_path).card, "t.episode-state.pol", ttl_s=60.0, clock=lambda: now[0])
    zero = np.zeros(D, np.float32)
    for i in range(1000):  # least recently stepped first, as observe keeps them
        now[0] = 1000.0 + i / 100
        store.observe(req(0, zero, key=f"ep-{i}"), zero, PARTITION)
    store.checkpoint_outputs()
    store.states = CountingStates(store.states)
    now[0] = 1030.0  # nothing idle for 60 s
    store.checkpoint_outputs()
    assert store.states.visited <= 1 and len(store.states) == 1000
    store.states.visited = 0
    now[0] = 1060.995  # ep-0 .. ep-99 idle for over 60 s
    ended = [o.key for o in store.checkpoint_outputs() if o.value is None]
    assert ended == sorted(f"ep-{i}".encode() for i in range(100))
    assert store.states.visited <= 101 and len(store.states) == 900


def test_an_adopted_state_never_expires_sooner_than_ttl_s(tmp_path: Path) -> None:
    """An adopted state's time is its writer's clock: the scan from the front may leave one idle
    episode behind a more recent one for a while, never drop one before ttl_s."""
    card = stacked_policy(tmp_path).card
    states = [EpisodeState(k, PARTITION, 1, 1, 0, [], updated_at_s=t, model="pol")
              for k, t in (("a", 10.0), ("b", 50.0))]
    now = [60.0]
    store = EpisodeStore(card, "t", load_states=lambda: [Record("t", 0, i, s.episode_key.encode(), s.to_bytes())
                                                         for i, s in enumerate(states)],
                         ttl_s=30.0, clock=lambda: now[0])
    store.restore([("t.requests.pol", PARTITION)])
    zero = np.zeros(D, np.float32)
    store.observe(req(0, zero, key="c"), zero, PARTITION)
    ended = [o.key for o in store.checkpoint_outputs() if o.value is None]
    assert ended == [b"a"] and set(store.states) == {"b", "c"}
    now[0] = 81.0
    assert [o.key for o in store.checkpoint_outputs() if o.value is None] == [b"b"]


def test_the_replay_window_is_bounded(tmp_path: Path) -> None:
    card = stacked_policy(tmp_path).card
    assert EpisodeStore(card, None).keep == max(K, 2) - 1 + DEFAULT_REPLAY_WINDOW
    for bad in (0, -1, 1001, 2.0, True):
        with pytest.raises(ValueError, match="replay_window"):
            EpisodeStore(card, None, replay_window=bad)


def test_a_state_written_with_a_larger_window_is_adopted_with_the_frames_this_one_keeps(tmp_path: Path) -> None:
    card = stacked_policy(tmp_path).card
    frames = [[s, np.full(D, s, np.float32), 0] for s in range(10)]
    state = EpisodeState("ep-1", PARTITION, 10, 10, 0, frames, 1e9, model="pol")
    store = EpisodeStore(card, "t", load_states=lambda: [Record("t", 0, 0, b"ep-1", state.to_bytes())],
                         clock=lambda: 1e9)
    store.restore([("t.requests.pol", PARTITION)])
    assert [f[0] for f in store.states["ep-1"].frames] == list(range(10 - store.keep, 10))

