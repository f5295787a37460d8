"""RL records: the action the environment driver applies and the transition it observed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from auditstream.errors import DecodeError
from auditstream.wire.codec import (
    DECISION_SOURCES, MAX_RECORD_BYTES, Reason, Route, WIRE_VERSION, _dumps, _enum, _step, id_field, number_field,
    short_repr, strict_loads, typed_field,
)
from auditstream.wire.tensors import decode_tensor, encode_tensor


def _action_index(obj: dict[str, Any], name: str, optional: bool = False) -> int | None:
    value = typed_field(obj, name, int, optional=optional)
    if value is not None and value < 0:
        raise DecodeError(Reason.BAD_SCHEMA.value, f"field {name!r} = {value} must be an action index >= 0")
    return value


def _episode(obj: dict[str, Any]) -> tuple[str, int]:
    step = _step(obj)
    if step is None:
        raise DecodeError(Reason.BAD_SCHEMA.value, "field 'step' must be int")
    return id_field(obj, "episode_key"), step


@dataclass(frozen=True, slots=True)
class Action:
    """RL: what the environment driver applies for one request: ``actions`` topic, key = episode key.

    ``action`` is the policy's action (AUTO, AUTO_QC), or ``None`` when the decision was deferred
    to a human (route HUMAN): the driver then waits for a human decision or, at its timeout,
    applies the card's ``safe_action`` (written ``"deferred": true`` on the wire).
    """

    request_id: str
    model: str
    model_version: str
    episode_key: str
    step: int
    action: int | None
    route: Route
    created_at_s: float
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def deferred(self) -> bool:
        return self.action is None

    @property
    def key(self) -> bytes:
        return self.episode_key.encode("utf-8")

    def to_bytes(self) -> bytes:
        return _dumps(
            {
                "v": WIRE_VERSION,
                "request_id": self.request_id,
                "model": self.model,
                "model_version": self.model_version,
                "episode_key": self.episode_key,
                "step": self.step,
                "action": self.action,
                "deferred": self.action is None,
                "route": self.route.value,
                "created_at_s": self.created_at_s,
                "details": self.details,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes, max_bytes: int = MAX_RECORD_BYTES) -> "Action":
        obj = strict_loads(data, max_bytes)
        episode_key, step = _episode(obj)
        action = _action_index(obj, "action", optional=True)
        if typed_field(obj, "deferred", bool) != (action is None):
            raise DecodeError(Reason.BAD_SCHEMA.value, f"'deferred' must be true exactly when 'action' is null (action {action})")
        return cls(
            request_id=id_field(obj, "request_id"),
            model=id_field(obj, "model"),
            model_version=id_field(obj, "model_version"),
            episode_key=episode_key,
            step=step,
            action=action,
            route=_enum(Route, obj.get("route"), "route"),
            created_at_s=number_field(obj, "created_at_s"),
            details=typed_field(obj, "details", dict, optional=True) or {},
        )


@dataclass(frozen=True, slots=True)
class Transition:
    """RL: what the environment did after one action: ``transitions`` topic, key = episode key.

    ``observation`` is the one the decision was made on, ``action`` the action applied and
    ``source`` who chose it (``model``, ``human``, ``fallback``: see :class:`Decision`);
    ``reward``, ``terminated`` and ``truncated`` are Gymnasium's answer to it. Offline datasets
    join transitions with decisions (propensities) and verdicts (human labels) by request id.
    """

    request_id: str
    model: str
    model_version: str
    episode_key: str
    step: int
    observation: np.ndarray
    action: int
    source: str
    reward: float
    terminated: bool
    truncated: bool
    created_at_s: float

    @property
    def key(self) -> bytes:
        return self.episode_key.encode("utf-8")

    def to_bytes(self) -> bytes:
        return _dumps(
            {
                "v": WIRE_VERSION,
                "request_id": self.request_id,
                "model": self.model,
                "model_version": self.model_version,
                "episode_key": self.episode_key,
                "step": self.step,
                "observation": encode_tensor(self.observation),
                "action": self.action,
                "source": self.source,
                "reward": self.reward,
                "terminated": self.terminated,
                "truncated": self.truncated,
                "created_at_s": self.created_at_s,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes, max_bytes: int = MAX_RECORD_BYTES) -> "Transition":
        obj = strict_loads(data, max_bytes)
        episode_key, step = _episode(obj)
        source = typed_field(obj, "source", str)
        if source not in DECISION_SOURCES:
            raise DecodeError(Reason.BAD_SCHEMA.value, f"transition source {short_repr(source)} not one of {DECISION_SOURCES}")
        return cls(
            request_id=id_field(obj, "request_id"),
            model=id_field(obj, "model"),
            model_version=id_field(obj, "model_version"),
            episode_key=episode_key,
            step=step,
            observation=decode_tensor(obj.get("observation")),
            action=_action_index(obj, "action"),  # type: ignore[arg-type]
            source=source,
            reward=number_field(obj, "reward"),
            terminated=typed_field(obj, "terminated", bool),
            truncated=typed_field(obj, "truncated", bool),
            created_at_s=number_field(obj, "created_at_s"),
        )


