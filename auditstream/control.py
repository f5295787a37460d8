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

The same topic carries each model's :class:`Rollout` (key ``rollout:<model>``), written only by
``auditstream promote`` (monitor/promotion.py) and ``auditstream rl promote``: the version just made live and the canary (a
version answering a hashed share of the requests). Consumers started without a pinned version
follow it between batches (serving/rollout.py). It is a record of its own, not a field of the
monitor's state, so the monitor's tick can never overwrite an announcement it has not read yet.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

from auditstream.errors import DecodeError
from auditstream.settings import Settings
from auditstream.topics import CONTROL
from auditstream.wire import WIRE_VERSION, Reason

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ControlState:
    """The monitor's latest word on one model (``control`` topic, key = model name)."""

    model: str
    human_queue_depth: int = 0
    threshold_override: dict[str, float] = field(default_factory=dict)  # model version -> threshold
    reason: str = ""
    updated_at_s: float = 0.0

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
        try:
            obj: Any = json.loads(data)
            if not isinstance(obj, dict) or obj.get("v") != WIRE_VERSION:
                raise ValueError("not a v1 control record")
            overrides = {str(k): float(v) for k, v in (obj.get("threshold_override") or {}).items()}
            return cls(model=str(obj["model"]), human_queue_depth=int(obj.get("human_queue_depth", 0)),
                       threshold_override=overrides, reason=str(obj.get("reason", "")),
                       updated_at_s=float(obj.get("updated_at_s", 0.0)))
        except (ValueError, TypeError, KeyError, UnicodeDecodeError) as e:
            raise DecodeError(Reason.BAD_SCHEMA.value, f"control record: {e}") from None


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
        try:
            return cls(model=str(obj["model"]), live_version=str(obj["live_version"]),
                       canary_version=None if obj.get("canary_version") is None else str(obj["canary_version"]),
                       canary_share=float(obj.get("canary_share", 0.0)), reason=str(obj.get("reason", "")),
                       updated_at_s=float(obj.get("updated_at_s", 0.0)))
        except (ValueError, TypeError, KeyError) as e:
            raise DecodeError(Reason.BAD_SCHEMA.value, f"rollout record: {e}") from None


CONTROL_FETCH_MAX_WAIT_MS = 500


class ControlView:
    """The latest :class:`ControlState` per model, kept current by a background consumer.

    Each view reads the whole compacted topic in a consumer group of its own (every process
    needs every model's state), so it never commits offsets.
    """

    def __init__(self, settings: Settings, bootstrap: str | None = None, poll_timeout_ms: int = 500) -> None:
        from auditstream.kafka import make_consumer

        self.topic = settings.topic(CONTROL)
        group = f"{settings.topic_prefix}-control-view-{uuid.uuid4().hex[:12]}"
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

    def wait_caught_up(self, timeout_s: float) -> bool:
        """True once the view has read everything the topic held when it joined."""
        return self._caught_up.wait(timeout_s)

    def apply(self, value: bytes | None, key: bytes | None = None) -> None:
        """Fold one record into the view (a tombstone removes the model's state)."""
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
            obj = json.loads(value)
            if isinstance(obj, dict) and obj.get("kind") == "rollout" and isinstance(obj.get("rollout"), dict):
                rollout = Rollout.from_dict(obj["rollout"])
                with self._lock:
                    self._rollouts[rollout.model] = rollout
                return
            state = ControlState.from_bytes(value)
        except (DecodeError, ValueError, UnicodeDecodeError) as e:
            log.warning("ignoring a control record that does not decode: %s", e)
            return
        with self._lock:
            self._states[state.model] = state

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                for record in self._consumer.poll(500, self._poll_timeout_ms):
                    self.apply(record.value, record.key)
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
