"""QC statistics survive a monitor restart: a tracker seeded from the store's QC samples in
stream order (``store.qc_stream`` -> ``QCTracker.seed``) has the same audited error estimate,
bound and CUSUM as the tracker that watched the predictions and the verdicts being published, on
SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterator

import pytest
from tests.store.store_factories import BACKENDS, add_users, audit_item, make_store
from tests.monitor.test_service import RecordingProducer

from auditstream.registry import ModelCard, ModelRegistry, TriageSpec
from auditstream.settings import Settings
from auditstream.wire import Route
from store import accounts
from monitor.service import StatsHooks, publish_outbox
from store import AuditStore, StoreConfig

T0 = 9_000.0
# What must not restart with the process (coverage and prediction counts may: they come from
# the predictions stream, which the consumer group resumes after its committed offsets).
AUDITED = ("audited", "errors", "error_estimate", "ci_low", "ci_high", "effective_sample_size", "certified_risk",
           "cusum_statistic", "cusum_alarm", "over_budget")  # fmt: skip


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AuditStore]:
    monkeypatch.setattr(accounts, "SCRYPT_N", 2**8)
    with make_store(request.param, tmp_path, StoreConfig(gold_rate=0.0, double_review_rate=0.3, seed=1)) as s:
        yield s


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    card = ModelCard(name="zip", version="1", task="sequence", inputs=[], outputs=[],
                     triage=TriageSpec(threshold=0.7, target_risk=0.05, delta=0.05, certified_risk=0.04, coverage=0.6,
                                       method="sgr"))  # fmt: skip
    # the registry numbers versions: this becomes zip version 1
    ModelRegistry(tmp_path / "models").publish(card, b"cards only: the monitor never loads the model")
    return Settings(topic_prefix="t", models_dir=tmp_path / "models", metrics_port=0)


def _decide_all(store: AuditStore, start: int, n: int, now_s: float, hooks: tuple[StatsHooks, ...] = ()) -> float:
    """Ingest ``n`` QC samples (mixed inclusion probabilities) and a deferred item, and decide
    every one: about a fifth are errors, some are skipped first, some reviewed twice. ``hooks``
    see the items' predictions, in ingest order, as a live monitor would."""
    # ids that sort in ingest order: the store numbers a batch in key order, so the live order of the
    # predictions and the store's stream order agree and a restart continues exactly
    items = [audit_item(f"q{i:04d}", Route.AUTO_QC, confidence=0.7 + (i % 7) / 25, inclusion_prob=(0.1, 0.5, 1.0)[i % 3],
                        version="1")
             for i in range(start, start + n)] + [audit_item(f"h{start}", version="1")]  # fmt: skip
    store.ingest_many(items, now_s)
    for h in hooks:
        for item in items:
            h.observe_prediction(item.prediction)
    alice, bob = store.accounts.get("alice"), store.accounts.get("bob")
    k = 0
    while True:
        for auditor in (alice, bob):
            claim = store.claim(auditor, 60, now_s)
            if claim is None:
                return now_s
            k += 1
            now_s += 1.0
            if k % 9 == 0:  # a skip first: says nothing, the item comes back
                store.record_verdict(store.new_verdict_id(), claim.item_id, auditor, "skip", None, now_s)
                continue
            kind, fix = ("reject", None) if k % 5 == 0 else ("correct", "99999") if k % 11 == 0 else ("accept", None)
            store.record_verdict(store.new_verdict_id(), claim.item_id, auditor, kind, fix, now_s)


def _hooks(settings: Settings, store: AuditStore) -> StatsHooks:
    from prometheus_client import CollectorRegistry

    return StatsHooks(settings, store, metrics_registry=CollectorRegistry())


def _audited(hooks: StatsHooks) -> dict:
    (snap,) = hooks.tracker.snapshot()
    return {name: getattr(snap, name) for name in AUDITED}


def test_a_restarted_tracker_continues_the_audited_statistics(store: AuditStore, settings: Settings) -> None:
    add_users(store, "alice", "bob")
    producer = RecordingProducer()
    live = _hooks(settings, store)  # the monitor before the restart: it saw every verdict published
    now = _decide_all(store, 0, 60, T0, (live,))
    publish_outbox(store, producer, settings, now, limit=10_000, on_verdict=live.observe_verdict, topic_log=producer)
    before = _audited(live)
    assert before["audited"] == 60 and 0 < before["errors"] < 60
    assert before["cusum_statistic"] > 0 and before["ci_low"] < before["error_estimate"] < before["ci_high"]

    cold = _hooks(settings, store)  # what a restart used to give: everything from zero
    assert cold.tracker.snapshot() == []
    restarted = _hooks(settings, store)
    assert restarted.seed_from_store(store) == 60
    assert _audited(restarted) == before  # estimate, bound and CUSUM exactly where they were

    # Verdicts recorded while the monitor was down are in the seed and still in the outbox:
    # publishing them after the seed must not count them twice.
    now = _decide_all(store, 60, 30, now + 10, (live,))
    after_down = _hooks(settings, store)
    assert after_down.seed_from_store(store) == 90
    publish_outbox(store, producer, settings, now, limit=10_000,
                   on_verdict=lambda v: (live.observe_verdict(v), after_down.observe_verdict(v)), topic_log=producer)  # fmt: skip
    assert _audited(after_down) == _audited(live) and _audited(live)["audited"] == 90


def test_the_history_read_is_in_stream_order_and_paged(store: AuditStore) -> None:
    add_users(store, "alice", "bob")
    _decide_all(store, 0, 12, T0)
    whole = list(store.audited_qc_history())
    assert [o.request_id for o in whole] == [f"q{i:04d}" for i in range(12)]  # ingest order, not decision order
    assert len({o.request_id for o in whole}) == len(whole) == 12  # first decisive verdict only
    assert list(store.audited_qc_history(page=5)) == whole  # keyset pages join up exactly
    assert {(o.model, o.model_version) for o in whole} == {("zip", "1")}
    assert list(store.audited_qc_history("zip", "2")) == [] and store.audited_qc_outcomes("zip") == whole


def test_only_versions_that_answer_have_qc_series_so_a_retired_versions_alerts_resolve(store: AuditStore,
                                                                                      settings: Settings) -> None:
    """The tracker keeps every version it saw and a restarted one is re-seeded with them all from
    the store; exporting them all kept a rolled-back version's ``qc_over_budget`` (and CUSUM
    alarm) at 1 for ever. Only versions with a prediction or a QC sample (any monitor's, read
    from the store) in the last ``version_idle_s`` have QC series."""
    import time

    from prometheus_client import CollectorRegistry

    add_users(store, "alice", "bob")
    _decide_all(store, 0, 60, T0)  # zip v1, audited (18 errors), then rolled back: nothing new from it
    registry = CollectorRegistry()
    hooks = StatsHooks(settings, store, metrics_registry=registry, version_idle_s=3.0)
    assert hooks.seed_from_store(store) == 60  # the restarted monitor knows v1 again
    (seeded,) = hooks.tracker.snapshot()
    assert seeded.version == "1" and seeded.errors == 18
    v1, v2 = {"model": "zip", "version": "1"}, {"model": "zip", "version": "2"}
    get = registry.get_sample_value

    hooks.observe_prediction(audit_item("live-0", Route.AUTO, version="2").prediction)  # v2 answers now
    hooks.tick(store, time.time())
    assert get("auditstream_qc_predictions", v2) == 1
    assert get("auditstream_qc_over_budget", v1) is None and get("auditstream_drift_cusum_alarm", v1) is None
    assert not [s for f in registry.collect() for s in f.samples if f.name.startswith(("auditstream_qc", "auditstream_drift"))
                and s.labels.get("version") == "1"]  # fmt: skip

    # a QC sample of v1 that another monitor ingested (read from the store): v1 answers again
    store.ingest(audit_item("q-late", Route.AUTO_QC, version="1"), T0)
    hooks.catch_up(store)
    hooks.tick(store, time.time())
    assert get("auditstream_qc_over_budget", v1) == 0 and get("auditstream_qc_audited_items", v1) == 60

    time.sleep(3.2)  # nothing from either since: both idle
    hooks.observe_prediction(audit_item("live-1", Route.AUTO, version="2").prediction)
    hooks.tick(store, time.time())
    assert get("auditstream_qc_over_budget", v1) is None and get("auditstream_qc_predictions", v2) == 2


def test_a_live_or_canary_version_keeps_its_qc_series_through_a_quiet_spell(store: AuditStore,
                                                                            settings: Settings) -> None:
    """An idle gap must not withdraw the series of a version that still answers the model's
    requests (its over-budget alert would resolve and fire again at every quiet spell): the
    registry's LIVE version and a rollout's canary keep theirs; a version neither live nor
    canary loses them once idle."""
    import time

    from prometheus_client import CollectorRegistry

    from auditstream.control import Rollout

    registry = ModelRegistry(settings.models_dir)
    for version in ("2", "3"):
        card = dataclasses.replace(registry.card("zip", "1"), version=version)
        registry.publish(card, b"cards only")
    registry.set_live("zip", "2")

    class Control:  # the rollout record a ControlView would have read from the control topic
        @staticmethod
        def rollouts() -> dict[str, Rollout]:
            return {"zip": Rollout("zip", live_version="2", canary_version="3", canary_share=0.1)}

        @staticmethod
        def wait_caught_up(timeout_s: float) -> bool:
            return False  # (nothing planned: this test looks at the metrics only)

    metrics = CollectorRegistry()
    hooks = StatsHooks(settings, store, control_view=Control(), metrics_registry=metrics, version_idle_s=1.0)
    for i, version in enumerate(("1", "2", "3")):
        hooks.observe_prediction(audit_item(f"r-{i}", Route.AUTO, version=version).prediction)
    time.sleep(1.2)  # all three idle now
    hooks.tick(store, time.time())
    get = metrics.get_sample_value
    assert get("auditstream_qc_predictions", {"model": "zip", "version": "2"}) == 1  # live
    assert get("auditstream_qc_predictions", {"model": "zip", "version": "3"}) == 1  # canary
    assert get("auditstream_qc_predictions", {"model": "zip", "version": "1"}) is None  # retired: withdrawn


def test_only_versions_that_answer_are_auto_tightened(store: AuditStore, settings: Settings) -> None:
    """An override for a retired version changes nothing and takes one of the control record's
    few places: the planner is given the versions that answer, as the metrics are."""
    import time

    from prometheus_client import CollectorRegistry

    add_users(store, "alice", "bob")
    _decide_all(store, 0, 300, T0)  # zip v1: audited, about a fifth wrong, far over its 5% budget
    hooks = StatsHooks(dataclasses.replace(settings, auto_tighten=True), store, control_view=CaughtUpControl({}),
                       metrics_registry=CollectorRegistry(), version_idle_s=1.0)
    hooks.seed_from_store(store)
    (seeded,) = hooks.tracker.snapshot()
    assert seeded.over_budget
    states = hooks.tick(store, time.time())  # v1 has not answered since the restart: retired
    assert not any(state.threshold_override for state in states)
    hooks.observe_prediction(audit_item("live-0", Route.AUTO, version="1").prediction)  # it answers again
    (state,) = hooks.tick(store, time.time())
    assert set(state.threshold_override) == {"1"}


def test_the_monitors_tracker_follows_the_override_it_published(store: AuditStore, settings: Settings) -> None:
    """Auto-tighten raises v1's threshold; once the control view reads that override back, the
    tracker the monitor runs starts v1's audit statistics again for the new threshold (the page of
    the old population does not stay up over the new one)."""
    import time

    from prometheus_client import CollectorRegistry

    published: dict = {}
    add_users(store, "alice", "bob")
    _decide_all(store, 0, 300, T0)  # zip v1: audited, about a fifth wrong, far over its 5% budget
    hooks = StatsHooks(dataclasses.replace(settings, auto_tighten=True), store, control_view=CaughtUpControl(published),
                       metrics_registry=CollectorRegistry(), version_idle_s=60.0)
    hooks.seed_from_store(store)
    hooks.observe_prediction(audit_item("live-0", Route.AUTO, version="1").prediction)
    (before,) = hooks.tracker.snapshot()
    assert before.over_budget
    (state,) = hooks.tick(store, time.time())
    assert set(state.threshold_override) == {"1"}
    published[state.model] = state  # the control topic, read back
    (after,) = hooks.tracker.snapshot()
    assert not after.over_budget and after.audited == 0 and before.audited > 0, after.reason


class CaughtUpControl:
    """A control view that has read the topic back; its states are ``published`` (what the
    monitor published, read back), nothing by default."""

    def __init__(self, published: dict) -> None:
        self.published = published

    def rollouts(self) -> dict:
        return {}

    def wait_caught_up(self, timeout_s: float) -> bool:
        return True

    def states(self) -> dict:
        return dict(self.published)
