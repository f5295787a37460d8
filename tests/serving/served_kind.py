"""One model of any task kind served for real, with the monitor and an audit store beside it:
the harness of the kinds' request-to-verdict tests (tests/serving/test_*_e2e.py).

:func:`served_with_monitor` publishes the model, creates the topics, runs the monitor (its own
metrics registry) and a :class:`ServeApp`; :meth:`Served.answer` streams requests through the
broker and returns their predictions; :meth:`Served.correct_deferred` has an auditor correct the
one deferred item and returns the verdicts and decisions that come back on Kafka.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from prometheus_client import CollectorRegistry
from tests.serving.kafka_readers import read_topic
from tests.store.store_factories import add_users, make_store

from auditstream import topics as T
from auditstream.kafka import ensure_model_topics, make_producer
from auditstream.registry import ModelCard, ModelRegistry
from auditstream.settings import Settings
from auditstream.wire import Decision, InferenceRequest, Prediction, Verdict
from monitor.service import MonitorArgs, run_monitor
from serving.app import ServeApp
from serving.metrics import ServeMetrics


@dataclass
class Served:
    settings: Settings
    card: ModelCard
    store: Any
    app: ServeApp

    def answer(self, inputs: dict[str, np.ndarray]) -> dict[str, Prediction]:
        """Send one request per id, serve them, and read their predictions back."""
        producer = make_producer(self.settings)
        for rid, value in inputs.items():
            request = InferenceRequest(rid, self.card.name, value, time.time())
            producer.send(self.settings.request_topic(self.card.name), request.key, request.to_bytes())
        producer.flush(30)
        producer.close()
        self.app.run(max_records=len(inputs))
        records = read_topic(self.settings, self.settings.topic(T.PREDICTIONS), until_count=len(inputs))
        return {p.request_id: p for p in (Prediction.from_bytes(r.value) for r in records)}

    def correct_deferred(self, request_id: str, corrected: Any, decisions: int) -> tuple[list[Verdict], list[Decision]]:
        """An auditor claims the one deferred item (it must be ``request_id``) and corrects it;
        the verdict and the first ``decisions`` decisions as they come back on Kafka."""
        deadline = time.monotonic() + 60
        while self.store.queue_depth() < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        (alice,) = add_users(self.store, "alice")
        claim = self.store.claim(alice, 60, time.time())
        assert claim is not None and claim.item.request_id == request_id
        self.store.record_verdict(self.store.new_verdict_id(), claim.item_id, alice, "correct", corrected, time.time())
        verdicts = [Verdict.from_bytes(r.value)
                    for r in read_topic(self.settings, self.settings.topic(T.VERDICTS), until_count=1, timeout_s=60)]
        made = [Decision.from_bytes(r.value)
                for r in read_topic(self.settings, self.settings.topic(T.DECISIONS), until_count=decisions, timeout_s=60)]
        return verdicts, made


@contextmanager
def served_with_monitor(broker: Settings, tmp_path: Path, card: ModelCard, onnx_bytes: bytes) -> Iterator[Served]:
    """``card``'s model served on the embedded broker (no QC sampling), the monitor ingesting
    into a temporary SQLite store; both stopped on exit."""
    registry = ModelRegistry(tmp_path / "models")
    model = registry.publish(card, onnx_bytes)
    settings = dataclasses.replace(broker, topic_prefix=f"e{uuid.uuid4().hex[:8]}", state_dir=tmp_path / "state",
                                   models_dir=registry.root, qc_rate=0.0)
    ensure_model_topics(settings, [card.name])
    with make_store("sqlite", tmp_path) as store:
        stop = threading.Event()
        monitor = threading.Thread(target=run_monitor, args=(settings, MonitorArgs(outbox_interval_s=0.2), store, stop,
                                                             False, CollectorRegistry()))
        monitor.start()
        app = None
        try:
            app = ServeApp(settings, model, ServeMetrics(card.name, CollectorRegistry()))  # a registry of its own
            yield Served(settings, card, store, app)
        finally:
            if app is not None:
                app.close()
            stop.set()
            monitor.join(timeout=60)
