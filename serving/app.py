"""A running serving consumer: the verified model, its warmed-up session, the metrics and the
at-least-once :class:`~auditstream.stream.StreamLoop` around :func:`serving.consumer.process_batch`.

Start-up order: load + verify the model (a corrupt file stops here) → create and warm up the
ONNX Runtime session from the verified bytes → make sure the topics exist → start the control
view → join the consumer group ``<prefix>-serve-<model>`` → start the lag probe
(:mod:`serving.lag`) → start /metrics → poll. The control view is not waited for at start (its
group joins while the serving consumer's does); a batch before it has read the topic waits for it,
bounded, and is routed with every answer deferred if it still has not (:class:`ControlGate`). If a step fails, everything started before it is
stopped before the error propagates (no stray threads or sessions in a process that retries). Per-episode state (RL) plugs in through
:class:`~auditstream.stream.LoopHooks` (``hooks=``): assignment/revocation callbacks and extra
outputs (state snapshots) checkpointed with each batch. A policy model gets a
:class:`serving.episodes.EpisodeStore` on those hooks by itself: restored from its own compacted
``episode-state.<model>`` topic on assignment, its snapshots written before every commit.

Shadow mode (``shadow_of=LIVE``; ``auditstream serve --shadow``, ``auditstream rl promote``): the
model reads the live model's request topic in its own group ``<prefix>-shadow-<model>-v<version>``
and writes only predictions flagged ``shadow``; its episode state stays in memory.

Hot reload and canary (``follow_rollout=True``; ``auditstream serve`` without ``--version``): the
versions served live in a :class:`serving.rollout.VersionSet`, which follows the model's rollout
on the control channel between batches -- a promoted version is loaded, verified and warmed up in
the background, then switched to; a canary answers its hashed share of the requests.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import time
from typing import Any

import numpy as np

from auditstream import model_sandbox, tasks
from auditstream import topics as T
from auditstream.control import DEFER_ALL, ControlState, ControlView
from auditstream.errors import BadArguments, ConfigError, ModelRefused
from auditstream.kafka import Producer, Record, ensure_topics, iter_to_end, make_producer, resolve_bootstrap
from auditstream.kafka.limits import RECORD_OVERHEAD_BYTES, check_dead_letter_limit, topic_limits
from auditstream.registry import ModelCard, ModelRegistry, RegisteredModel
from auditstream.settings import Settings
from auditstream.stream import LoopHooks, LoopStats, Output, StreamLoop
from auditstream.wire.codec import MAX_ID_CHARS
from qc.triage import derived_salt
from serving.consumer import OUTPUT_TOPICS, LiveReference, RecordResult, ServeConfig, process_batch
from serving.inference import MAX_CONSECUTIVE_INFERENCE_FAILURES, FailureStreak
from serving.episodes import MAX_STATE_BYTES, MIN_STATE_BYTES, EpisodeStore
from serving.lag import LAG_REFRESH_S, LagProbe
from serving.metrics import ServeMetrics
from serving.rollout import ServedVersion, VersionLoader, VersionSet, check_switchable
from serving.runtime import ModelSession, load_session

log = logging.getLogger(__name__)
# While the control view has not read the control topic yet, a batch waits for it at most this
# share of max_poll_interval_ms (what both Kafka clients are given), and never longer than
# MAX_CONTROL_WAIT_S: the wait is part of the batch's time between two polls (PollBudget keeps a
# batch under half the interval, so the wait leaves it most of its share).
CONTROL_WAIT_SHARE = 0.1
MAX_CONTROL_WAIT_S = 10.0


def control_wait_s(settings: Settings) -> float:
    """How long one batch waits for an unread control view (see CONTROL_WAIT_SHARE)."""
    return min(MAX_CONTROL_WAIT_S, CONTROL_WAIT_SHARE * settings.max_poll_interval_ms / 1000)


class ControlGate:
    """The control state each batch is triaged with, and what to do before the view has read the
    topic (docs/serving.md, "The control channel").

    The view joins its own group while the serving consumer joins the request group (both at
    once: on Tansu each first join is held for half a session timeout, so one after the other
    would add seconds to every start). Until the view has read what the topic held when it
    joined, its state may lack a sticky override (a ``DEFER_ALL`` or a tightened threshold), so
    a batch waits for it up to ``wait_s``; if it still has not caught up, the batch is routed
    with every version deferred (``DEFER_ALL``: every answer to HUMAN, none auto-accepted),
    logged once and counted in ``unread_batches``. Once caught up: the view's state, as is."""

    def __init__(self, view: Any, model: str, wait_s: float, unread_batches: Any = None) -> None:
        self.view, self.model, self.wait_s, self.unread_batches = view, model, wait_s, unread_batches
        self.deferred_batches = 0  # batches routed with every answer deferred since the start
        self._said_unread = self._said_read = False

    def read(self) -> tuple[ControlState | None, bool]:
        """(the model's latest state, whether the view has read the topic): once per batch."""
        caught_up = self.view.caught_up() or self.view.wait_caught_up(self.wait_s)
        if not caught_up:
            self.deferred_batches += 1
            if self.unread_batches is not None:
                self.unread_batches.inc()
            if not self._said_unread:
                self._said_unread = True
                log.warning("the control topic %s has not been read yet (waited %.1f s): every answer is deferred "
                            "to a human until it is (auditstream_serve_control_unread_batches_total counts the "
                            "batches); check that the topic exists and that this principal may Read it and the "
                            "view's group (%s: grant the prefix <prefix>-control-view-; docs/serving.md, \"Who "
                            "may write what (ACLs)\")", getattr(self.view, "topic", "control"), self.wait_s,
                            getattr(self.view, "group", "?"))
        elif self._said_unread and not self._said_read:
            self._said_read = True
            log.info("the control topic has been read: routing follows it again (%d batches were deferred "
                     "before)", self.deferred_batches)
        return self.view.get(self.model), caught_up

    @staticmethod
    def config(config: ServeConfig, state: ControlState | None, caught_up: bool) -> ServeConfig:
        """``config`` with the batch's control state; before the view has read the topic, with
        ``config``'s version deferred whatever the state says so far."""
        if not caught_up:
            state = ControlState(config.card.name, state.human_queue_depth if state is not None else 0,
                                 {config.card.version: DEFER_ALL},
                                 "the control topic has not been read yet: every answer deferred")
        return dataclasses.replace(config, control=state)


def group_id(settings: Settings, model: str) -> str:
    """``<prefix>-serve-<model>`` with the default topic prefix (one group per model and prefix)."""
    return f"{settings.topic_prefix}-serve-{model}"


def shadow_group_id(settings: Settings, model: str, version: str) -> str:
    """``<prefix>-shadow-<model>-v<version>``: a candidate reads the live requests on its own."""
    return f"{settings.topic_prefix}-shadow-{model}-v{version}"


def check_servable(model: RegisteredModel) -> None:
    """ModelRefused unless the model's task kind can serve its card (outputs it needs, served kind)."""
    try:
        tasks.lookup(model.card.task).check_card(model.card)
    except ValueError as e:
        raise ModelRefused(model.onnx_path, f"{e}; fix the card or re-export the model") from None


class TimedRunner:
    """The session seen by process_batch: each ``run`` is timed into the inference histogram, so
    the metric holds ONNX Runtime time only (not decoding, triage or serialisation; on a GPU not
    the host/device copies either, which go to ``copies``)."""

    def __init__(self, session: ModelSession, histogram: Any, copies: Any = None) -> None:
        self.session, self.histogram, self.copies = session, histogram, copies

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        try:
            return self.session.run(batch)
        finally:
            timing = getattr(self.session, "last_timing", None)
            if timing is None:
                self.histogram.observe(time.perf_counter() - started)
            else:  # I/O binding: ORT's own time apart from the copies
                self.histogram.observe(timing.ort_s)
                if self.copies is not None:
                    self.copies.observe(timing.copies_s)

    def probe(self) -> None:
        self.session.probe()


class ServeApp:
    """One model's consumer process (``auditstream serve``).

    It owns what it is given or creates -- session, producer, control view, consumer, lag probe
    -- and :meth:`close` releases them; if start-up fails half-way, what was started is released
    before the error propagates.
    """

    def __init__(self, settings: Settings, model: RegisteredModel, metrics: ServeMetrics | None = None,
                 producer: Producer | None = None, hooks: LoopHooks | None = None,
                 session: ModelSession | None = None, shadow_of: str | None = None,
                 use_control: bool = True, lag_refresh_s: float = LAG_REFRESH_S,
                 max_consecutive_inference_failures: int = MAX_CONSECUTIVE_INFERENCE_FAILURES,
                 follow_rollout: bool = False) -> None:
        check_servable(model)
        self.settings, self.model = settings, model
        self._max_failures, self._shadow_of = max_consecutive_inference_failures, shadow_of
        self.control_view: ControlView | None = None
        with contextlib.ExitStack() as started:  # unwound only if start-up fails
            if producer is not None:
                started.callback(producer.close)
            if session is None:
                session = load_session(model, settings=settings)
            started.callback(session.close)
            role = "shadow" if shadow_of is not None else "serve"
            self.metrics = metrics or ServeMetrics(model.card.name, version=model.card.version, role=role)
            if self.metrics.role != role:  # the alert rules tell the answering group by this label
                raise BadArguments(f"ServeMetrics(role={self.metrics.role!r}) for a consumer whose role is {role!r}")
            # A candidate of the model it shadows is compared with that model's live version; a
            # shadow of another model (rl promote's NAME:V against another name) is not.
            self.reference = self._live_reference(model.card) if shadow_of == model.card.name else None
            if self.reference is not None:
                started.callback(self.reference.runner.close)
            self.request_topic = settings.request_topic(shadow_of or model.card.name)
            bootstrap = self.bootstrap = resolve_bootstrap(settings)
            # Only what serve reads or writes: on a cluster with ACLs it may see no other topic.
            ensure_topics(settings, [self.request_topic] + [settings.topic(t) for t in OUTPUT_TOPICS],
                          bootstrap=bootstrap)
            # What each output topic takes: a record over it is dead-lettered, never sent to be refused.
            self.topic_limits = topic_limits(settings, [settings.topic(t) for t in OUTPUT_TOPICS], bootstrap)
            check_dead_letter_limit(settings.topic(T.DEAD_LETTER), self.topic_limits[settings.topic(T.DEAD_LETTER)])
            live = self._served(model.card, session)
            self._last_live_children = live.children
            # A shadow never acts, so the monitor's queue depth and thresholds do not concern it.
            if use_control and shadow_of is None:
                control_topic = settings.topic(T.CONTROL)
                ensure_topics(settings, [control_topic], compacted=(control_topic,), bootstrap=bootstrap)
                self.control_view = ControlView(settings, bootstrap).start()
                started.callback(self.control_view.stop)
                view = self.control_view
                self.metrics.control_view_read.labels(model.card.name).set_function(lambda: float(view.caught_up()))
                self.metrics.count_skipped("control", self.control_view)
            # Not waited for here: the view's group joins while the serving consumer joins its own.
            self.control_gate = (None if self.control_view is None else
                                 ControlGate(self.control_view, model.card.name, control_wait_s(settings),
                                             self.metrics.control_unread_batches.labels(model.card.name)))
            following = follow_rollout and self.control_view is not None
            loader = VersionLoader(self._load_version, self._load_failed) if following else None
            self.versions = VersionSet(live, loader, self.control_view if following else None, model.card.name,
                                       derived_salt(settings.qc_salt, "canary"), self._versions_changed)
            group = (shadow_group_id(settings, model.card.name, model.card.version) if shadow_of is not None
                     else group_id(settings, model.card.name))
            self.lag_probe = LagProbe(settings, bootstrap, group, lambda lag: self._children["consumer_lag"].set(lag),
                                      lag_refresh_s)
            hooks = hooks or LoopHooks()
            self.episodes = self._episode_store(bootstrap, hooks, shadow_of is not None)
            if self.episodes is not None:
                self.metrics.count_skipped("episode-state", self.episodes)
            self._track_assignment(hooks)
            # Each process names its clients (a broker's logs, quotas and the fault bench's proxy
            # tell the members of one group, and a member's consumer from its producer, apart).
            member = f"{group}-{socket.gethostname()}-{os.getpid()}"
            if producer is None:
                producer = make_producer(settings, bootstrap, client_id=f"{member}.producer")
                started.callback(producer.close)
            self.loop = StreamLoop.connect(settings, group, [self.request_topic], self._process, producer,
                                           hooks=hooks, bootstrap=bootstrap, client_id=f"{member}.consumer")
            started.callback(self.loop.consumer.close)
            self.lag_probe.start()
            self.versions.start()
            started.pop_all()  # started: close() owns everything now

    def _track_assignment(self, hooks: LoopHooks) -> None:
        """Tell the lag probe (and the assigned-partitions gauge) which partitions this member owns,
        in front of the other hooks."""
        user_assign, user_revoke = hooks.on_assign, hooks.on_revoke

        def on_assign(partitions: list) -> None:
            self.lag_probe.assigned(partitions)
            self._children["assigned_partitions"].set(self.lag_probe.owned)
            if user_assign:
                user_assign(partitions)

        def on_revoke(partitions: list) -> None:
            self.lag_probe.revoked(partitions)
            self._children["assigned_partitions"].set(self.lag_probe.owned)
            if user_revoke:
                user_revoke(partitions)

        hooks.on_assign, hooks.on_revoke = on_assign, on_revoke

    def _episode_store(self, bootstrap: str, hooks: LoopHooks, shadow: bool) -> EpisodeStore | None:
        """A policy's per-episode state, chained in front of the caller's hooks."""
        if not tasks.lookup(self.model.card.task).acts:  # only kinds that act keep episode state
            return None
        # Each policy model has its own state topic: episode keys are any client's strings, so on a
        # shared one two models' consumers adopted and tombstoned each other's episodes.
        state_topic = None if shadow else self.settings.episode_state_topic(self.model.card.name)
        max_state_bytes = MAX_STATE_BYTES
        if state_topic is not None:
            ensure_topics(self.settings, [state_topic], compacted=(state_topic,), bootstrap=bootstrap)
            # A snapshot must fit the state topic with its framing and key (<= 256 characters of
            # UTF-8): an episode growing past it is ended, never produced to be refused (episodes.py).
            limit = topic_limits(self.settings, [state_topic], bootstrap)[state_topic]
            max_state_bytes = min(MAX_STATE_BYTES, limit - RECORD_OVERHEAD_BYTES - 4 * MAX_ID_CHARS)
            if max_state_bytes < MIN_STATE_BYTES:
                raise ConfigError(f"{state_topic} max.message.bytes", limit,
                                  f">= {MIN_STATE_BYTES + RECORD_OVERHEAD_BYTES + 4 * MAX_ID_CHARS}: raise the "
                                  "topic's max.message.bytes, or no episode state would fit it")
        store = EpisodeStore(self.model.card, state_topic,
                             (lambda: iter_to_end(self.settings, [state_topic], bootstrap)) if state_topic else None,
                             max_state_bytes=max_state_bytes, replay_window=self.settings.max_in_flight_batches)
        user = LoopHooks(hooks.on_assign, hooks.on_revoke, hooks.before_checkpoint)

        def on_assign(partitions: list) -> None:
            store.restore(partitions)
            if user.on_assign:
                user.on_assign(partitions)

        def on_revoke(partitions: list) -> None:
            store.forget(partitions)
            if user.on_revoke:
                user.on_revoke(partitions)

        def before_checkpoint(offsets: dict) -> list[Output]:
            return store.checkpoint_outputs(offsets) + list(user.before_checkpoint(offsets) if user.before_checkpoint else [])

        hooks.on_assign, hooks.on_revoke, hooks.before_checkpoint = on_assign, on_revoke, before_checkpoint
        return store

    # -- the versions served (serving/rollout.py) ------------------------------------------------

    @property
    def session(self) -> ModelSession:
        return self.versions.live.session

    @property
    def config(self) -> ServeConfig:
        return self.versions.live.config

    @property
    def _children(self) -> dict:
        return self.versions.live.children

    def _served(self, card: ModelCard, session: ModelSession) -> ServedVersion:
        config = ServeConfig.from_settings(self.settings, card, shadow=self._shadow_of is not None,
                                           request_model=self._shadow_of or "", topic_limits=self.topic_limits)
        children = self.metrics.children(card.version)  # labelled once: no lookups per record
        runner = TimedRunner(session, children["inference_seconds"], children["device_copy_seconds"])
        return ServedVersion(session, config, runner, children,
                             FailureStreak(card, self._max_failures, runner))

    def _load_checked(self, version: str) -> tuple[RegisteredModel, ModelSession]:
        """Load, verify, check (servable, switchable from this consumer's model) and warm up
        ``version`` of this consumer's model; raises if it cannot serve here."""
        model = ModelRegistry.from_settings(self.settings).load(self.model.card.name, version)
        check_servable(model)
        check_switchable(self.model.card, model)
        return model, load_session(model, settings=self.settings)

    def _load_version(self, version: str) -> ServedVersion:
        """Background thread: load, verify, check and warm up ``version`` (raises if it cannot serve)."""
        model, session = self._load_checked(version)
        try:
            return self._served(model.card, session)
        except BaseException:
            session.close()
            raise

    def _live_reference(self, candidate: ModelCard) -> LiveReference | None:
        """A shadow's copy of the version it is compared with (``LIVE``, else the newest older
        one), so each prediction can say whether the two answers agree; None when there is no
        such version or its inputs differ (the shadow then serves without the comparison)."""
        if not tasks.lookup(candidate.task).agreement_is_concordance:
            log.info("shadow v%s: %s answers match with a tolerance, so agreeing with live proves nothing; the "
                     "paired gate counts audited items only", candidate.version, candidate.task)
            return None
        registry = ModelRegistry.from_settings(self.settings)
        try:
            version = registry.reference_version(candidate.name, candidate.version)
            if version == candidate.version:
                return None
            live, session = self._load_checked(version)
            if live.card.inputs != candidate.inputs:
                session.close()
                raise ModelRefused(live.onnx_path, "its input spec differs from the candidate's")
        except Exception as e:  # noqa: BLE001 - the shadow serves on; its gate counts audited items only
            log.warning("no live reference for shadow v%s (the paired gate counts audited items only): %s",
                        candidate.version, e)
            return None
        log.info("shadow v%s compares each answer with live v%s", candidate.version, version)
        return LiveReference(live.card, session)

    def _load_failed(self, version: str, error: BaseException) -> None:
        log.error("%s v%s could not be loaded, the live version keeps serving: %s", self.model.card.name, version, error)
        self.metrics.version_load_failures.labels(self.model.card.name).inc()

    def _versions_changed(self, versions: VersionSet) -> None:
        name = self.model.card.name
        self.metrics.canary_share.labels(name).set(versions.canary_share)
        for served in filter(None, (versions.live, versions.canary)):
            served.children["assigned_partitions"].set(self.lag_probe.owned)
        if versions.live.children is not self._last_live_children:  # the lag is the live version's now
            self._last_live_children["consumer_lag"].set(0)
            self._last_live_children["assigned_partitions"].set(0)
            self._last_live_children = versions.live.children
            self.metrics.version_switches.labels(name).inc()

    # -- the batch --------------------------------------------------------------------------------

    def _process(self, records: list[Record]) -> list[list[Output]]:
        # The monitor's latest word, read once per batch (waiting, bounded, for a view that has
        # not read the topic yet: then every answer is deferred, ControlGate).
        control, caught_up = self.control_gate.read() if self.control_gate is not None else (None, True)
        self.versions.follow()  # a promotion or canary announced since the last batch
        now = time.time()
        results: list[RecordResult] = [RecordResult()] * len(records)
        for served, indices in self.versions.split(records):
            config = served.config if self.control_gate is None else ControlGate.config(served.config, control, caught_up)
            part = [records[i] for i in indices]
            answered = process_batch(part, served.runner, config, now, self.episodes, self.reference)
            served.failures.observe(answered)  # a long streak of failed inferences: the model is broken
            self._count(served.children, part, answered)
            for i, result in zip(indices, answered):
                results[i] = result
        return [r.outputs for r in results]

    @staticmethod
    def _count(m: dict, records: list[Record], results: list[RecordResult]) -> None:
        m["records_in"].inc(len(records))
        m["batch_size"].observe(len(records))
        for r in results:
            if r.route is not None:
                m[r.route].inc()
                if r.end_to_end_s is not None:  # an absurd created_at_s is no latency measurement
                    m["end_to_end"].observe(r.end_to_end_s)
                if r.over_capacity:
                    m["over_capacity"].inc()
            elif r.dead_letter_reason is not None:  # neither: an episode-end marker, nothing to count
                m[r.dead_letter_reason].inc()

    def run(self, max_records: int | None = None) -> LoopStats:
        return self.loop.run(max_records)

    def close(self) -> None:
        self.lag_probe.stop()
        try:
            self.loop.close()
        finally:
            if self.control_view is not None:
                self.control_view.stop()
            self.versions.close()
            if self.reference is not None:
                self.reference.runner.close()


def check_shadow_version(shadow: bool, version: str | None) -> None:
    """A shadow run names its candidate (the CLI checks before any model or broker is touched)."""
    if shadow and not version:
        raise BadArguments("serve --shadow needs --version V: the candidate version to run in shadow "
                           "(the live version serves without --shadow)")


def serve(settings: Settings, model_name: str, version: str | None = None, shadow: bool = False) -> LoopStats:
    """``auditstream serve``: run until SIGTERM/SIGINT; a broken model or broker raises. Without a
    pinned ``version`` the consumer serves the live version and follows promotions and canaries;
    ``shadow``: ``version`` (a candidate) answers the model's requests in shadow."""
    check_shadow_version(shadow, version)
    model_sandbox.prestart()  # the model checks' fork server imports onnx while this process does too
    if (public_salt := settings.public_qc_salt_warning()) is not None:
        log.warning("%s", public_salt)
    model = ModelRegistry.from_settings(settings).load(model_name, version)
    # A model refused by its kind or by ONNX Runtime stops here, before anything is registered or started.
    check_servable(model)
    session = load_session(model, settings=settings)
    try:
        metrics = ServeMetrics(model_name, version=model.card.version, role="shadow" if shadow else "serve")
        app = ServeApp(settings, model, metrics, session=session, shadow_of=model_name if shadow else None,
                       follow_rollout=version is None)
    except BaseException:
        session.close()
        raise
    if settings.metrics_port:
        metrics.serve_http(settings.metrics_port)
        log.info("metrics on :%d/metrics", settings.metrics_port)
    app.loop.install_signal_handlers()
    # Which Kafka, said once: a misspelt AUDITSTREAM_BOOTSTRAP_SERVERS would otherwise serve the embedded broker unseen.
    joined = ("AUDITSTREAM_BOOTSTRAP_SERVERS" if settings.bootstrap_servers else
              f"the embedded broker of {settings.state_dir}: AUDITSTREAM_BOOTSTRAP_SERVERS is empty")
    log.info("serving %s v%s%s from %s on Kafka at %s (%s)", model_name, model.card.version,
             " in shadow" if shadow else "", app.request_topic, app.bootstrap, joined)
    try:
        stats = app.run()
    finally:
        app.close()
    log.info("stopped after %d records in %d batches (%d commits)", stats.records_in, stats.batches, stats.commits)
    return stats
