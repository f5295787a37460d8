"""The control channel: what the monitor's statistics tell the serving consumers.

The monitor knows things a consumer cannot see from its own records: how deep the human queue
is, and whether the audited error of auto-accepted answers still respects the model card's
certified risk. Once per statistics tick it publishes one :class:`ControlState` per model to the
compacted ``control`` topic (key = model name), and every consumer keeps the latest state per
model in a :class:`ControlView`:

- ``human_queue_depth`` feeds triage's capacity check (a HUMAN item over capacity is still
  deferred, never auto-accepted; the metric and alert show it);
- ``threshold_override`` raises the auto-accept threshold of a model version whose audited error
  bound went over budget (only when the monitor runs with ``AUDITSTREAM_AUTO_TIGHTEN=true``).
  Overrides only ever tighten, and stay until a person clears them
  (``auditstream control clear``) or a new model version is served.

Because the topic is compacted and keyed by model, a consumer (or a restarted monitor) that
reads it from the beginning ends up with the latest state of every model.
A record that does not decode, or that sits under another key than its own, is skipped (logged
with where it is and why, counted in ``ControlView.skipped``): the view keeps that model's last
good state and reads on, since the compacted topic would hand the record to every restart.

The same topic carries each model's :class:`Rollout` (key ``rollout:<model>``), written only by
``auditstream promote`` (monitor/promotion.py) and ``auditstream rl promote``: the version just made live and the canary (a
version answering a hashed share of the requests). Consumers started without a pinned version
follow it between batches (serving/rollout.py). It is a record of its own, not a field of the
monitor's state, so the monitor's tick can never overwrite an announcement it has not read yet.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from auditstream.errors import DecodeError
from auditstream.settings import Settings
from auditstream.topics import CONTROL
from auditstream.wire import MAX_ID_CHARS, WIRE_VERSION, Reason
from auditstream.wire.codec import MAX_DETAIL_CHARS, id_field, number_field, short_repr, strict_loads, typed_field

if TYPE_CHECKING:
    from auditstream.kafka import Record

log = logging.getLogger(__name__)

# Every record of the control topic is bounded, whoever wrote it: the monitor republishes each
# model's state every tick, and the compacted topic hands every record to every restart, so one
# unbounded field (a reason of 8 MB, 24 MB once JSON escapes it) would stop the monitor for good.
# Free text is cut to this many characters; versions are identifiers (at most MAX_ID_CHARS).
MAX_REASON_CHARS = MAX_DETAIL_CHARS
# Overrides per model: versions that went over budget, each kept until a person clears it. With
# every field at its longest a state stays under 1 MiB, what any broker's topics take by default.
MAX_THRESHOLD_OVERRIDES = 256
# A threshold no confidence reaches: every answer of the version deferred to a human. The monitor
# publishes it for a version over budget with no threshold that passes (monitor/control.py); a
# consumer applies it itself while its view has not read the topic yet (serving/app.py).
DEFER_ALL = 1.01


@dataclass(frozen=True)
class ControlState:
    """The monitor's latest word on one model (``control`` topic, key = model name). Built or
    decoded, its ``reason`` is cut to :data:`MAX_REASON_CHARS` and its overrides are at most
    :data:`MAX_THRESHOLD_OVERRIDES` versions of at most MAX_ID_CHARS characters (else ``ValueError``)."""

    model: str
    human_queue_depth: int = 0
    threshold_override: dict[str, float] = field(default_factory=dict)  # model version -> threshold
    reason: str = ""
    updated_at_s: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "reason", self.reason[:MAX_REASON_CHARS])
        if len(self.threshold_override) > MAX_THRESHOLD_OVERRIDES:
            raise ValueError(f"{len(self.threshold_override)} threshold overrides, over {MAX_THRESHOLD_OVERRIDES}: "
                             "clear the ones of versions no longer served (auditstream control clear)")
        for version in self.threshold_override:
            if len(version) > MAX_ID_CHARS:
                raise ValueError(f"threshold_override version {short_repr(version)} is over {MAX_ID_CHARS} characters")

    def threshold_for(self, version: str, card_threshold: float) -> float:
        """The threshold a consumer of ``version`` applies: never below the card's."""
        return max(card_threshold, self.threshold_override.get(version, card_threshold))

    @property
    def key(self) -> bytes:
        return self.model.encode("utf-8")

    def to_bytes(self) -> bytes:
        return json.dumps({"v": WIRE_VERSION, "model": self.model, "human_queue_depth": self.human_queue_depth,
                           "threshold_override": self.threshold_override, "reason": self.reason,
                           "updated_at_s": self.updated_at_s}, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "ControlState":
        """Inverse of :meth:`to_bytes`; anything else raises :class:`DecodeError` saying what is wrong."""
        return cls.from_dict(strict_loads(data))

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> "ControlState":
        """Every field checked: a state the view keeps must not fail triage later (an infinite
        depth, a threshold that is not a number). Optional fields default as in the dataclass."""
        try:
            overrides = typed_field(obj, "threshold_override", dict, optional=True) or {}
            for version, threshold in overrides.items():
                # any finite number is safe: threshold_for() never goes below the card's threshold
                if type(threshold) not in (int, float) or not math.isfinite(threshold):  # (a bool is not a threshold)
                    raise DecodeError(Reason.BAD_SCHEMA.value, f"threshold_override[{short_repr(version)}] = "
                                      f"{short_repr(threshold)} must be a finite number")
            depth = typed_field(obj, "human_queue_depth", int, optional=True) or 0
            if depth < 0:
                raise DecodeError(Reason.BAD_SCHEMA.value, f"field 'human_queue_depth' = {depth} must be >= 0")
            return cls(model=id_field(obj, "model"), human_queue_depth=depth,
                       threshold_override={str(k): float(v) for k, v in overrides.items()},
                       reason=typed_field(obj, "reason", str, optional=True) or "",
                       updated_at_s=number_field(obj, "updated_at_s", low=0.0, default=0.0))
        except ValueError as e:  # a DecodeError, or __post_init__'s refusal
            raise DecodeError(getattr(e, "code", Reason.BAD_SCHEMA.value),
                              f"control record: {getattr(e, 'detail', e)}") from None


ROLLOUT_KEY_PREFIX = "rollout:"


@dataclass(frozen=True)
class Rollout:
    """Which versions of ``model`` answer its requests (``control`` topic, key ``rollout:<model>``):
    ``live_version`` (also the registry's ``LIVE`` pointer), and, while ``canary_share`` > 0,
    ``canary_version`` on that share of the requests (a stable hash of the record key)."""

    model: str
    live_version: str
    canary_version: str | None = None
    canary_share: float = 0.0
    reason: str = ""
    updated_at_s: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "reason", self.reason[:MAX_REASON_CHARS])  # free text, bounded (MAX_REASON_CHARS)
        if self.canary_version is not None and len(self.canary_version) > MAX_ID_CHARS:
            raise ValueError(f"canary_version {short_repr(self.canary_version)} is over {MAX_ID_CHARS} characters")
        if not 0.0 <= self.canary_share <= 1.0:
            raise ValueError(f"canary_share={self.canary_share} must be a share in [0, 1]")
        if self.canary_share > 0 and not self.canary_version:
            raise ValueError(f"canary_share={self.canary_share} needs a canary_version")

    @property
    def key(self) -> bytes:
        return f"{ROLLOUT_KEY_PREFIX}{self.model}".encode("utf-8")

    def to_bytes(self) -> bytes:
        # No top-level "model": a reader that predates rollouts refuses the record instead of
        # taking it for a ControlState that clears the model's overrides.
        body = {"model": self.model, "live_version": self.live_version, "canary_version": self.canary_version,
                "canary_share": self.canary_share, "reason": self.reason, "updated_at_s": self.updated_at_s}
        return json.dumps({"v": WIRE_VERSION, "kind": "rollout", "rollout": body}, separators=(",", ":")).encode()

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> "Rollout":
        """The ``rollout`` object of a record (see :meth:`to_bytes`), every field checked."""
        try:
            return cls(model=id_field(obj, "model"), live_version=id_field(obj, "live_version"),
                       canary_version=typed_field(obj, "canary_version", str, optional=True),
                       canary_share=number_field(obj, "canary_share", 0.0, 1.0, default=0.0),
                       reason=typed_field(obj, "reason", str, optional=True) or "",
                       updated_at_s=number_field(obj, "updated_at_s", low=0.0, default=0.0))
        except ValueError as e:  # a DecodeError, or __post_init__'s refusal
            raise DecodeError(getattr(e, "code", Reason.BAD_SCHEMA.value),
                              f"rollout record: {getattr(e, 'detail', e)}") from None


def decode_control(data: bytes) -> ControlState | Rollout:
    """One value of the control topic (not a tombstone): a model's :class:`Rollout` or its
    :class:`ControlState`. Parsed once, by the wire's strict JSON (bounded size and nesting, no
    NaN or Infinity, 64-bit integers); raises only :class:`DecodeError`."""
    obj = strict_loads(data)
    if obj.get("kind") == "rollout" and isinstance(obj.get("rollout"), dict):
        return Rollout.from_dict(obj["rollout"])
    return ControlState.from_dict(obj)


CONTROL_FETCH_MAX_WAIT_MS = 500


class ControlView:
    """The latest :class:`ControlState` per model, kept current by a background consumer.

    Each view reads the whole compacted topic in a consumer group of its own (every process
    needs every model's state), so it never commits offsets.
    """

    def __init__(self, settings: Settings, bootstrap: str | None = None, poll_timeout_ms: int = 500) -> None:
        from auditstream.kafka import make_consumer

        self.skipped = 0  # records refused (each logged with where it is and what is wrong)
        self.topic = settings.topic(CONTROL)
        group = self.group = f"{settings.topic_prefix}-control-view-{uuid.uuid4().hex[:12]}"
        # Control records are rare and a half-second delay is harmless: an idle kafka-python
        # consumer at the default 10 ms fetch wait costs ~11% of a core (docs/serving.md,
        # "Where a record's time went").
        self._consumer = make_consumer(settings, group, [self.topic], bootstrap=bootstrap,
                                       fetch_max_wait_ms=CONTROL_FETCH_MAX_WAIT_MS)
        self._states: dict[str, ControlState] = {}
        self._rollouts: dict[str, Rollout] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._caught_up = threading.Event()
        self._poll_timeout_ms = poll_timeout_ms
        self._thread = threading.Thread(target=self._run, name="control-view", daemon=True)

    def start(self) -> "ControlView":
        self._thread.start()
        return self

    def get(self, model: str) -> ControlState | None:
        with self._lock:
            return self._states.get(model)

    def states(self) -> dict[str, ControlState]:
        with self._lock:
            return dict(self._states)

    def rollout(self, model: str) -> Rollout | None:
        with self._lock:
            return self._rollouts.get(model)

    def rollouts(self) -> dict[str, Rollout]:
        with self._lock:
            return dict(self._rollouts)

    def caught_up(self) -> bool:
        """True once the view has read everything the topic held when it joined (no wait: one
        Event check, cheap enough for every batch)."""
        return self._caught_up.is_set()

    def wait_caught_up(self, timeout_s: float) -> bool:
        """True once the view has read everything the topic held when it joined."""
        return self._caught_up.wait(timeout_s)

    def apply(self, value: bytes | None, key: bytes | None = None, where: str = "") -> None:
        """Fold one record into the view (a tombstone removes the model's state).

        A record that does not decode, or whose key is not the one its content is published
        under, is skipped: logged (``where``: its topic[partition]@offset) and counted in
        :attr:`skipped`. The view keeps the last good state of that model, and the records after
        it still apply: a compacted topic keeps a bad record, so refusing it must not cost more.
        """
        if value is None:
            if key is not None:
                name = key.decode("utf-8", "replace")
                with self._lock:
                    if name.startswith(ROLLOUT_KEY_PREFIX):
                        self._rollouts.pop(name[len(ROLLOUT_KEY_PREFIX):], None)
                    else:
                        self._states.pop(name, None)
            return
        try:
            update = decode_control(value)
            if key is not None and key != update.key:
                # a tombstone of its key would not remove it, and it could overwrite its model's
                # own record from another partition in any order
                raise DecodeError(Reason.BAD_SCHEMA.value, f"{type(update).__name__} of model {short_repr(update.model)} "
                                  f"under key {short_repr(key)}, not {short_repr(update.key)}")
        except DecodeError as e:
            self.skipped += 1
            log.warning("control record at %s (key %s) skipped: %s", where or "an unknown offset", short_repr(key), e)
            return
        with self._lock:
            if isinstance(update, Rollout):
                self._rollouts[update.model] = update
            else:
                self._states[update.model] = update

    def _apply_record(self, record: Record) -> None:
        """:meth:`apply`, for a record the view consumed: nothing it holds may stop the view."""
        try:
            if record.unreadable and record.value is None:  # not a tombstone: the client lost its bytes
                self.skipped += 1
                log.warning("control record at %s skipped: %s", record.where, record.unreadable)
                return
            self.apply(record.value, record.key, record.where)
        except Exception:  # noqa: BLE001 - a case the checks missed is a bug, but only this record's:
            # stopping the view for it would stop every restarted view too (the topic keeps it)
            self.skipped += 1
            log.exception("control record at %s (key %s) skipped: applying it failed", record.where, short_repr(record.key))

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                for record in self._consumer.poll(500, self._poll_timeout_ms):
                    self._apply_record(record)
                assigned = self._consumer.assignment()
                if not self._caught_up.is_set() and assigned:
                    lag = self._consumer.lag()  # known only once each partition has been fetched
                    if len(lag) == len(assigned) and not any(lag.values()):
                        self._caught_up.set()
        except Exception:  # noqa: BLE001 - a broken view must not take serving down; it is logged
            log.exception("control view stopped; consumers keep the last state they read")
        finally:
            self._consumer.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)


def announce_rollout(settings: Settings, rollout: Rollout, timeout_s: float = 30.0) -> None:
    """Publish ``rollout`` to the compacted control topic and wait for the acknowledgement
    (``DeliveryFailed`` otherwise: the caller moved ``LIVE`` but the consumers were not told)."""
    from auditstream.kafka import ensure_topics, make_producer, resolve_bootstrap

    bootstrap = resolve_bootstrap(settings)
    topic = settings.topic(CONTROL)
    ensure_topics(settings, [topic], compacted=(topic,), bootstrap=bootstrap)
    producer = make_producer(settings, bootstrap, client_id="auditstream-rollout")
    try:
        producer.send(topic, rollout.key, rollout.to_bytes())
        producer.flush(timeout_s)
    finally:
        producer.close()
