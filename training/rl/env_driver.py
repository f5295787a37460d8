"""``auditstream rl run``: drive Gymnasium episodes through the broker, so the whole decision loop
runs end to end.

    auditstream serve --model policy-cartpole-v1 &          # the policy consumer
    auditstream rl run --env CartPole-v1 --episodes 20      # this driver

Per step of every running episode::

    env ──InferenceRequest(obs, episode_key, step)──► requests.<model> ──► policy consumer
    env ◄──────────────Action (or a deferred marker)── actions ◄──────────┘
    env.step(action) ──Transition(obs, action, source, reward, terminated, truncated)──► transitions

The driver waits for each step's action before sending the next observation (one step of an
episode in flight, which is what the consumer's per-episode state assumes), and steps
``--concurrent`` episodes at once so the broker round trip overlaps. A decision routed to a
human arrives as a deferred marker: the driver waits up to ``--human-wait-s`` for a human
decision on the ``decisions`` topic, then applies the card's ``triage.safe_action`` and logs a
``fallback`` decision (with one-hot propensities: that is what acted). A step whose action does
not come within ``--decision-timeout-s`` (consumer down, broker slow) falls back the same way;
the first decision of a run may take up to ``--start-timeout-s`` while the consumer joins its
group. An ended episode sends an ``episode_end`` request so the consumer drops its state.

:func:`in_process_returns` runs the same policy and action rule with ONNX Runtime directly, the
reference the broker path's returns are compared with.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from auditstream.cli_args import (COUNT, COUNT_OR_ZERO, NON_NEGATIVE, POSITIVE, SEED, check_derived_seed,
                                  check_fields)

log = logging.getLogger(__name__)

# What the driver reads (actions, decisions) and writes (transitions, a fallback decision) besides
# its requests: all it makes sure exist (docs/serving.md, "Who may write what").
DRIVER_TOPICS = ("actions", "decisions", "transitions")


@dataclass(frozen=True)
class RunArgs:
    """Arguments of ``auditstream rl run``."""

    env: str = field(default="CartPole-v1", metadata={"help": "Gymnasium environment id"})
    episodes: int = field(default=10, metadata={"help": "episodes to run", "check": COUNT})
    model: str = field(default="", metadata={"help": "policy model (default: policy-<env>, e.g. policy-cartpole-v1)"})
    version: str = field(default="", metadata={"help": "card version to follow (default: the live version)"})
    decision_timeout_s: float = field(default=2.0, metadata={
        "help": "wait this long for a step's action, then apply the safe action", "check": POSITIVE})
    human_wait_s: float = field(default=0.0, metadata={
        "help": "after a deferred marker, wait this long for a human decision", "check": NON_NEGATIVE})
    start_timeout_s: float = field(default=30.0, metadata={
        "help": "timeout of the run's first decision (consumer joining)", "check": POSITIVE})
    concurrent: int = field(default=4, metadata={"help": "episodes stepped at once", "check": COUNT})
    max_steps: int = field(default=0, metadata={"help": "cut episodes after this many steps (0: the env's limit)",
                                                "check": COUNT_OR_ZERO})
    seed: int = field(default=0, metadata={"help": "seed of episode i is seed + i", "check": SEED})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self) -> None:
        check_fields(self)  # one line naming the option, before the broker or an environment is touched
        check_derived_seed(self.seed, lambda seed: seed + self.episodes - 1, "seed + episodes - 1")


@dataclass
class RunReport:
    env: str
    model: str
    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    routes: Counter = field(default_factory=Counter)  # AUTO / AUTO_QC / HUMAN, from the actions topic
    sources: Counter = field(default_factory=Counter)  # model / human / fallback: who chose each applied action
    timeouts: int = 0  # steps whose action never came (not even a deferred marker)
    elapsed_s: float = 0.0
    episode_keys: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        decisions = sum(self.sources.values())
        returns = np.asarray(self.returns, dtype=np.float64)
        return {"env": self.env, "model": self.model, "episodes": len(returns),
                # null (not NaN, which is no JSON) when no episode finished
                "mean_return": float(returns.mean()) if len(returns) else None,
                "std_return": float(returns.std()) if len(returns) else None,
                "steps": int(sum(self.lengths)), "decisions": decisions, "routes": dict(self.routes),
                "sources": dict(self.sources), "timeouts": self.timeouts, "elapsed_s": round(self.elapsed_s, 2),
                "decisions_per_s": round(decisions / max(self.elapsed_s, 1e-9), 1)}


@dataclass
class _Slot:
    """One running episode."""

    env: Any
    episode_key: str = ""
    index: int = -1
    step: int = 0
    obs: np.ndarray | None = None
    total: float = 0.0
    request_id: str = ""
    deadline: float = 0.0
    marker: Any = None  # the deferred Action, if one came
    version: str = ""  # the policy version that last answered this episode

    @property
    def busy(self) -> bool:
        return bool(self.request_id)


def make_env(env_id: str, max_steps: int) -> Any:
    import gymnasium as gym

    return gym.make(env_id, max_episode_steps=max_steps) if max_steps else gym.make(env_id)


class Driver:
    """The event loop of :func:`run`: send observations, match actions, step environments."""

    def __init__(self, settings: Any, args: RunArgs, card: Any, producer: Any, reader: Any) -> None:
        self.settings, self.args, self.card, self.producer, self.reader = settings, args, card, producer, reader
        self.request_topic = settings.request_topic(card.name)
        self.safe_action = card.triage.safe_action
        if not isinstance(self.safe_action, int) or isinstance(self.safe_action, bool):
            raise ValueError(f"model {card.name} v{card.version}: triage.safe_action={self.safe_action!r} is not an "
                             "action index; a real-time policy needs one to fall back on (see docs/rl.md)")
        self.n_actions = int(card.outputs[0].shape[-1])
        self.run_id = uuid.uuid4().hex[:8]
        self.report = RunReport(args.env, f"{card.name}/{card.version}")
        self.pending: dict[str, _Slot] = {}  # request id -> slot waiting for its action
        self.started = 0
        self.ready = False  # an action has arrived: the consumer is up, normal timeouts apply

    # -- sending

    def _send_request(self, slot: _Slot, now: float) -> None:
        from auditstream.wire import InferenceRequest

        slot.request_id, slot.marker = f"{slot.episode_key}-s{slot.step}", None
        timeout = self.args.decision_timeout_s if self.ready else max(self.args.start_timeout_s, self.args.decision_timeout_s)
        slot.deadline = now + timeout
        request = InferenceRequest(slot.request_id, self.card.name, np.asarray(slot.obs, dtype=np.float32), time.time(),
                                   slot.episode_key, slot.step)
        self.producer.send(self.request_topic, request.key, request.to_bytes())
        self.pending[slot.request_id] = slot

    def _start_episode(self, slot: _Slot, now: float) -> bool:
        if self.started >= self.args.episodes:
            return False
        slot.index, self.started = self.started, self.started + 1
        slot.episode_key, slot.step, slot.total = f"{self.args.env}-{self.run_id}-ep{slot.index}", 0, 0.0
        slot.version = ""
        slot.obs, _ = slot.env.reset(seed=self.args.seed + slot.index)
        self.report.episode_keys.append(slot.episode_key)
        self._send_request(slot, now)
        return True

    # -- receiving

    def on_record(self, record: Any, now: float) -> None:
        from auditstream.errors import DecodeError
        from auditstream.wire import Action, Decision

        slot = None
        try:
            if record.topic == self.settings.topic("actions"):
                action = Action.from_bytes(record.value)
                slot = self.pending.get(action.request_id)
                if slot is None:
                    return  # another driver's episode, or a late answer after a fallback
                self.ready = True
                self.report.routes[action.route.value] += 1
                if not action.deferred:
                    self.apply(slot, int(action.action), "model", action.model_version, now)  # type: ignore[arg-type]
                    return
                slot.marker = action
                slot.deadline = min(slot.deadline, now + self.args.human_wait_s)
            else:
                decision = Decision.from_bytes(record.value)
                slot = self.pending.get(decision.request_id)
                if slot is not None and decision.source == "human" and self._valid(decision.output):
                    self.apply(slot, int(decision.output), "human", decision.model_version, now)
        except DecodeError as e:
            log.warning("skipping unreadable %s record %s: %s", record.topic, record.offset, e)

    def _valid(self, action: Any) -> bool:
        return isinstance(action, int) and not isinstance(action, bool) and 0 <= action < self.n_actions

    def expire(self, now: float) -> None:
        """Apply the safe action to every step past its deadline, and log that fallback decision."""
        from auditstream.wire import Decision

        for slot in [s for s in self.pending.values() if s.deadline <= now]:
            marker = slot.marker
            if marker is None:
                self.report.timeouts += 1
            propensities = [1.0 if a == self.safe_action else 0.0 for a in range(self.n_actions)]
            details = {"propensities": propensities, "route": marker.route.value if marker else None,
                       "reason": "deferred to a human, no answer in time" if marker else "no action in time",
                       "action_probs": marker.details.get("action_probs") if marker else None,
                       "value": marker.details.get("value") if marker else None}
            # No answer at all: the version serving this episode (the consumer may have switched
            # since this driver read the card), so the episode's transitions name one version.
            version = marker.model_version if marker else (slot.version or self.card.version)
            decision = Decision(slot.request_id, self.card.name, version, self.safe_action, "fallback", time.time(),
                                slot.episode_key, slot.step, details)
            self.producer.send(self.settings.topic("decisions"), slot.episode_key.encode(), decision.to_bytes())
            self.apply(slot, self.safe_action, "fallback", version, now)

    # -- acting

    def apply(self, slot: _Slot, action: int, source: str, model_version: str, now: float) -> None:
        from auditstream.wire import InferenceRequest, Transition

        del self.pending[slot.request_id]
        obs = np.asarray(slot.obs, dtype=np.float32)
        next_obs, reward, terminated, truncated, _ = slot.env.step(action)
        transition = Transition(slot.request_id, self.card.name, model_version, slot.episode_key, slot.step, obs, action,
                                source, float(reward), bool(terminated), bool(truncated), time.time())
        self.producer.send(self.settings.topic("transitions"), transition.key, transition.to_bytes())
        self.report.sources[source] += 1
        slot.version = model_version
        slot.total += float(reward)
        slot.step, slot.obs, slot.request_id = slot.step + 1, next_obs, ""
        if terminated or truncated:
            end = InferenceRequest(f"{slot.episode_key}-end", self.card.name, np.asarray(next_obs, dtype=np.float32),
                                   time.time(), slot.episode_key, slot.step, episode_end=True)
            self.producer.send(self.request_topic, end.key, end.to_bytes())
            self.report.returns.append(slot.total)
            self.report.lengths.append(slot.step)
            self._start_episode(slot, now)
        else:
            self._send_request(slot, now)


def run(settings: Any, args: RunArgs) -> RunReport:
    """Run ``args.episodes`` episodes through the broker; the policy consumer must be running."""
    from tqdm import tqdm

    from auditstream import topics as T
    from auditstream.kafka import ensure_topics, make_producer, make_reader, resolve_bootstrap
    from auditstream.registry import ModelRegistry
    from training.rl.policy_export import card_name

    model = args.model or card_name(args.env)
    card = ModelRegistry.from_settings(settings).card(model, args.version or None)
    bootstrap = resolve_bootstrap(settings)
    # Only what the driver reads or writes: on a cluster with ACLs it may see no other topic.
    ensure_topics(settings, [settings.request_topic(model)] + [settings.topic(t) for t in DRIVER_TOPICS],
                  bootstrap=bootstrap)
    # Tail the answers before the first request goes out, so none is missed.
    reader = make_reader(settings, [settings.topic(T.ACTIONS), settings.topic(T.DECISIONS)], from_beginning=False,
                         bootstrap=bootstrap)
    producer = make_producer(settings, bootstrap, client_id="auditstream-rl-run")
    driver = Driver(settings, args, card, producer, reader)
    slots = [_Slot(make_env(args.env, args.max_steps)) for _ in range(min(args.concurrent, args.episodes))]
    bar = tqdm(total=args.episodes, desc=f"rl run {args.env}", unit="episode", disable=not args.progress)
    started = time.perf_counter()
    try:
        for slot in slots:
            driver._start_episode(slot, time.monotonic())
        producer.flush(30.0)
        while driver.pending:
            for record in reader.poll(500, 5):
                driver.on_record(record, time.monotonic())
            driver.expire(time.monotonic())
            producer.flush(30.0)  # this round's requests and transitions out before waiting again
            bar.update(len(driver.report.returns) - bar.n)
        driver.report.elapsed_s = time.perf_counter() - started
    finally:
        bar.close()
        producer.close()
        reader.close()
        for slot in slots:
            slot.env.close()
    return driver.report


def in_process_returns(onnx_path: Any, card: Any, env_id: str, episodes: int, seed: int = 0, max_steps: int = 0,
                       defer: bool = True) -> tuple[np.ndarray, float]:
    """(returns, decisions/s) of the same policy with ONNX Runtime in this process: the same
    action rule (``select_action`` on :class:`Driver`'s request-id scheme) and, with ``defer``,
    the same routing with no human answering (below the card's threshold: the safe action)."""
    import onnxruntime as ort

    from auditstream.tasks import ACTION_SALT
    from auditstream.tasks.policy import action_selection, policy_confidence, select_action
    from qc.triage import hash_uniform

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    mode, env, run_id = action_selection(card), make_env(env_id, max_steps), uuid.uuid4().hex[:8]
    returns, decisions, started = [], 0, time.perf_counter()
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        total, step, done = 0.0, 0, False
        while not done:
            probs = session.run(["action_probs"], {card.inputs[0].name: np.asarray(obs, np.float32)[None]})[0][0]
            rounded = [round(float(p), 6) for p in probs]
            action, _ = select_action(rounded, hash_uniform(f"{env_id}-{run_id}-ep{episode}-s{step}", ACTION_SALT), mode)
            confidence = round(policy_confidence(np.asarray(probs, np.float64), card.triage.confidence_kind), 6)
            if defer and not confidence >= card.triage.threshold:
                action = int(card.triage.safe_action)
            obs, reward, terminated, truncated, _ = env.step(action)
            total, step, done = total + float(reward), step + 1, terminated or truncated
            decisions += 1
        returns.append(total)
    env.close()
    return np.asarray(returns), decisions / max(time.perf_counter() - started, 1e-9)
