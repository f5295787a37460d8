"""Shadow → canary → live on real parts: the embedded broker, a running ``serve`` consumer that
follows rollouts, two shadow candidates, the monitor ingesting into a SQLite store, an auditor
answering every audit item, and ``promote`` deciding on the paired audits.

Traffic flows the whole time. The gate refuses a worse candidate and accepts an equal one; a
candidate whose file is corrupt fails to load (counted; the live version keeps answering); a
canary answers exactly its hashed share; after the promotion the running consumer answers with
the new version without a restart; every request is answered exactly once, by the version its
records name."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from tests.conftest import tiny_card, tiny_classifier_onnx
from tests.serving.kafka_readers import read_topic
from tests.store.store_factories import add_users, make_store

from auditstream import topics as T
from auditstream.kafka import ensure_model_topics, make_producer
from auditstream.registry import ModelRegistry
from auditstream.wire import Decision, InferenceRequest, Prediction, VerdictKind
from monitor.promotion import PROMOTION_FILE, promote
from monitor.service import MonitorArgs, run_monitor
from qc.paired import PairedGateConfig
from qc.triage import derived_salt, hash_uniform
from serving.app import ServeApp
from serving.metrics import ServeMetrics
from store.shadow import ShadowAnswers

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
GATE = PairedGateConfig(margin=0.1)  # 48 pairs per route (40 compared requests) settle an identical candidate
CANARY_SHARE = 0.3


class Traffic(threading.Thread):
    """Requests for ``tiny`` at ``rate_per_s`` until stopped; remembers each id's send time."""

    def __init__(self, settings, rate_per_s: float = 25.0) -> None:
        super().__init__(daemon=True)
        self.settings, self.rate_per_s, self.sent = settings, rate_per_s, {}
        self._stop_event = threading.Event()

    def run(self) -> None:
        producer, rng = make_producer(self.settings), np.random.default_rng(0)
        try:
            while not self._stop_event.wait(1.0 / self.rate_per_s):
                rid = uuid.uuid4().hex
                request = InferenceRequest(rid, "tiny", rng.random((8, 8), dtype=np.float32) * 4, time.time())
                producer.send(self.settings.request_topic("tiny"), request.key, request.to_bytes())
                self.sent[rid] = request.created_at_s
            producer.flush(30)
        finally:
            producer.close()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=60)


class Auditor(threading.Thread):
    """Accepts every audit item as it arrives (the live answers are the truth of this test)."""

    def __init__(self, store) -> None:
        super().__init__(daemon=True)
        self.store, self.user = store, add_users(store, "alice")[0]
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            claim = self.store.claim(self.user, 60, time.time())
            if claim is None:
                self._stop_event.wait(0.1)
                continue
            self.store.record_verdict(self.store.new_verdict_id(), claim.item_id, self.user, VerdictKind.ACCEPT, None,
                                      time.time())

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=30)


def wait_until(condition, timeout_s: float = 120.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def published(tmp_path: Path) -> ModelRegistry:
    registry = ModelRegistry(tmp_path / "models")
    registry.publish(tiny_card(), tiny_classifier_onnx(seed=0))  # v1, live
    registry.set_live("tiny", "1")
    registry.publish(tiny_card(), tiny_classifier_onnx(seed=0))  # v2: the same answers (an equal candidate)
    registry.publish(tiny_card(), tiny_classifier_onnx(seed=1))  # v3: other weights (a worse candidate)
    broken = registry.publish(tiny_card(), tiny_classifier_onnx(seed=2))  # v4: its file is damaged below
    broken.onnx_path.write_bytes(broken.onnx_path.read_bytes()[:-7])
    return registry


def pairs_per_route(store, candidate: str) -> dict[str, int]:
    counts = Counter(a.route for a in ShadowAnswers(store).paired_audits("tiny", "1", candidate)
                     if a.candidate_wrong is not None)
    return dict(counts)


def test_shadow_canary_promotion_followed_without_restart(broker, tmp_path: Path) -> None:
    registry = published(tmp_path)
    settings = dataclasses.replace(broker, topic_prefix=f"p{uuid.uuid4().hex[:8]}", state_dir=tmp_path / "state",
                                   models_dir=registry.root, qc_rate=0.5)
    ensure_model_topics(settings, ["tiny"])
    metrics = CollectorRegistry()

    def metric(name: str) -> float | None:
        return metrics.get_sample_value(f"auditstream_serve_{name}", {"model": "tiny"})

    with make_store("sqlite", tmp_path) as store:
        stop_monitor = threading.Event()
        monitor = threading.Thread(target=run_monitor, args=(settings, MonitorArgs(outbox_interval_s=0.2), store,
                                                             stop_monitor, False, CollectorRegistry()))
        monitor.start()
        live = ServeApp(settings, registry.load("tiny"), ServeMetrics("tiny", metrics), follow_rollout=True)
        shadows = [ServeApp(settings, registry.load("tiny", v), ServeMetrics("tiny", CollectorRegistry(), role="shadow"),
                            shadow_of="tiny") for v in ("2", "3")]
        apps = [live, *shadows]
        runners = [threading.Thread(target=app.run, daemon=True) for app in apps]
        for t in runners:
            t.start()
        traffic, auditor = Traffic(settings), Auditor(store)
        traffic.start()
        auditor.start()
        try:
            # The worse candidate is refused on its pairs; LIVE stays.
            wait_until(lambda: sum(pairs_per_route(store, "3").values()) >= 20, what="pairs of v3")
            worse = promote(settings, "tiny", "3", config=GATE, store=store)
            assert (worse.promote, worse.code, registry.live_version("tiny")) == (False, "worse", "1")
            assert sum(s["candidate_only_wrong"] for s in worse.strata) > 0

            # A candidate that fails to load (as a canary): counted, and v1 keeps answering.
            broken = promote(settings, "tiny", "4", canary_share=CANARY_SHARE, store=store)
            assert broken.code == "canary"
            wait_until(lambda: metric("version_load_failures_total") == 1, what="the failed load")
            assert metric("canary_share") == 0.0

            # The equal candidate as a canary on 30% of the requests, acting.
            canary_announced = time.time()
            assert promote(settings, "tiny", "2", canary_share=CANARY_SHARE, store=store).code == "canary"
            wait_until(lambda: metric("canary_share") == CANARY_SHARE, what="the canary")
            canary_on = time.time()

            # Promotion once each route has enough pairs for the gate; the consumer follows it.
            wait_until(lambda: (p := pairs_per_route(store, "2")) and min(p.values()) >= 60, timeout_s=240,
                       what="pairs of v2 in every route")
            promoted_at = time.time()
            decision = promote(settings, "tiny", "2", config=GATE, store=store)
            assert decision.promote and decision.code == "not_worse", decision.reason
            # each shadow compared its answers with live v1's: every request, audited or not, is a pair
            assert [s["stratum"] for s in decision.strata] == ["traffic"]
            assert decision.strata[0]["n"] > sum(pairs_per_route(store, "2").values())
            assert registry.live_version("tiny") == "2"
            wait_until(lambda: metric("version_switches_total") == 1, what="the switch")
            switched = time.time()
            time.sleep(3.0)  # traffic answered by v2
        finally:
            traffic.stop()
            auditor.stop()
            # let the live consumer answer everything sent, then stop every app
            time.sleep(2.0)
            for app in apps:
                app.loop.stop()
            for t in runners:
                t.join(timeout=60)
            for app in apps:
                app.close()
            stop_monitor.set()
            monitor.join(timeout=60)

    records = read_topic(settings, settings.topic(T.PREDICTIONS))
    answers = [Prediction.from_bytes(r.value) for r in records]
    served = [p for p in answers if not p.shadow]
    counts = Counter(p.request_id for p in served)
    assert set(counts) == set(traffic.sent) and max(counts.values()) == 1  # none lost, none answered twice
    salt = derived_salt(settings.qc_salt, "canary")
    window = [p for p in served if canary_on <= p.created_at_s < promoted_at]
    for p in served:
        if p.created_at_s < canary_announced:
            assert p.model_version == "1"
        elif p.created_at_s >= switched:
            assert p.model_version == "2"
    for p in window:  # the canary answered exactly its hashed share
        assert p.model_version == ("2" if hash_uniform(p.request_id, salt) < CANARY_SHARE else "1")
    share = sum(p.model_version == "2" for p in window) / len(window)
    assert len(window) >= 50 and 0.15 < share < 0.45
    # every record names the version that made it
    version_of = {p.request_id: p.model_version for p in served}
    for r in read_topic(settings, settings.topic(T.DECISIONS)):
        d = Decision.from_bytes(r.value)
        if d.source == "model":
            assert d.model_version == version_of[d.request_id]
    assert metrics.get_sample_value("auditstream_serve_predictions_total",
                                    {"model": "tiny", "version": "2", "route": "AUTO"}) > 0
    history = json.loads((registry.root / "tiny" / "2" / PROMOTION_FILE).read_text())["decisions"]
    assert [(r["kind"], r["decision"]["code"], r.get("live_after")) for r in history] == [
        ("canary", "canary", "1"), ("paired", "not_worse", "2")]
    assert json.loads((registry.root / "tiny" / "3" / PROMOTION_FILE).read_text())["decisions"][0]["decision"]["code"] \
        == "worse"
