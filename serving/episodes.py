"""Per-episode state of a policy consumer, and its model's compacted ``episode-state.<model>`` topic.

Requests of an episode carry ``episode_key`` and ``step`` (a policy request with an episode key
and no step is its ``bad_schema`` dead letter: a redelivery of it could not be told from the next
step, and was counted twice) and are keyed by the episode, so one consumer of the group sees all
of an episode's steps, in order. That consumer keeps, per episode: how many steps it has seen,
the last action, and the last observations with their actions (the frame stack, when the policy
card asks for one: ``preprocessing.frame_stack = k``).

**One state topic per model** (``Settings.episode_state_topic``): episode keys are any client's
strings, and on one topic shared by every policy model the consumers of two models adopted and
tombstoned each other's episodes. Each record also names its model, and restore skips (and
counts) a record of another model, should one reach the topic anyway.

Durability follows the checkpoint order of :mod:`auditstream.stream`: the loop's
``before_checkpoint`` hook returns one snapshot per episode changed since the last checkpoint
(key = episode key) and a tombstone per episode that ended (or sat idle past ``ttl_s``); they are
produced and acknowledged together with the batch outputs, *before* the offsets are committed.
So the state on the topic is never behind the committed offsets; it can be ahead by the last
checkpoint when a consumer dies between the flush and the commit, and the steps then
redelivered are recognised as replays (steps the state holds: below its next step, among its
kept frames) and answered from the kept frames without moving the state, with the stack, context
and action of their first answer. A driver that waits for each action before sending the next
step (``auditstream rl run``) has at most one step of an episode in each uncommitted batch, so a
crash replays at most ``replay_window`` (the consumer's ``max_in_flight_batches``) steps of it;
the store keeps ``max(k, 2) - 1 + replay_window`` frames: for each of those steps the k - 1
frames its stack holds before it (for k = 1, the step before it, whose action its context logs).

**A step below the next step that the state does not hold** -- older than its kept frames (a
driver with more steps in flight than that, redelivered), or one the state cannot be about (a
restored record of another writer) -- is not a replay: the episode goes on from it, as from a
lost state (no frames before it; its steps seen counted as if consecutive, at least 0 before
it), logged and counted in :attr:`EpisodeStore.restarted`. Taken for a replay, it never moved
the state: one record whose ``next_step`` was far ahead froze its episode -- every real step a
"replay", the frame stack fixed, ``steps_seen`` negative -- until the idle expiry.

**Unless it is a dead letter sent back.** A record ``auditstream dlq replay`` sends carries the
``auditstream-replay-of`` header (:data:`~auditstream.wire.REPLAY_OF_HEADER`; ``observe``'s
``replay_of``): it is no step of a driver, but an old one -- say the ``inference_failed`` letter
of step 5, replayed with the episode at step 50. Such a step below the next step that the state
does not hold is refused: that record's ``bad_schema`` dead letter (its original bytes kept),
saying the episode has moved on, counted in :attr:`EpisodeStore.stale_replays`, and the state
does not move. Going on from it stacked step 5's observation into the driver's step 51 (frames
[5, 5, 51], ``steps_seen`` 7, no previous action: wrong actions, logged for offline evaluation)
and, for an episode more than ``max_step_gap`` ahead, refused every later real step until the
idle expiry. It cannot be answered again as it was (its frames are gone); the driver's later
steps were answered. A replayed step the state holds is answered from the kept frames like any
replay, and one of an episode the consumer holds no state of, or at or past its next step, is
served as the driver's own would be.

**Step numbers are bounded.** A request's step must be an integer from 0 to the wire's
``MAX_STEP`` and, for an episode whose state the consumer holds, at most ``max_step_gap``
(default :data:`MAX_STEP_GAP`) past its next step. Anything else -- a negative, a bool, a float,
2**62, a jump past the bound -- is that record's ``bad_schema`` dead letter (with its original
bytes, like every refused request) and the state does not move: one hostile step number would
otherwise throw away the episode's frames. An episode whose state the consumer does not hold --
new, or its state lost (evicted, expired, ended as too large, a record skipped at restore) --
starts afresh at whatever step its driver has reached: its frames and count start there. (Its
step was once checked against next step 0, so an episode past step 10,000 whose state was lost
could never resume.) A hostile step on an unknown key only starts that key's episode; a real
step below it later goes on from the real step (see above), so nothing freezes.

On assignment (:meth:`EpisodeStore.restore`) the consumer reads the state topic from the
beginning to its end (it is compacted, so it holds about one record per live episode), keeps
the last record of each key, and adopts the episodes whose recorded request partition it now
owns. A record it cannot serve from (one that does not decode, a field out of range, a frame
that does not fit the model, another model's) is skipped, logged and counted, and that episode
starts afresh: the compacted topic keeps such a record, so raising on it would stop every
restart of the consumer. A read of the topic that fails stops the consumer instead: restore
runs inside the client's rebalance callback, so it keeps the error, and the next batch raises
:class:`~auditstream.errors.EpisodeStateNotRestored` before any record (nothing of it is
committed; the process exits non-zero). A later restore of the same partitions that succeeds, or
their revocation, clears it. On revocation it forgets its episodes (the loop has checkpointed
them just before).

**What a state record may hold** (checked at restore, before anything else is made of it):
at most ``max_state_bytes`` bytes (default :data:`MAX_STATE_BYTES`, 8 MiB; the serving app
lowers it to what the state topic takes, ``max.message.bytes``), strict JSON nested at most as
deep as the wire allows, exactly the fields of :data:`_STATE_FIELDS` and ``"v"`` (no others: an
unknown field could carry megabytes nobody reads), 64-bit integers, a finite time, an episode key
of 1 to 256 characters, and at most :data:`MAX_STATE_FRAMES` frames (a
record of more than this consumer keeps -- its writer had a larger replay window -- is adopted
with the newest it keeps), of strictly increasing steps, of one shape when k > 1, the newest ``next_step - 1`` (what the
consumer writes), at most ``steps_seen`` of them, each a tensor of this model's frame dtype and
shape. Anything else is skipped, logged and counted as above. A card whose frames no state
record can hold (a bad ``preprocessing.frame_stack``, an input dtype the wire does not encode)
is refused when the store is made, with :class:`~auditstream.errors.ModelRefused`.

**What the consumer writes obeys the same bound.** A step whose frames would make its episode's
state larger than ``max_state_bytes`` (frames too large for the state topic: a big observation,
or a dynamic frame shape that grew) is refused as that record's ``too_large`` dead letter (its
original bytes kept) and **ends the episode**: its state is dropped and tombstoned at the next
checkpoint, counted in :attr:`EpisodeStore.ended_oversized` and logged, and the episode's next
step starts it afresh (at whatever step it has reached). Writing it would have stopped the
loop (the broker refuses the record, the checkpoint fails, and the same step comes back after
every restart); keeping it unwritten would lose it silently at the next rebalance. The size is
an upper bound computed without encoding (:func:`state_bytes_bound`), and the checkpoint
re-checks the encoded record, so a snapshot over the bound is never produced.

**Live episodes are bounded.** A consumer keeps at most ``max_live_episodes`` (default
:data:`MAX_LIVE_EPISODES`) episodes in memory: a step that starts one more ends the episode
stepped least recently (its tombstone goes with the next checkpoint, counted in
:attr:`EpisodeStore.evicted`, one log line per checkpoint that evicted), whose next step then
starts it afresh, as after the idle expiry (``ttl_s``). Without the bound, a client sending
steps of ever new episode keys grew the consumer's memory until the host killed it, and every
other episode with it. Memory is about ``max_live_episodes × (max(k, 2) - 1 + replay_window)``
frames. Restore adopts the most recently stepped episodes up to the same bound and tombstones the
rest. The idle expiry scans from the least recently stepped episode and stops at the first not
idle: a checkpoint costs the episodes it expires, not the episodes live (it scanned all of them:
8.8 ms per checkpoint at 100,000).

**The context a decision logs** (``steps_seen``, ``previous_action``) is fixed when the step's
frames are stacked (:meth:`EpisodeStore.observe` returns it with the stack, an
:class:`EpisodeStep`); :meth:`EpisodeStore.decided` only records the action. It was computed
after the whole batch had been observed: a step batched with its episode's next one lost its
previous action (the next one had trimmed that frame), and one batched with its episode's end
logged ``{}``.

**A frame stacked with frames of another shape** (a dynamic frame dimension that changed within
an episode, k > 1) is that record's ``bad_input`` dead letter, with its original bytes, and the
state does not move; np.stack raised on it, a ``processing_failed`` letter at every step until
the idle expiry. With k = 1 nothing is stacked, and any shape the card takes is served.

Frame stack layout: the graph input is ``[B, k, *frame]`` (frames oldest first), or, for a flat
``[B, k * D]`` input, the k frames concatenated. Before an episode has k observations the first
one is repeated (as Gymnasium's FrameStack does at reset).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from auditstream.errors import ConfigError, DecodeError, EpisodeStateNotRestored, ModelRefused
from auditstream.kafka import Record, TopicPartition
from auditstream.registry import ModelCard, TensorSpec
from auditstream.settings import MAX_IN_FLIGHT_BATCHES
from auditstream.stream import Output
from auditstream.tasks.policy import MAX_FRAME_STACK, frame_spec, frame_stack
from auditstream.wire import MAX_ID_CHARS, InferenceRequest, Reason, decode_tensor, encode_tensor
from auditstream.wire.codec import MAX_RECORD_BYTES, MAX_STEP, id_field, number_field, short_repr, strict_loads, typed_field

log = logging.getLogger(__name__)

# Read with the wire's strict JSON (strict_loads), which also requires "v" to be the wire version: a
# new state version needs a check of its own in EpisodeState.from_bytes.
STATE_VERSION = 1
_STATE_FIELDS = ("model", "episode_key", "partition", "next_step", "steps_seen", "last_action", "frames", "updated_at_s")
DEFAULT_TTL_S = 3600.0  # an episode nobody stepped for an hour was abandoned (its driver died)
# How far past the next step of an episode this consumer holds a request's step may be. A driver
# steps in order; an episode it holds no state of (new, or its state lost) may start at any step.
MAX_STEP_GAP = 10_000
# Episodes one consumer keeps in memory at most; a new one past it ends the least recently stepped.
MAX_LIVE_EPISODES = 100_000
# The most a state record may hold (its value bytes): what strict_loads reads at most. The serving
# app lowers it to the state topic's max.message.bytes, less the record's framing and key.
MAX_STATE_BYTES = MAX_RECORD_BYTES
# The least max_state_bytes a store takes: a state of a few small frames.
MIN_STATE_BYTES = 4096
# The steps of one episode a crash can make the consumer answer again, by default: a driver that
# waits for each action has at most one step of an episode in each uncommitted batch, and at most
# Settings.max_in_flight_batches (default 2) batches are uncommitted when a consumer dies between
# the state's flush and the offsets' commit. ServeApp passes the setting.
DEFAULT_REPLAY_WINDOW = 2
# The most frames a state record may hold, whatever the card and settings (a frame stack k with a
# replay window w keeps max(k, 2) - 1 + w): every card the policy kind's check takes, with the
# largest max_in_flight_batches the settings take, fits.
MAX_STATE_FRAMES = MAX_FRAME_STACK - 1 + MAX_IN_FLIGHT_BATCHES
# An upper bound on a state record's bytes besides its model name, episode key and frames: the
# field names (~110 characters) and five numbers of at most 24 characters each.
_STATE_HEADER_BYTES = 256
# An upper bound on a frame's bytes besides its base64 and its shape: the step and action (at
# most 20 digits each), the dtype's name and the punctuation.
_FRAME_OVERHEAD_BYTES = 128


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
    model: str = ""  # the policy model whose consumer wrote it (restore skips another model's)

    def to_bytes(self) -> bytes:
        return json.dumps({
            "v": STATE_VERSION, "model": self.model, "episode_key": self.episode_key, "partition": self.partition,
            "next_step": self.next_step, "steps_seen": self.steps_seen, "last_action": self.last_action,
            "frames": [[s, encode_tensor(obs), a] for s, obs, a in self.frames], "updated_at_s": self.updated_at_s,
        }, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes, max_bytes: int = MAX_STATE_BYTES) -> "EpisodeState":
        """Inverse of :meth:`to_bytes`; anything else raises ``ValueError`` saying what is wrong.

        The state topic is compacted, so a bad record stays there: every field is checked (type,
        finiteness, range) so that a state restore adopts is one the consumer can serve from, and
        the record's size (``max_bytes``), nesting, fields and frame count are bounded first.
        """
        try:
            if not isinstance(data, (bytes, bytearray)):
                raise ValueError(f"a state record is bytes, not {type(data).__name__}")
            if len(data) > max_bytes:  # before parsing: a bigger one is never read into memory
                raise ValueError(f"record of {len(data)} bytes exceeds max_state_bytes={max_bytes}")
            obj = strict_loads(data, max_bytes)  # bounded nesting, no NaN or Infinity, 64-bit integers, "v" 1
            missing = [name for name in _STATE_FIELDS if name not in obj]
            if missing:
                raise ValueError(f"fields {missing} missing")
            unknown = sorted(set(obj) - set(_STATE_FIELDS) - {"v"})
            if unknown:
                raise ValueError(f"unknown fields {short_repr(unknown)}: a state record holds only {list(_STATE_FIELDS)}")
            next_step, steps_seen = _count(obj, "next_step"), _count(obj, "steps_seen")
            if steps_seen > next_step:
                raise ValueError(f"steps_seen={steps_seen} exceeds next_step={next_step} (steps are distinct)")
            frames = _frames(obj["frames"], next_step)
            if steps_seen < len(frames):  # every kept frame is of a step seen
                raise ValueError(f"steps_seen={steps_seen} is less than the {len(frames)} frames kept")
            return cls(id_field(obj, "episode_key"), _count(obj, "partition"), next_step, steps_seen,
                       _action(obj["last_action"], "last_action"), frames,
                       number_field(obj, "updated_at_s", low=0.0),  # finite: a NaN or infinite time never expires
                       id_field(obj, "model"))
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
    if len(value) > MAX_STATE_FRAMES:  # counted before any tensor is decoded
        raise ValueError(f"{len(value)} frames, over MAX_STATE_FRAMES={MAX_STATE_FRAMES}")
    frames: list[list[Any]] = []
    for i, entry in enumerate(value):
        if not isinstance(entry, list) or len(entry) != 3:
            raise ValueError(f"frames[{i}] = {short_repr(entry)} must be [step, tensor, action]")
        step, tensor, action = entry
        if type(step) is not int or not 0 <= step < next_step:  # every kept frame is of a step seen
            raise ValueError(f"frames[{i}] step {short_repr(step)} must be an integer in [0, next_step={next_step})")
        if frames and step <= frames[-1][0]:  # the stack and the replay answers read them oldest first
            raise ValueError(f"frames[{i}] step {step} does not follow step {frames[-1][0]}: steps must increase")
        frames.append([step, decode_tensor(tensor), _action(action, f"frames[{i}] action")])
    # The consumer keeps the newest step's frame, so its state's next step is always that step + 1:
    # a next_step far ahead of the frames is not one it wrote (it would make every real step look
    # like a replay). The time is no matter: the same holds for a record of any age.
    if frames and frames[-1][0] != next_step - 1:
        raise ValueError(f"next_step={next_step} does not follow the newest frame's step {frames[-1][0]}")
    return frames


def _frame_bytes_bound(obs: np.ndarray) -> int:
    return _FRAME_OVERHEAD_BYTES + 21 * obs.ndim + 4 * -(-obs.nbytes // 3)  # base64: 4 characters per 3 bytes


def state_bytes_bound(key: str, frames: list[np.ndarray], model: str = "") -> int:
    """An upper bound on ``len(EpisodeState(key, ..., model=model).to_bytes())`` for a state
    holding ``frames`` (whatever its numbers), computed without encoding anything."""
    return (_STATE_HEADER_BYTES + len(json.dumps(model)) + len(json.dumps(key))
            + sum(_frame_bytes_bound(obs) for obs in frames))


def _checked_step(step: Any, key: str, expected: int | None, max_gap: int) -> int:
    """``step`` if it is an integer in [0, MAX_STEP] (what the wire decodes) and, for an episode whose next step this consumer holds
    (``expected``; None: it holds no state of the episode), at most ``expected + max_gap``; else
    DecodeError ``bad_schema`` (the record is dead-lettered, the episode's state stays as it was).
    An episode without state -- new, or its state lost (evicted, expired, ended as too large, a
    record skipped at restore) -- starts afresh at whatever step its driver has reached."""
    if type(step) is not int or not 0 <= step <= MAX_STEP:  # bool is not int here, nor is a float
        raise DecodeError(Reason.BAD_SCHEMA.value,
                          f"field 'step' = {short_repr(step)} must be an integer from 0 to {MAX_STEP} (the wire's bound)")
    if expected is not None and step > expected + max_gap:
        raise DecodeError(Reason.BAD_SCHEMA.value,
                          f"field 'step' = {short_repr(step)} is more than max_step_gap={max_gap} past the next "
                          f"step {expected} of episode {short_repr(key)}; a driver sends an episode's steps in order")
    return step


def _static_frame(spec: TensorSpec) -> np.ndarray | None:
    """A zero frame of ``spec`` (batch dimension dropped) if its shape is fixed, else None."""
    dims = spec.shape[1:]
    return None if any(d is None for d in dims) else np.zeros(dims, dtype=np.dtype(spec.dtype))


def _servable_frames(card: ModelCard) -> tuple[int, TensorSpec, TensorSpec]:
    """The card's frame stack, frame spec and input spec, if its episode state can be kept and
    written; else :class:`ModelRefused` -- at start-up, not at the first checkpoint, where a
    raise stops the loop on the same records after every restart."""
    try:
        k, spec = frame_stack(card), frame_spec(card)
        # A frame the wire cannot encode (float16, int8, bool: not wire dtypes) would fail the
        # checkpoint's to_bytes; one zero frame round-trips through the state record now.
        zero = np.zeros([d if d is not None else 1 for d in spec.shape[1:]], dtype=np.dtype(spec.dtype))
        EpisodeState.from_bytes(EpisodeState("check", 0, 1, 1, None, [[0, zero, None]], model="check").to_bytes())
    except (ValueError, TypeError) as e:  # DecodeError is a ValueError
        raise ModelRefused(f"{card.name} v{card.version}", f"{str(e).removeprefix(f'model {card.name}: ')} "
                           "(a policy's frames are kept in its episode state: preprocessing.frame_stack and the "
                           "input's dtype and shape must fit it)") from None
    return k, spec, card.inputs[0]


@dataclass
class EpisodeStep:
    """What :meth:`EpisodeStore.observe` made of one request: the model input (the frame stack)
    and the episode context its decision logs, fixed when the frames were stacked.

    ``entry`` is this step's ``[step, observation, action]`` in its episode's frames (the action
    :meth:`EpisodeStore.decided` records); ``previous`` is the entry of the step before it, if the
    state held it then. The previous action is read from ``previous`` when the step is decided:
    a previous step in the same batch is decided just before it (process_batch decides in record
    order), one of an earlier batch was decided then. Neither depends on what later steps of the
    batch did to the state (trimmed its frames, or ended the episode).
    """

    input: np.ndarray
    state: EpisodeState | None = None  # None: a request of no episode
    entry: list[Any] | None = None
    previous: list[Any] | None = None
    steps_seen: int = 0  # as of this step (a replay reports what its first answer reported)
    replay: bool = False


class EpisodeStore:
    """The episodes one consumer owns; plugs into :class:`~auditstream.stream.LoopHooks`.

    ``state_topic=None`` keeps state in memory only (a shadow consumer must not write the live
    consumer's keys). ``load_states()`` returns the state topic's records (from the beginning),
    an iterable read as it goes: restore keeps the latest record per key, not the log.
    ``replay_window``: the steps of one episode a crash can make it answer again (the
    consumer's ``max_in_flight_batches``): it keeps the frames to answer each the same.
    """

    def __init__(self, card: ModelCard, state_topic: str | None,
                 load_states: Callable[[], Iterable[Record]] | None = None, ttl_s: float = DEFAULT_TTL_S,
                 clock: Callable[[], float] = time.time, max_step_gap: int = MAX_STEP_GAP,
                 max_state_bytes: int = MAX_STATE_BYTES, max_live_episodes: int = MAX_LIVE_EPISODES,
                 replay_window: int = DEFAULT_REPLAY_WINDOW) -> None:
        if type(max_live_episodes) is not int or max_live_episodes < 1:
            raise ValueError(f"max_live_episodes={max_live_episodes!r} must be an integer >= 1")
        if type(max_step_gap) is not int or max_step_gap < 0:
            raise ValueError(f"max_step_gap={max_step_gap!r} must be an integer >= 0")
        if type(max_state_bytes) is not int or not MIN_STATE_BYTES <= max_state_bytes <= MAX_STATE_BYTES:
            raise ValueError(f"max_state_bytes={max_state_bytes!r} must be an integer from {MIN_STATE_BYTES} "
                             f"to {MAX_STATE_BYTES}")
        if type(replay_window) is not int or not 1 <= replay_window <= MAX_IN_FLIGHT_BATCHES:
            raise ValueError(f"replay_window={replay_window!r} must be an integer from 1 to {MAX_IN_FLIGHT_BATCHES}")
        self.max_step_gap, self.max_state_bytes, self.max_live_episodes = max_step_gap, max_state_bytes, max_live_episodes
        self.model = card.name
        self.k, self.spec, self.input_spec = _servable_frames(card)
        # Frames kept: for each of the newest replay_window steps (the ones a crash can make the
        # consumer answer again) its stack's k - 1 frames before it, or the step before it (whose
        # action its context logs) when k = 1.
        self.replay_window = replay_window
        self.keep = max(self.k, 2) - 1 + replay_window
        self._check_window_fits()
        self.state_topic, self.load_states, self.ttl_s, self.clock = state_topic, load_states, ttl_s, clock
        self.states: dict[str, EpisodeState] = {}  # least recently stepped first (a step moves its episode last)
        self._dirty: set[str] = set()
        self._ended: set[str] = set()
        self.restored = 0  # episodes adopted from the state topic (for logs and tests)
        self.skipped = 0  # state records refused by restore (each logged with where and why)
        self.ended_oversized = 0  # episodes ended because their state would exceed max_state_bytes
        self.evicted = 0  # episodes ended to keep at most max_live_episodes
        self.restarted = 0  # episodes that went on from a step below their next step they did not hold
        self.stale_replays = 0  # replayed steps (dlq replay) below their next step they did not hold: refused
        self._evicted_since_checkpoint = 0
        # Request partitions whose restore failed, with the error. The Kafka clients run restore
        # inside a rebalance callback; it keeps the error here and process_batch raises it
        # (check_restored) before the next batch, so the consumer stops loudly, nothing of that
        # batch committed, instead of answering those partitions' episodes from no state. A later
        # restore of the same partitions that succeeds (or their revocation) clears it.
        self._unrestored: dict[int, BaseException] = {}

    @property
    def restore_error(self) -> BaseException | None:
        """The error of a failed restore of partitions this consumer still owns, if any."""
        return next(iter(self._unrestored.values()), None)

    def check_restored(self) -> None:
        """Raise :class:`~auditstream.errors.EpisodeStateNotRestored` while a failed restore stands."""
        if self._unrestored:
            error = self.restore_error
            raise EpisodeStateNotRestored(self.state_topic, sorted(self._unrestored), repr(error)) from error

    # -- the request path (called by serving.consumer.process_batch, in record order)

    def observe(self, request: InferenceRequest, frame: np.ndarray, partition: int,
                replay_of: str | None = None) -> EpisodeStep:
        """The model input for this step (the frame stack) and its episode context, recording the
        observation. Raises DecodeError for a request it refuses (the state stays as it was, but
        for a ``too_large`` step, which ends the episode). ``replay_of``: the dead letter the
        record replays (its ``auditstream-replay-of`` header, set by ``auditstream dlq replay``),
        None for a driver's own record."""
        self.check_restored()
        key = request.episode_key
        if key is None:
            return EpisodeStep(self._stack([frame]))
        if request.step is None:  # a redelivery of it could not be told from the next step
            raise DecodeError(Reason.BAD_SCHEMA.value,
                              f"request of episode {short_repr(key)} has no 'step': a policy's episode steps are "
                              "numbered (0, 1, ...), so that a redelivered step is answered again, not counted twice")
        state = self.states.get(key)
        step = _checked_step(request.step, key, None if state is None else state.next_step, self.max_step_gap)
        # A replay is a step the state holds (a redelivery after a crash between the flush and the
        # commit). A step below next_step that it does not hold is older than its kept frames, or
        # the state is not this driver's (another writer's record, a jump): the driver's step wins
        # and the episode goes on from it, as after a lost state -- else every real step would be
        # taken for a replay and the episode would freeze. But a dead letter sent back by
        # `dlq replay` is no driver's step: going on from it stacked its stale observation into
        # the driver's next steps (or, past max_step_gap, refused them all until the idle expiry).
        if state is not None and step < state.next_step:
            entry = next((e for e in state.frames if e[0] == step), None)
            if entry is not None:  # a replay: answered from the kept frames, the state does not move
                held = [e for e in state.frames if e[0] < step]
                return EpisodeStep(self._stacked(key, step, held, frame), state, entry, _before(held, step),
                                   self._seen_as_of(state, step), replay=True)
            if replay_of is not None:
                self.stale_replays += 1
                raise DecodeError(Reason.BAD_SCHEMA.value,
                                  f"episode {short_repr(key)}: step {step} is replayed (dead letter "
                                  f"{short_repr(replay_of)}) but the episode has moved on to step {state.next_step}, "
                                  f"and step {step} is not among its kept steps {[s for s, _, _ in state.frames]} "
                                  "(older than its kept frames), so it cannot be answered again as it was: its frame "
                                  "stack and context are gone. The driver's later steps were answered; the episode's "
                                  "state is left as it was. Nothing to replay: to have this observation answered, "
                                  "send it as a step of a new episode")
        fresh = state is None or step < state.next_step
        held = [] if fresh else state.frames[-(self.keep - 1):]  # type: ignore[union-attr]
        stacked = self._stacked(key, step, held, frame)  # before anything moves: a refused step leaves no trace
        entry = [step, frame, None]
        size = state_bytes_bound(key, [obs for _, obs, _ in held] + [frame], self.model)
        if size > self.max_state_bytes:  # would the state still fit its topic?
            self._end_oversized(key, f"with step {step} its state would take up to {size} bytes")
            raise DecodeError(Reason.TOO_LARGE.value,
                              f"episode {short_repr(key)}: with this step's frame its state would take up to "
                              f"{size} bytes, over max_state_bytes={self.max_state_bytes} (what the "
                              f"episode-state topic takes); the episode is ended, its next step starts it afresh")
        if state is None:  # only once the step is accepted: a refused record leaves no trace
            while len(self.states) >= self.max_live_episodes:
                self._evict(next(iter(self.states)))
            state = self.states[key] = EpisodeState(key, partition, model=self.model)
        elif fresh:
            self._restart(state, step)
        state.frames = held + [entry]
        state.steps_seen += 1
        state.next_step, state.partition, state.updated_at_s = step + 1, partition, self.clock()
        self.states[key] = self.states.pop(key)  # the most recently stepped goes last
        self._dirty.add(key)
        self._ended.discard(key)
        return EpisodeStep(stacked, state, entry, _before(held, step), state.steps_seen)

    def _stacked(self, key: str, step: int, held: list[list[Any]], frame: np.ndarray) -> np.ndarray:
        """The stack of ``frame`` after the held frames before it; DecodeError ``bad_input`` when
        their shapes differ (a dynamic frame dimension that changed within the episode)."""
        if self.k == 1:
            return frame
        before = [obs for _, obs, _ in held[-(self.k - 1):]]
        if before and before[-1].shape != frame.shape:  # the kept frames share one shape (restore checks it)
            raise DecodeError(Reason.BAD_INPUT.value,
                              f"episode {short_repr(key)}: the observation of step {step} is {list(frame.shape)}, "
                              f"its previous frames {list(before[-1].shape)}; frames stacked together "
                              f"(frame_stack={self.k}) must have one shape: keep an episode's observations "
                              "in one shape, or start a new episode for another")
        return self._stack(before + [frame])

    def _restart(self, state: EpisodeState, step: int) -> None:
        """Go on from ``step`` (below ``state.next_step``, a step the state does not hold): no
        frames before it, and the steps seen as of it where the state can tell (its steps after
        ``step`` were consecutive), at least none and at most ``step``; observe counts ``step``."""
        self.restarted += 1
        log.warning("episode %s: step %d is below its next step %d and not one of its kept steps %s: the episode "
                    "goes on from step %d (its state was not this driver's, or the step is older than its frames)",
                    short_repr(state.episode_key), step, state.next_step, [s for s, _, _ in state.frames], step)
        state.steps_seen = min(step, max(0, state.steps_seen - (state.next_step - step)))
        state.frames, state.last_action = [], None

    def _evict(self, key: str) -> None:
        """End episode ``key`` to make room (``max_live_episodes``): tombstoned at the next checkpoint
        (also one restore does not adopt: it is on the topic, not in memory)."""
        self.states.pop(key, None)
        self._dirty.discard(key)
        self._ended.add(key)
        self.evicted += 1
        self._evicted_since_checkpoint += 1

    def decided(self, step: EpisodeStep, action: int) -> dict[str, Any]:
        """Record the action of an observed step; returns the episode context logged with its
        decision (``{}`` for a request of no episode)."""
        state, entry = step.state, step.entry
        if state is None or entry is None:
            return {}
        if entry[2] is None:  # a replay's entry holds its first answer's action already
            entry[2] = action
            if self.states.get(state.episode_key) is state:  # not ended since (an episode_end in its batch)
                self._dirty.add(state.episode_key)
        if state.frames and state.frames[-1] is entry:
            state.last_action = action
        return {"steps_seen": step.steps_seen, "previous_action": None if step.previous is None else step.previous[2]}

    @staticmethod
    def _seen_as_of(state: EpisodeState, step: int) -> int:
        """The steps seen up to ``step``, a step the state holds (a replay reports what its first
        answer reported): all seen less its kept frames after it. At least 1: ``step`` itself
        was seen, whatever a restored state's numbers say."""
        return max(1, state.steps_seen - sum(1 for s, _, _ in state.frames if s > step))

    def end(self, request: InferenceRequest) -> None:
        """The episode ended: forget it; the next checkpoint writes its tombstone."""
        self.check_restored()
        if request.episode_key is not None:
            self.states.pop(request.episode_key, None)
            self._dirty.discard(request.episode_key)
            self._ended.add(request.episode_key)

    def _end_oversized(self, key: str, why: str) -> None:
        """End episode ``key`` deliberately: its state could not be written (over max_state_bytes)."""
        self.ended_oversized += 1
        log.error("episode %s ended: %s, over max_state_bytes=%d (what the episode-state topic takes); "
                  "its next step starts it afresh", short_repr(key), why, self.max_state_bytes)
        if self.states.pop(key, None) is not None:
            self._ended.add(key)
        self._dirty.discard(key)

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
        self._expire_idle(self.clock())
        if self._evicted_since_checkpoint:
            log.warning("%d episodes ended since the last checkpoint to keep at most max_live_episodes=%d in memory "
                        "(the least recently stepped; their next steps start them afresh)",
                        self._evicted_since_checkpoint, self.max_live_episodes)
            self._evicted_since_checkpoint = 0
        dirty, ended, self._dirty, self._ended = self._dirty, self._ended, set(), set()
        if self.state_topic is None:
            return []
        outputs = []
        for key in sorted(dirty):
            value = self.states[key].to_bytes()
            if len(value) > self.max_state_bytes:  # observe's bound makes this unreachable; never send it
                self._end_oversized(key, f"its state record is {len(value)} bytes")
                self._ended.discard(key)
                ended.add(key)  # its tombstone goes with this checkpoint
                continue
            outputs.append(Output(self.state_topic, key.encode(), value))
        return outputs + [Output(self.state_topic, k.encode(), None) for k in sorted(ended)]

    def _expire_idle(self, now: float) -> None:
        """Drop the episodes nobody stepped for ``ttl_s``. ``states`` is least recently stepped
        first, so the scan stops at the first episode that is not idle: the cost is the episodes
        expired, not the episodes live. (An adopted state's time is its writer's clock: one
        behind a more recent episode expires when that one does, never sooner than ``ttl_s``.)"""
        idle = []
        for key, state in self.states.items():
            if now - state.updated_at_s <= self.ttl_s:
                break
            if key not in self._dirty:
                idle.append(key)
        for key in idle:
            log.info("episode %s idle for %.0f s: dropping its state", key, now - self.states[key].updated_at_s)
            del self.states[key]
            self._ended.add(key)

    def _check_window_fits(self) -> None:
        """With frames of a fixed shape: refuse (ConfigError, at start) a replay window whose
        ``keep`` frames cannot fit ``max_state_bytes`` while a smaller window's would -- else every
        episode would be ended as ``too_large`` every few dozen steps. The window is the
        consumer's AUDITSTREAM_MAX_IN_FLIGHT_BATCHES, a throughput setting whose cost here is
        easy to miss. (Frames too large for even one step's state are each step's ``too_large``.)"""
        frame = _static_frame(self.spec)
        if frame is None:
            return

        def fits(window: int) -> bool:
            frames = [frame] * (max(self.k, 2) - 1 + window)
            return state_bytes_bound("k" * MAX_ID_CHARS, frames, self.model) <= self.max_state_bytes

        if fits(self.replay_window) or not fits(1):
            return
        most = max(w for w in range(1, self.replay_window) if fits(w))
        raise ConfigError("AUDITSTREAM_MAX_IN_FLIGHT_BATCHES", self.replay_window,
                          f"at most {most} for policy {self.model}: a crash can replay that many steps of an episode, "
                          f"so its state keeps max(frame_stack, 2) - 1 + that many frames of {frame.nbytes} bytes, and "
                          f"the episode-state topic takes {self.max_state_bytes} bytes; lower it, or raise the topic's "
                          "max.message.bytes")

    def restore(self, partitions: list[TopicPartition]) -> None:
        """Adopt the episodes of newly assigned request partitions from the state topic."""
        owned = {p for _, p in partitions}
        if self.load_states is None or not owned:
            return
        # The latest record per key, folded as the topic is read (a log the broker has not
        # compacted -- the embedded one never does -- holds every snapshot ever written).
        latest: dict[bytes, Record] = {}
        try:
            for record in self.load_states():
                if record.key is None:
                    continue
                if record.value is None:  # a tombstone deletes; a later snapshot of the key brings it back
                    latest.pop(record.key, None)
                else:
                    latest[record.key] = record  # later records win
        except Exception as e:  # noqa: BLE001 - raised by the next batch, see __init__
            log.error("reading the episode-state topic %s failed, the consumer stops at its next batch: %r",
                      self.state_topic, e)
            self._unrestored.update(dict.fromkeys(owned, e))
            return
        now, found = self.clock(), []
        for key, record in latest.items():
            if key.decode("utf-8", "replace") in self.states:
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
                found.append(state)
        # least recently stepped first, as observe() keeps them; past the bound, the oldest are ended
        found.sort(key=lambda st: st.updated_at_s)
        room = max(0, self.max_live_episodes - len(self.states))
        for state in found[:len(found) - room] if len(found) > room else ():
            self._evict(state.episode_key)
        adopted = found[-room:] if room else []
        merged = {st.episode_key: st for st in adopted}
        merged.update(self.states)  # episodes already live here were stepped more recently than any record
        self.states = merged
        self.restored += len(adopted)
        for p in owned:  # these partitions' state is here now
            self._unrestored.pop(p, None)
        log.info("restored %d episodes for partitions %s", len(adopted), sorted(owned))

    def _adoptable(self, key: bytes, value: bytes, now: float) -> EpisodeState:
        """The state in ``value``, if this consumer can serve from it; ValueError says why not."""
        state = EpisodeState.from_bytes(value, self.max_state_bytes)
        if state.model != self.model:  # its own topic holds only its model's, unless misconfigured
            raise ValueError(f"is a state of model {short_repr(state.model)}, not of {short_repr(self.model)} "
                             "(this consumer's)")
        if state.episode_key.encode("utf-8") != key:  # its tombstone would not remove it
            raise ValueError(f"holds episode {short_repr(state.episode_key)} under another key")
        dtype, shape = np.dtype(self.spec.dtype), self.spec.shape[1:]  # what prepare_input makes of a step
        for step, obs, _ in state.frames:
            fits = obs.ndim == len(shape) and all(w in (None, d) for d, w in zip(obs.shape, shape))
            if obs.dtype != dtype or not fits:
                raise ValueError(f"the frame of step {step} is {obs.dtype} {list(obs.shape)}; this model's frames are "
                                 f"{dtype} {shape} (without the batch axis)")
            if self.k > 1 and obs.shape != state.frames[-1][1].shape:  # stacked together: one shape
                raise ValueError(f"the frame of step {step} is {list(obs.shape)}, the newest "
                                 f"{list(state.frames[-1][1].shape)}: frames stacked together have one shape")
        if state.updated_at_s > now + self.ttl_s:
            raise ValueError(f"updated_at_s={state.updated_at_s} is more than ttl_s={self.ttl_s} ahead of this "
                             f"consumer's clock ({now}): it would not expire")
        # A writer with a larger replay window kept more frames: the newest are what this one needs.
        state.frames = state.frames[-self.keep:]
        return state

    def _skip(self, record: Record, why: str) -> None:
        self.skipped += 1
        log.warning("episode-state record %s (key %s) skipped: %s", record.where, short_repr(record.key), why)

    def forget(self, partitions: list[TopicPartition]) -> None:
        """Partitions were revoked (and checkpointed): their episodes now belong to another consumer."""
        gone = {p for _, p in partitions}
        for p in gone:  # no longer this consumer's to restore
            self._unrestored.pop(p, None)
        for key in [k for k, s in self.states.items() if s.partition in gone]:
            del self.states[key]
            self._dirty.discard(key)


def _before(held: list[list[Any]], step: int) -> list[Any] | None:
    """The entry of the step before ``step`` among ``held`` (the frames before it), if held."""
    return held[-1] if held and held[-1][0] == step - 1 else None
