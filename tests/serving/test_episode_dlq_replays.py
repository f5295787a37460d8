"""A dead letter of an episode step sent back by ``auditstream dlq replay`` (serving/episodes.py,
serving/consumer.py, serving/dlq.py).

Before, such a step below its episode's next step and older than its kept frames was taken for
the driver's own step: the episode went on from it (``_restart``). The reviewer's cases, both
here on the old code: (a) the ``inference_failed`` letter of step 5 replayed at step 50 made the
real step 51 stack frames [5, 5, 51] with ``steps_seen`` 7 and no previous action; (b) at a step
more than ``max_step_gap`` ahead it made every later real step a ``bad_schema`` dead letter
("more than max_step_gap past the next step 6"), freezing the episode until its idle expiry.
Now ``dlq replay`` marks what it sends (``auditstream-replay-of``) and the store refuses such a
replayed stale step, the state as it was; a driver's own lower step still restarts the episode.
"""

from __future__ import annotations

import numpy as np
import pytest

from auditstream.errors import DecodeError
from auditstream.kafka import Record
from auditstream.settings import Settings
from auditstream.wire import REPLAY_OF_HEADER, DeadLetter, InferenceRequest, Prediction, Reason, replay_of
from serving.consumer import ServeConfig, process_batch
from serving.dlq import ReplayReport, plan_replay
from serving.episodes import EpisodeStore
from tests.serving.tiny_policy import policy_card

K, D, KEY, PARTITION = 3, 4, "ep", 0
LETTER = "t.dead-letter[0]@17"


def store(**kwargs) -> EpisodeStore:
    return EpisodeStore(policy_card("stacked", K * D, frame_stack=K), "t.episode-state.stacked", **kwargs)


def obs(step: int) -> np.ndarray:
    return np.full(D, float(step), np.float32)


def request(step: int) -> InferenceRequest:
    return InferenceRequest(f"{KEY}-s{step}", "stacked", obs(step), 1.0e9, KEY, step)


def run(episodes: EpisodeStore, steps, replay: str | None = None) -> list:
    """Observe and decide ``steps`` (action = step % 2); the contexts logged."""
    contexts = []
    for s in steps:
        stacked = episodes.observe(request(s), obs(s), PARTITION, replay_of=replay)
        contexts.append((stacked, episodes.decided(stacked, s % 2)))
    return contexts


def stack_of(stacked) -> list[float]:
    return stacked.input.reshape(K, D)[:, 0].tolist()


def test_a_replayed_stale_step_is_refused_and_the_next_real_steps_stack_as_before() -> None:
    """(a): step 5's dead letter replayed at step 50."""
    episodes = store()
    run(episodes, range(51))
    before = episodes.states[KEY].to_bytes()
    with pytest.raises(DecodeError) as refused:
        episodes.observe(request(5), obs(5), PARTITION, replay_of=LETTER)
    assert refused.value.code == Reason.BAD_SCHEMA.value
    detail = refused.value.detail
    for said in ("step 5 is replayed", LETTER, "moved on to step 51", "cannot be answered again as it was",
                 "driver's later steps were answered"):
        assert said in detail, detail
    assert episodes.states[KEY].to_bytes() == before and episodes.stale_replays == 1 and episodes.restarted == 0
    [(stacked, context)] = run(episodes, [51])
    assert stack_of(stacked) == [49.0, 50.0, 51.0]  # the old code: [5.0, 5.0, 51.0]
    assert context == {"steps_seen": 52, "previous_action": 0}  # the old code: 7, None


def test_a_replayed_stale_step_does_not_freeze_an_episode_past_max_step_gap() -> None:
    """(b): the episode at step 12,000; a replayed step 5 made every later real step bad_schema."""
    episodes = store()
    run(episodes, range(11_990, 12_001))
    before = episodes.states[KEY].to_bytes()
    with pytest.raises(DecodeError):
        episodes.observe(request(5), obs(5), PARTITION, replay_of=LETTER)
    assert episodes.states[KEY].to_bytes() == before
    contexts = run(episodes, range(12_001, 12_004))  # the old code: each refused, "past the next step 6"
    assert [stack_of(s) for s, _ in contexts][-1] == [12_001.0, 12_002.0, 12_003.0]
    assert [c["steps_seen"] for _, c in contexts] == [12, 13, 14]  # 11 steps, then these
    assert episodes.states[KEY].next_step == 12_004


def test_a_drivers_own_lower_step_still_restarts_the_episode() -> None:
    """No replay header: a driver that restarts its key (env.reset(), step 0) goes on from it."""
    episodes = store()
    run(episodes, range(51))
    contexts = run(episodes, [0, 1, 2])
    assert episodes.restarted == 1 and episodes.stale_replays == 0
    assert stack_of(contexts[0][0]) == [0.0, 0.0, 0.0] and stack_of(contexts[-1][0]) == [0.0, 1.0, 2.0]
    assert episodes.states[KEY].next_step == 3 and contexts[0][1]["previous_action"] is None


def test_other_replayed_steps_are_served_as_before() -> None:
    episodes = store()
    run(episodes, range(10))
    first = run(episodes, [9])[0]  # a step the state holds (a replay in any case): from the kept frames
    again = run(episodes, [9], replay=LETTER)[0]
    assert stack_of(again[0]) == stack_of(first[0]) == [7.0, 8.0, 9.0] and again[1] == first[1]
    assert episodes.states[KEY].next_step == 10
    later = run(episodes, [10, 11], replay=LETTER)  # at or past the next step: the episode's next steps
    assert stack_of(later[-1][0]) == [9.0, 10.0, 11.0] and episodes.states[KEY].next_step == 12
    fresh = store()  # an episode this consumer holds no state of: started from the replayed step
    assert stack_of(run(fresh, [5], replay=LETTER)[0][0]) == [5.0, 5.0, 5.0]
    assert fresh.states[KEY].next_step == 6 and fresh.stale_replays == 0


def test_replay_of_reads_the_header() -> None:
    assert replay_of(()) is None and replay_of([("h", b"1")]) is None
    assert replay_of([("h", b"1"), (REPLAY_OF_HEADER, LETTER.encode())]) == LETTER
    assert replay_of([(REPLAY_OF_HEADER, None)]) == "?"  # a null value still marks a replay


class Runner:
    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return {"action_probs": np.tile(np.array([[0.5, 0.5]], np.float32), (len(batch), 1)),
                "value": np.zeros(len(batch), np.float32)}


def test_dlq_replay_of_a_stale_step_through_process_batch_is_dead_lettered_with_its_bytes() -> None:
    """End to end without a broker: the letter of step 5, planned by dlq replay, reaches the
    consumer with its header; it is dead-lettered again (original bytes, headers as sent) and the
    next real step is stacked with the driver's frames."""
    card = policy_card("stacked", K * D, frame_stack=K)
    episodes, config = EpisodeStore(card, None), ServeConfig.from_settings(Settings(topic_prefix="t", qc_rate=0.0), card)

    def record(step: int, offset: int, headers=()) -> Record:
        r = request(step)
        return Record("t.requests.stacked", PARTITION, offset, r.key, r.to_bytes(), tuple(headers))

    original = record(5, 5, [("trace", b"abc")])
    letter = Record("t.dead-letter", 0, 17, original.key,
                    DeadLetter("inference_failed", "x", original.topic, PARTITION, 5, original.value, original.key,
                               original.headers, 1.0).to_bytes())
    [(_, sent)] = plan_replay([letter], Settings(topic_prefix="t"), None, set(), ReplayReport())
    process_batch([record(s, s) for s in range(51)], Runner(), config, 1.0e9, episodes)
    replayed = Record(sent.topic, PARTITION, 100, sent.key, sent.value, sent.headers)
    results = process_batch([replayed, record(51, 101)], Runner(), config, 1.0e9, episodes)
    assert [r.dead_letter_reason for r in results] == [Reason.BAD_SCHEMA.value, None]
    again = DeadLetter.from_bytes(results[0].outputs[0].value)
    assert again.value == original.value and again.headers == (("trace", b"abc"), (REPLAY_OF_HEADER, LETTER.encode()))
    assert "moved on to step 51" in again.detail
    assert Prediction.from_bytes(results[1].outputs[0].value).details["episode"]["steps_seen"] == 52
