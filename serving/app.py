"""A running serving consumer: the verified model, its warmed-up session, the metrics and the
at-least-once :class:`~auditstream.stream.StreamLoop` around :func:`serving.consumer.process_batch`.

Start-up order: load + verify the model (a corrupt file stops here) → create and warm up the
ONNX Runtime session → make sure the topics exist → start /metrics → join the consumer group
``<prefix>-serve-<model>`` → poll. Per-episode state (RL) plugs in through
:class:`~auditstream.stream.LoopHooks` (``hooks=``): assignment/revocation callbacks and extra
outputs (state snapshots) checkpointed with each batch. A policy model gets a
:class:`serving.episodes.EpisodeStore` on those hooks by itself: restored from the compacted
``episode-state`` topic on assignment, its snapshots written before every commit.

Shadow mode (``shadow_of=LIVE``, used by ``auditstream rl promote``): the model reads the live
model's request topic in its own group ``<prefix>-shadow-<model>-v<version>`` and writes only
predictions flagged ``shadow``; its episode state stays in memory.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from auditstream import topics as T
from auditstream.control import ControlView
from auditstream.kafka import Producer, Record, ensure_topics, make_producer, read_to_end, resolve_bootstrap
from auditstream.registry import ModelRegistry, RegisteredModel
from auditstream.settings import Settings
from auditstream.stream import LoopHooks, LoopStats, Output, StreamLoop
from serving.consumer import ServeConfig, process_batch
from serving.episodes import EpisodeStore
from serving.metrics import ServeMetrics
from serving.postprocess import check_card
from serving.runtime import ModelSession, load_session

log = logging.getLogger(__name__)

LAG_REFRESH_S = 5.0


def group_id(settings: Settings, model: str) -> str:
    """``<prefix>-serve-<model>`` with the default topic prefix (one group per model and prefix)."""
    return f"{settings.topic_prefix}-serve-{model}"


def shadow_group_id(settings: Settings, model: str, version: str) -> str:
    """``<prefix>-shadow-<model>-v<version>``: a candidate reads the live requests on its own."""
    return f"{settings.topic_prefix}-shadow-{model}-v{version}"


class ServeApp:
    """One model's consumer process (``auditstream serve``)."""

    def __init__(self, settings: Settings, model: RegisteredModel, metrics: ServeMetrics | None = None,
                 producer: Producer | None = None, hooks: LoopHooks | None = None,
                 session: ModelSession | None = None, shadow_of: str | None = None,
                 use_control: bool = True) -> None:
        check_card(model.card)
        self.settings, self.model = settings, model
        self.session = session or load_session(model)
        self.config = ServeConfig.from_settings(settings, model.card, shadow=shadow_of is not None,
                                                request_model=shadow_of or "")
        self.metrics = metrics or ServeMetrics(model.card.name)
        self._children = self.metrics.children()  # labelled once: no label lookups per record
        self.request_topic = settings.request_topic(shadow_of or model.card.name)
        bootstrap = resolve_bootstrap(settings)
        ensure_topics(bootstrap, [self.request_topic] + [settings.topic(t) for t in T.SHARED_TOPICS],
                      settings.partitions)
        self._lag_at = 0.0
        # A shadow never acts, so the monitor's queue depth and thresholds do not concern it.
        self.control_view = None
        if use_control and shadow_of is None:
            control_topic = settings.topic(T.CONTROL)
            ensure_topics(bootstrap, [control_topic], settings.partitions, compacted=(control_topic,))
            self.control_view = ControlView(settings, bootstrap).start()
        hooks = hooks or LoopHooks()
        self.episodes = self._episode_store(bootstrap, hooks, shadow_of is not None)
        user_after_commit = hooks.after_commit

        def after_commit(offsets: dict) -> None:
            self._refresh_lag()
            if user_after_commit:
                user_after_commit(offsets)

        hooks.after_commit = after_commit
        group = (shadow_group_id(settings, model.card.name, model.card.version) if shadow_of is not None
                 else group_id(settings, model.card.name))
        self.loop = StreamLoop.connect(settings, group, [self.request_topic], self._process,
                                       producer or make_producer(settings, bootstrap, client_id=group),
                                       hooks=hooks, bootstrap=bootstrap)

    def _episode_store(self, bootstrap: str, hooks: LoopHooks, shadow: bool) -> EpisodeStore | None:
        """A policy's per-episode state, chained in front of the caller's hooks."""
        if self.model.card.task != "policy":
            return None
        state_topic = None if shadow else self.settings.topic(T.EPISODE_STATE)
        if state_topic is not None:
            ensure_topics(bootstrap, [state_topic], self.settings.partitions, compacted=(state_topic,))
        store = EpisodeStore(self.model.card, state_topic,
                             (lambda: read_to_end(self.settings, [state_topic], bootstrap)) if state_topic else None)
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

    def _process(self, records: list[Record]) -> list[list[Output]]:
        m = self._children
        started = time.perf_counter()
        config = self.config
        if self.control_view is not None:  # the monitor's latest word, read once per batch
            config = dataclasses.replace(config, control=self.control_view.get(self.model.card.name))
        results = process_batch(records, self.session, config, time.time(), self.episodes)
        m["records_in"].inc(len(records))
        m["batch_size"].observe(len(records))
        m["inference_seconds"].observe(time.perf_counter() - started)
        for r in results:
            if r.route is not None:
                m[r.route].inc()
                m["end_to_end"].observe(r.end_to_end_s or 0.0)
            elif r.dead_letter_reason is not None:  # neither: an episode-end marker, nothing to count
                m[r.dead_letter_reason].inc()
        return [r.outputs for r in results]

    def _refresh_lag(self) -> None:
        now = time.monotonic()
        if now - self._lag_at >= LAG_REFRESH_S:
            self._lag_at = now
            self.metrics.consumer_lag.labels(self.model.card.name).set(sum(self.loop.consumer.lag().values()))

    def run(self, max_records: int | None = None) -> LoopStats:
        return self.loop.run(max_records)

    def close(self) -> None:
        self.loop.close()
        if self.control_view is not None:
            self.control_view.stop()
        self.session.close()


def serve(settings: Settings, model_name: str, version: str | None = None) -> LoopStats:
    """``auditstream serve``: run until SIGTERM/SIGINT; a broken model or broker raises."""
    model = ModelRegistry(settings.models_dir).load(model_name, version)
    metrics = ServeMetrics(model_name)
    app = ServeApp(settings, model, metrics)
    if settings.metrics_port:
        metrics.serve_http(settings.metrics_port)
        log.info("metrics on :%d/metrics", settings.metrics_port)
    app.loop.install_signal_handlers()
    log.info("serving %s v%s from %s", model_name, model.card.version, app.request_topic)
    try:
        stats = app.run()
    finally:
        app.close()
    log.info("stopped after %d records in %d batches (%d commits)", stats.records_in, stats.batches, stats.commits)
    return stats
