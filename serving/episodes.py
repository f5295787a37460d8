"""Per-episode state of a policy consumer, and its compacted ``episode-state`` topic.

Requests of an episode carry ``episode_key`` and ``step`` and are keyed by the episode, so one
consumer of the group sees all of an episode's steps, in order. That consumer keeps, per episode:
how many steps it has seen, the last action, and the last observations with their actions (the
frame stack, when the policy card asks for one: ``preprocessing.frame_stack = k``).

Durability follows the checkpoint order of :mod:`auditstream.stream`: the loop's
``before_checkpoint`` hook returns one snapshot per episode changed since the last checkpoint
(key = episode key) and a tombstone per episode that ended (or sat idle past ``ttl_s``); they are
produced and acknowledged together with the batch outputs, *before* the offsets are committed.
So the state on the topic is never behind the committed offsets; it can be ahead by the last
checkpoint when a consumer dies between the flush and the commit, and the steps then
redelivered are recognised as replays (their step is below the state's next step) and answered
from the kept frames without moving the state. A driver that waits for each action before
sending the next step (``auditstream rl run``) never has more than one step of an episode in
flight, which the ``max(k, 2)`` kept frames cover.

**Step numbers are bounded.** A request's step must be an integer >= 0 and at most
``max_step_gap`` (default :data:`MAX_STEP_GAP`) past the episode's next step (0 for an episode
not seen yet). Anything else -- a negative, a bool, a float, 2**62 -- is that record's
``bad_schema`` dead letter (with its original bytes, like every refused request) and the state
does not move: one hostile step number would otherwise set ``next_step`` so high that every
later real step looked like a replay and the episode froze. A legitimate jump happens only when
an episode's state was lost (a state record refused at restore, an idle episode expired) and
the driver goes on at its current step; one within the bound is accepted as before.

On assignment (:meth:`EpisodeStore.restore`) the consumer reads the state topic from the
beginning to its end (it is compacted, so it holds about one record per live episode), keeps
the last record of each key, and adopts the episodes whose recorded request partition it now
owns. A record it cannot serve from (one that does not decode, a field out of range, a frame
that does not fit the model) is skipped, logged and counted, and that episode starts afresh: the
compacted topic keeps such a record, so raising on it would stop every restart of the consumer.
On revocation it forgets its episodes (the loop has checkpointed them just before).

Frame stack layout: the graph input is ``[B, k, *frame]`` (frames oldest first), or, for a flat
``[B, k * D]`` input, the k frames concatenated. Before an episode has k observations the first
one is repeated (as Gymnasium's FrameStack does at reset).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from auditstream.errors import DecodeError
from auditstream.kafka import Record, TopicPartition
from auditstream.registry import ModelCard, TensorSpec
from auditstream.stream import Output
from auditstream.wire import InferenceRequest, Reason, decode_tensor, encode_tensor
from auditstream.wire.codec import id_field, number_field, short_repr, strict_loads, typed_field

log = logging.getLogger(__name__)

# Read with the wire's strict JSON (strict_loads), which also requires "v" to be the wire version: a
# new state version needs a check of its own in EpisodeState.from_bytes.
STATE_VERSION = 1
_STATE_FIELDS = ("episode_key", "partition", "next_step", "steps_seen", "last_action", "frames", "updated_at_s")
DEFAULT_TTL_S = 3600.0  # an episode nobody stepped for an hour was abandoned (its driver died)
# How far past an episode's next step a request's step may be. A driver steps in order, so only a
# lost state (refused at restore, expired) makes a jump, to the step the episode had reached.
MAX_STEP_GAP = 10_000


def frame_stack(card: ModelCard) -> int:
    k = card.preprocessing.get("frame_stack", 1)
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"model {card.name}: preprocessing.frame_stack={k!r} must be an integer >= 1")
    return k


def frame_spec(card: ModelCard) -> TensorSpec:
    """The spec of one request's observation: the graph input without its stack axis."""
    spec, k = card.inputs[0], frame_stack(card)
    if k == 1:
        return spec
    if len(spec.shape) >= 3 and spec.shape[1] == k:
        return TensorSpec(spec.name, spec.dtype, [spec.shape[0]] + spec.shape[2:])
    if len(spec.shape) == 2 and isinstance(spec.shape[1], int) and spec.shape[1] % k == 0:
        return TensorSpec(spec.name, spec.dtype, [spec.shape[0], spec.shape[1] // k])
    raise ValueError(f"model {card.name}: input {spec.shape} has neither a stack axis of {k} after the batch "
                     f"axis nor a flat width divisible by {k}")


@dataclass
class EpisodeState:
    """One episode as its consumer knows it. ``frames``: the last few (step, observation, action)."""

    episode_key: str
    partition: int  # request-topic partition the episode lives on (what restore filters by)
    next_step: int = 0  # 1 + the highest step seen
    steps_seen: int = 0  # distinct steps observed
    last_action: int | None = None
    frames: list[list[Any]] = field(default_factory=list)
    updated_at_s: float = 0.0

    def to_bytes(self) -> bytes:
        return json.dumps({
            "v": STATE_VERSION, "episode_key": self.episode_key, "partition": self.partition,
            "next_step": self.next_step, "steps_seen": self.steps_seen, "last_action": self.last_action,
            "frames": [[s, encode_tensor(obs), a] for s, obs, a in self.frames], "updated_at_s": self.updated_at_s,
        }, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "EpisodeState":
        """Inverse of :meth:`to_bytes`; anything else raises ``ValueError`` saying what is wrong.

        The state topic is compacted, so a bad record stays there: every field is checked (type,
        finiteness, range) so that a state restore adopts is one the consumer can serve from.
        """
        try:
            obj = strict_loads(data)  # bounded size and nesting, no NaN or Infinity, 64-bit integers, "v" 1
            missing = [name for name in _STATE_FIELDS if name not in obj]
            if missing:
                raise ValueError(f"fields {missing} missing")
            next_step, steps_seen = _count(obj, "next_step"), _count(obj, "steps_seen")
            if steps_seen > next_step:
                raise ValueError(f"steps_seen={steps_seen} exceeds next_step={next_step} (steps are distinct)")
            return cls(id_field(obj, "episode_key"), _count(obj, "partition"), next_step, steps_seen,
                       _action(obj["last_action"], "last_action"), _frames(obj["frames"], next_step),
                       number_field(obj, "updated_at_s", low=0.0))  # finite: a NaN or infinite time never expires
        except ValueError as e:  # DecodeError is one
            raise ValueError(f"unreadable episode state: {e}") from None


def _count(obj: dict[str, Any], name: str) -> int:
    value = typed_field(obj, name, int)
    if value < 0:
        raise DecodeError(Reason.BAD_SCHEMA.value, f"field {name!r} = {value} must be >= 0")
    return value


def _action(value: Any, name: str) -> int | None:
    if value is not None and (type(value) is not int or value < 0):
        raise ValueError(f"{name} = {short_repr(value)} must be null or an action index >= 0")
    return value


def _frames(value: Any, next_step: int) -> list[list[Any]]:
    if not isinstance(value, list):
        raise ValueError(f"field 'frames' = {short_repr(value)} must be a list of [step, tensor, action]")
    frames = []
    for i, entry in enumerate(value):
        if not isinstance(entry, list) or len(entry) != 3:
            raise ValueError(f"frames[{i}] = {short_repr(entry)} must be [step, tensor, action]")
        step, tensor, action = entry
        if type(step) is not int or not 0 <= step < next_step:  # every kept frame is of a step seen
            raise ValueError(f"frames[{i}] step {short_repr(step)} must be an integer in [0, next_step={next_step})")
        frames.append([step, decode_tensor(tensor), _action(action, f"frames[{i}] action")])
    return frames


def _checked_step(step: Any, key: str, expected: int, max_gap: int) -> int:
    """``step`` if it is an integer in [0, expected + max_gap]; else DecodeError ``bad_schema``
    (the record is dead-lettered, the episode's state stays as it was)."""
    if type(step) is not int or step < 0:  # bool is not int here, nor is a float
        raise DecodeError(Reason.BAD_SCHEMA.value, f"field 'step' = {short_repr(step)} must be an integer >= 0")
    if step > expected + max_gap:
        raise DecodeError(Reason.BAD_SCHEMA.value,
                          f"field 'step' = {short_repr(step)} is more than max_step_gap={max_gap} past the next "
                          f"step {expected} of episode {short_repr(key)}; a driver sends an episode's steps in order")
    return step


class EpisodeStore:
    """The episodes one consumer owns; plugs into :class:`~auditstream.stream.LoopHooks`.

    ``state_topic=None`` keeps state in memory only (a shadow consumer must not write the live
    consumer's keys). ``load_states()`` returns the state topic's records (from the beginning).
    """

    def __init__(self, card: ModelCard, state_topic: str | None,
                 load_states: Callable[[], list[Record]] | None = None, ttl_s: float = DEFAULT_TTL_S,
                 clock: Callable[[], float] = time.time, max_step_gap: int = MAX_STEP_GAP) -> None:
        if type(max_step_gap) is not int or max_step_gap < 0:
            raise ValueError(f"max_step_gap={max_step_gap!r} must be an integer >= 0")
        self.max_step_gap = max_step_gap
        self.k, self.spec, self.input_spec = frame_stack(card), frame_spec(card), card.inputs[0]
        self.keep = max(self.k, 2)  # frames kept: a stack, and the previous step's action for a replay
        self.state_topic, self.load_states, self.ttl_s, self.clock = state_topic, load_states, ttl_s, clock
        self.states: dict[str, EpisodeState] = {}
        self._dirty: set[str] = set()
        self._ended: set[str] = set()
        self.restored = 0  # episodes adopted from the state topic (for logs and tests)
        self.skipped = 0  # state records refused by restore (each logged with where and why)
        # Kafka clients swallow exceptions of rebalance callbacks; a failed restore is kept and
        # raised by the next observe(), so the consumer stops loudly instead of resetting episodes.
        self._restore_error: Exception | None = None

    # -- the request path (called by serving.consumer.process_batch, in record order)

    def observe(self, request: InferenceRequest, frame: np.ndarray, partition: int) -> np.ndarray:
        """The model input for this step (the frame stack), recording the observation."""
        if self._restore_error is not None:
            raise RuntimeError(f"episode state was not restored: {self._restore_error!r}") from self._restore_error
        key = request.episode_key
        if key is None:
            return self._stack([frame])
        state = self.states.get(key)
        expected = 0 if state is None else state.next_step
        step = expected if request.step is None else _checked_step(request.step, key, expected, self.max_step_gap)
        if state is None:  # only once the step is accepted: a refused record leaves no trace
            state = self.states[key] = EpisodeState(key, partition)
        stacked = self._stack([obs for s, obs, _ in state.frames if s < step][-(self.k - 1):] + [frame]
                              if self.k > 1 else [frame])
        if step >= state.next_step:  # a replay (step below next_step) leaves the state as it is
            state.frames = (state.frames + [[step, frame, None]])[-self.keep:]
            state.steps_seen += 1
            state.next_step, state.partition, state.updated_at_s = step + 1, partition, self.clock()
            self._dirty.add(key)
            self._ended.discard(key)
        return stacked

    def decided(self, request: InferenceRequest, action: int) -> dict[str, Any]:
        """Record the action of a step; returns the episode context logged with the decision."""
        state = self.states.get(request.episode_key or "")
        if state is None:
            return {}
        step = state.next_step - 1 if request.step is None else _checked_step(
            request.step, state.episode_key, state.next_step, self.max_step_gap)
        actions = {s: a for s, _, a in state.frames}
        for entry in state.frames:
            if entry[0] == step and entry[2] is None:
                entry[2] = action
                self._dirty.add(state.episode_key)
        if step == state.next_step - 1:
            state.last_action = action
        # as of this step: a replay of an earlier step reports what the first answer reported
        return {"steps_seen": state.steps_seen - (state.next_step - 1 - step), "previous_action": actions.get(step - 1)}

    def end(self, request: InferenceRequest) -> None:
        """The episode ended: forget it; the next checkpoint writes its tombstone."""
        if request.episode_key is not None:
            self.states.pop(request.episode_key, None)
            self._dirty.discard(request.episode_key)
            self._ended.add(request.episode_key)

    def _stack(self, frames: list[np.ndarray]) -> np.ndarray:
        if self.k == 1:
            return frames[-1]
        frames = [frames[0]] * (self.k - len(frames)) + frames
        if len(self.input_spec.shape) == 2:
            return np.concatenate([f.reshape(-1) for f in frames])
        return np.stack(frames)

    # -- the loop hooks

    def checkpoint_outputs(self, offsets: dict[TopicPartition, int] | None = None) -> list[Output]:
        """Snapshots of changed episodes and tombstones of ended or idle ones (before the commit)."""
        now = self.clock()
        for key in [k for k, s in self.states.items() if k not in self._dirty and now - s.updated_at_s > self.ttl_s]:
            log.info("episode %s idle for %.0f s: dropping its state", key, now - self.states[key].updated_at_s)
            del self.states[key]
            self._ended.add(key)
        dirty, ended, self._dirty, self._ended = self._dirty, self._ended, set(), set()
        if self.state_topic is None:
            return []
        outputs = [Output(self.state_topic, k.encode(), self.states[k].to_bytes()) for k in sorted(dirty)]
        return outputs + [Output(self.state_topic, k.encode(), None) for k in sorted(ended)]

    def restore(self, partitions: list[TopicPartition]) -> None:
        """Adopt the episodes of newly assigned request partitions from the state topic."""
        owned = {p for _, p in partitions}
        if self.load_states is None or not owned:
            return
        latest: dict[bytes, Record] = {}
        try:
            records = self.load_states()
        except Exception as e:  # noqa: BLE001 - raised from observe(), see __init__
            log.error("reading the episode-state topic failed: %r", e)
            self._restore_error = e
            return
        for record in records:
            if record.key is not None:
                latest[record.key] = record  # later records win; a tombstone (value None) deletes
        adopted, now = 0, self.clock()
        for key, record in latest.items():
            if record.value is None or key.decode("utf-8", "replace") in self.states:
                continue
            try:
                state = self._adoptable(key, record.value, now)
            except ValueError as e:
                self._skip(record, str(e))
                continue
            except Exception as e:  # noqa: BLE001 - a case the checks missed is a bug, but this record's only:
                # raising would stop the consumer, and every restart after it (the compacted topic keeps the record)
                log.exception("episode-state record %s: unexpected failure", record.where)
                self._skip(record, repr(e))
                continue
            if state.partition in owned:
                self.states[state.episode_key] = state
                adopted += 1
        self.restored += adopted
        log.info("restored %d episodes for partitions %s", adopted, sorted(owned))

    def _adoptable(self, key: bytes, value: bytes, now: float) -> EpisodeState:
        """The state in ``value``, if this consumer can serve from it; ValueError says why not."""
        state = EpisodeState.from_bytes(value)
        if state.episode_key.encode("utf-8") != key:  # its tombstone would not remove it
            raise ValueError(f"holds episode {short_repr(state.episode_key)} under another key")
        dtype, shape = np.dtype(self.spec.dtype), self.spec.shape[1:]  # what prepare_input makes of a step
        for step, obs, _ in state.frames:
            fits = obs.ndim == len(shape) and all(w in (None, d) for d, w in zip(obs.shape, shape))
            if obs.dtype != dtype or not fits:
                raise ValueError(f"the frame of step {step} is {obs.dtype} {list(obs.shape)}; this model's frames are "
                                 f"{dtype} {shape} (without the batch axis)")
        if state.updated_at_s > now + self.ttl_s:
            raise ValueError(f"updated_at_s={state.updated_at_s} is more than ttl_s={self.ttl_s} ahead of this "
                             f"consumer's clock ({now}): it would not expire")
        return state

    def _skip(self, record: Record, why: str) -> None:
        self.skipped += 1
        log.warning("episode-state record %s (key %s) skipped: %s", record.where, short_repr(record.key), why)

    def forget(self, partitions: list[TopicPartition]) -> None:
        """Partitions were revoked (and checkpointed): their episodes now belong to another consumer."""
        gone = {p for _, p in partitions}
        for key in [k for k, s in self.states.items() if s.partition in gone]:
            del self.states[key]
            self._dirty.discard(key)
