"""The live QC statistics read the audits in stream order, not in the order they were decided
(monitor/qc_order.py, docs/qc-statistics.md "The order of the audits").

A betting confidence sequence (and a CUSUM) is valid only if the audits enter in an order fixed
before their outcomes are known. Auditors decide easy items first (hard ones are skipped and come
back), so the decision order puts correct answers first: the under gambler then wins early and
the sequence shows "within budget" for a model that is exactly at it."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from tests.monitor.test_service import RecordingProducer
from tests.store.store_factories import BACKENDS, add_users, audit_item, make_store

from auditstream.registry import ModelCard, ModelRegistry, TensorSpec, TriageSpec
from auditstream.settings import Settings
from auditstream.wire import Prediction, Route, Verdict, VerdictKind
from monitor.qc_order import Audit, StreamOrder, Turn
from monitor.service import StatsHooks, publish_outbox
from monitor.tracker import QCConfig, QCTracker
from qc.sequential import ErrorSequence, SequenceConfig
from store import AuditStore, StoreConfig, accounts
from store.qc_history import _model_qc

BUDGET = 0.05


def _card(model: str, version: str) -> ModelCard:
    return ModelCard(name=model, version=version, task="classification", inputs=[TensorSpec("x", "float32", [None, 4])],
                     outputs=[TensorSpec("p", "float32", [None, 10])],
                     triage=TriageSpec(threshold=0.9, certified_risk=BUDGET, target_risk=BUDGET))


def _prediction(i: int, version: str = "1", route: Route = Route.AUTO_QC, confidence: float = 0.95,
                shadow: bool = False) -> Prediction:
    return Prediction(request_id=f"r{i}", model="zip", model_version=version, task="classification", output=1,
                      confidence=confidence, route=route, reason="", qc_inclusion_prob=1.0, created_at_s=float(i),
                      shadow=shadow)


def _verdict(i: int, error: bool, version: str = "1", kind: VerdictKind | None = None) -> Verdict:
    kind = kind or (VerdictKind.REJECT if error else VerdictKind.ACCEPT)
    return Verdict(verdict_id=f"v{i}", request_id=f"r{i}", model="zip", model_version=version, auditor="a", kind=kind,
                   decided_at_s=float(i), item_route=Route.AUTO_QC, inclusion_prob=1.0)


def simulate_outcome_dependent_auditing(streams: int, items: int, seed: int = 20261203,
                                        config: QCConfig = QCConfig(min_inclusion_prob=1.0)) -> dict[str, float]:
    """``streams`` monitors, each watching ``items`` QC samples (uniform QC, pi = 1) of a model
    erring exactly at its budget (5%). Item i is predicted at time i and decided after a delay:
    about 5 items for a right answer, about 150 for a wrong one (hard items are skipped and wait
    for another auditor). Predictions and verdicts reach the tracker in time order. Returns the
    share of streams whose sequence ever said "within budget, verified" (its upper bound below
    the budget: the truth), which Ville's inequality bounds by alpha / 2 = 2.5%."""
    rng = np.random.default_rng(seed)
    verified = below = 0
    for _ in range(streams):
        errors = rng.random(items) < BUDGET
        decided = np.arange(items) + rng.exponential(np.where(errors, 150.0, 5.0))
        events = sorted([(float(i), 0, i) for i in range(items)] + [(float(t), 1, i) for i, t in enumerate(decided)])
        tracker = QCTracker(_card, config)
        for _, is_verdict, i in events:
            if is_verdict:
                tracker.observe_verdict(_verdict(i, bool(errors[i])))
            else:
                tracker.observe_prediction(_prediction(i))
        sequence = tracker.states[("zip", "1")].sequence
        report = sequence.report()
        verified += report.state.value == "within_budget"  # rejections are kept: "at some look"
        below += report.high < BUDGET
    return {"streams": streams, "verified_wrongly": verified / streams, "upper_below_truth": below / streams}


VILLE_LIMIT = 0.025 + 2 * np.sqrt(0.025 * 0.975 / 200)  # alpha / 2, plus two standard errors of 200 streams


def test_outcome_dependent_auditing_keeps_the_sequence_valid() -> None:
    # Decision order (before 2026-12): "within budget, verified" in 25% of 200 streams (seed 20261203);
    # stream order: 1%.
    result = simulate_outcome_dependent_auditing(streams=200, items=300)
    assert result["verified_wrongly"] <= VILLE_LIMIT, result


def test_samples_given_up_count_as_errors_in_the_upper_bound() -> None:
    # A short wait gives up many samples, mostly the errors (decided ~30x later). Left out of the
    # sequence (2026-12-03) they made it say "within budget, verified" wrongly in 92% of the streams
    # (seed 20261203); counted as wrong in the upper sequence and as right in the lower: 0%.
    result = simulate_outcome_dependent_auditing(streams=200, items=300,
                                                 config=QCConfig(min_inclusion_prob=1.0, order_wait=20))
    assert result["verified_wrongly"] <= VILLE_LIMIT, result


# --------------------------------------------------------------------------------------------
# the queue


def _tracker(**config) -> QCTracker:
    return QCTracker(_card, QCConfig(min_inclusion_prob=1.0, **config))


def _snapshot(tracker: QCTracker):
    (qc,) = tracker.snapshot()
    return qc


def test_held_verdicts_are_counted_in_stream_order() -> None:
    tracker = _tracker()
    confidences = [0.91, 0.92, 0.93, 0.94]
    for i, c in enumerate(confidences):
        tracker.observe_prediction(_prediction(i, confidence=c))
    tracker.observe_prediction(_prediction(9, route=Route.AUTO))  # not a QC sample: takes no place
    tracker.observe_verdict(_verdict(2, True))
    tracker.observe_verdict(_verdict(1, False))
    qc = _snapshot(tracker)
    assert (qc.audited, qc.audits_waiting) == (0, 2) and "2 verdicts wait" in qc.reason
    tracker.observe_verdict(_verdict(0, True))  # the head: r0, r1, r2 count, in that order
    qc = _snapshot(tracker)
    assert (qc.audited, qc.errors, qc.audits_waiting) == (3, 2, 0)
    state = tracker.states[("zip", "1")]
    assert [a[0] for a in state.audits] == confidences[:3]
    expected = ErrorSequence(BUDGET, SequenceConfig(min_inclusion_prob=1.0))
    for error in (True, False, True):
        expected.update(error, 1.0)
    assert np.array_equal(state.sequence.lower.state.log_under, expected.state.log_under)
    assert np.array_equal(state.sequence.lower.state.log_over, expected.state.log_over)
    assert state.sequence.upper is None  # nothing given up: one sequence


def test_redeliveries_count_once_and_keep_their_first_place() -> None:
    tracker = _tracker()
    for i in (0, 1, 0, 1):
        tracker.observe_prediction(_prediction(i))
    for v in (_verdict(1, True), _verdict(1, True), _verdict(1, False, kind=VerdictKind.ACCEPT)):
        tracker.observe_verdict(v)  # held, then redelivered while held
    assert _snapshot(tracker).audits_waiting == 1
    tracker.observe_verdict(_verdict(0, False))
    tracker.observe_verdict(_verdict(0, True))
    tracker.observe_prediction(_prediction(0))  # a prediction redelivered after its audit counted
    qc = _snapshot(tracker)
    assert (qc.audited, qc.errors, qc.audits_waiting, qc.qc_released_unaudited) == (2, 1, 0, 0)
    assert tracker.states[("zip", "1")].order.queue == {}


def test_a_verdict_before_its_prediction_waits_for_it_and_one_never_placed_is_left_out() -> None:
    tracker = _tracker(order_wait=2)
    tracker.observe_prediction(_prediction(0))
    tracker.observe_verdict(_verdict(5, True))  # its prediction is late (another partition lags)
    assert (_snapshot(tracker).audited, _snapshot(tracker).audits_waiting) == (0, 1)
    tracker.observe_prediction(_prediction(5))  # placed behind r0, already decided
    tracker.observe_verdict(_verdict(0, False))
    qc = _snapshot(tracker)
    assert (qc.audited, qc.errors, qc.audits_waiting, qc.audits_unplaced) == (2, 1, 0, 0)
    for i in (7, 8, 9):  # predicted before a restart: never seen; the early buffer keeps order_wait of them
        tracker.observe_verdict(_verdict(i, True))
    qc = _snapshot(tracker)
    assert (qc.audited, qc.audits_waiting, qc.audits_unplaced) == (2, 2, 1)
    assert "1 verdicts without a place in the stream" in qc.reason


def test_a_sample_never_audited_is_released_after_order_wait_verdicts_and_counted() -> None:
    tracker = _tracker(order_wait=3)
    for i in range(6):
        tracker.observe_prediction(_prediction(i))
    for i in (1, 2, 3):
        tracker.observe_verdict(_verdict(i, False))
    assert (_snapshot(tracker).audited, _snapshot(tracker).audits_waiting) == (0, 3)  # at the limit: still held
    tracker.observe_verdict(_verdict(4, True))  # a fourth behind r0: r0 is given up
    qc = _snapshot(tracker)
    assert (qc.audited, qc.errors, qc.audits_waiting, qc.qc_released_unaudited) == (4, 1, 0, 1)
    assert "1 QC samples released unaudited" in qc.reason
    sequence = tracker.states[("zip", "1")].sequence  # r0 at its place: right in the lower, wrong in the upper
    assert (sequence.audits, sequence.unaudited, sequence.lower.audits, sequence.upper.audits) == (4, 1, 5, 5)
    lower, upper = (ErrorSequence(BUDGET, SequenceConfig(min_inclusion_prob=1.0)) for _ in range(2))
    for first, seq in ((False, lower), (True, upper)):
        for error in (first, False, False, False, True):
            seq.update(error, 1.0)
    assert np.array_equal(sequence.lower.state.log_over, lower.state.log_over)
    assert np.array_equal(sequence.upper.state.log_under, upper.state.log_under)
    assert (qc.ci_low, qc.ci_high) == (lower.report().low, upper.report().high)
    tracker.observe_verdict(_verdict(0, True))  # too late: its place is gone
    qc = _snapshot(tracker)
    assert (qc.audited, qc.errors, qc.audits_unplaced) == (4, 1, 1)


def test_the_memory_bound_releases_the_oldest_undecided_samples() -> None:
    order = StreamOrder(wait=100, memory=3)
    assert [order.place(f"r{i}", 0.9, 0.5) for i in range(3)] == [[], [], []]
    assert order.place("r3", 0.9, 0.5) == [Turn(None, 0.9, 0.5)]  # r0 given up: its turn, unaudited
    assert order.place("r4", 0.8, 0.5) == [Turn(None, 0.9, 0.5)]
    assert (order.released, list(order.queue)) == (2, ["r2", "r3", "r4"])
    audit = Audit("r2", False, 0.5)
    assert order.decide(audit) == [Turn(audit, 0.9, 0.5)] and order.waiting == 0
    with pytest.raises(ValueError):
        StreamOrder(wait=0, memory=3)


def test_shadow_answers_and_versions_each_keep_their_own_order() -> None:
    tracker = _tracker()
    tracker.observe_prediction(_prediction(0, shadow=True))  # a candidate's shadow answer: never audited
    tracker.observe_prediction(_prediction(1, version="2"))
    tracker.observe_prediction(_prediction(2))
    tracker.observe_verdict(_verdict(2, True))  # not held behind the shadow answer nor version 2's sample
    v1, v2 = tracker.snapshot()
    assert (v1.version, v1.audited, v1.audits_waiting) == ("1", 1, 0)
    assert (v2.version, v2.audited, v2.audits_waiting) == ("2", 0, 0)


def test_snapshots_stored_before_the_fields_existed_still_load() -> None:
    tracker = _tracker()
    tracker.observe_prediction(_prediction(0))
    qc = _snapshot(tracker)
    old = {k: v for k, v in dataclasses.asdict(qc).items()
           if k not in ("audits_waiting", "qc_released_unaudited", "audits_unplaced")}
    assert _model_qc(old).audits_waiting is None and _model_qc(dataclasses.asdict(qc)) == qc


# --------------------------------------------------------------------------------------------
# a restart: the store's QC samples in stream order, open ones included


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AuditStore]:
    monkeypatch.setattr(accounts, "SCRYPT_N", 2**8)
    with make_store(request.param, tmp_path, StoreConfig(gold_rate=0.0, double_review_rate=0.0, seed=1)) as s:
        yield s


def test_a_restart_keeps_the_stream_order_and_the_open_samples(store: AuditStore, tmp_path: Path) -> None:
    card = ModelCard(name="zip", version="1", task="sequence", inputs=[], outputs=[],
                     triage=TriageSpec(threshold=0.7, target_risk=0.05, certified_risk=0.04))
    ModelRegistry(tmp_path / "models").publish(card, b"cards only")
    settings = Settings(topic_prefix="t", models_dir=tmp_path / "models", metrics_port=0)
    hooks = lambda: StatsHooks(settings, store, metrics_registry=CollectorRegistry())  # noqa: E731
    add_users(store, "a", "b", "c")
    items = [audit_item(f"q{i}", Route.AUTO_QC, confidence=0.8 + i / 100, inclusion_prob=0.5, version="1")
             for i in range(6)] + [audit_item("h0", version="1")]
    store.ingest_many(items, 9_000.0)
    live = hooks()
    for item in items:
        live.observe_prediction(item.prediction)
    auditors = {name: store.accounts.get(name) for name in "abc"}
    claims, now = {}, 9_000.0

    def claim(name: str) -> None:
        c = store.claim(auditors[name], 600, now)
        claims[c.item.request_id] = (name, c.item_id)

    def decide(request_id: str, kind: str) -> None:
        nonlocal now
        now += 1.0
        name, item_id = claims.pop(request_id)
        store.record_verdict(store.new_verdict_id(), item_id, auditors[name], kind, None, now)

    claim("a")  # h0, deferred: claimed first, never decided here
    claim("b")  # q0: held open
    claim("c"), decide("q1", "reject"), claim("c"), decide("q2", "accept"), claim("c")  # c holds q3
    assert set(claims) == {"h0", "q0", "q3"}
    samples = list(store.qc_stream())
    assert [s.request_id for s in samples] == [f"q{i}" for i in range(6)]  # stream order; deferred items left out
    assert [s.outcome is not None for s in samples] == [False, True, True, False, False, False]
    assert list(store.qc_stream(page=2)) == samples and list(store.qc_stream("zip", "2")) == []
    assert [o.request_id for o in store.audited_qc_history()] == ["q1", "q2"]

    producer = RecordingProducer()
    publish = lambda *h: publish_outbox(store, producer, settings, now, limit=1000, topic_log=producer,  # noqa: E731
                                        on_verdict=lambda v: [x.observe_verdict(v) for x in h])
    publish(live)
    restarted = hooks()
    assert restarted.seed_from_store(store) == 0  # q1 and q2 wait behind q0, as in the live monitor
    qc = restarted.tracker.snapshot()[0]
    assert (qc.audited, qc.audits_waiting) == (0, 2) == (live.tracker.snapshot()[0].audited,
                                                         live.tracker.snapshot()[0].audits_waiting)
    decide("q0", "accept")
    decide("q3", "reject")
    publish(live, restarted)  # q1 and q2 again (redelivered): counted once
    for h in (live, restarted):
        qc = h.tracker.snapshot()[0]
        assert (qc.audited, qc.errors, qc.audits_waiting) == (4, 2, 0)
        assert [a[0] for a in h.tracker.states[("zip", "1")].audits] == pytest.approx([0.8, 0.81, 0.82, 0.83])
    fields = ("audited", "errors", "error_estimate", "ci_low", "ci_high", "budget_state", "cusum_statistic")
    assert {f: getattr(restarted.tracker.snapshot()[0], f) for f in fields} == {
        f: getattr(live.tracker.snapshot()[0], f) for f in fields}


def test_a_sample_whose_ingest_commits_after_a_later_ones_is_placed_all_the_same(store: AuditStore, tmp_path: Path) -> None:
    """Two monitors ingest at once: the item with the lower id commits last. Reading on from the
    highest id seen would skip it for good (its verdict then never counts); reading up to the
    store's final position places it once its transaction ends, in id order."""
    from concurrent.futures import ThreadPoolExecutor

    from store.store import _INSERT_ITEM

    ModelRegistry(tmp_path / "models").publish(_card("zip", "1"), b"cards only")
    settings = Settings(topic_prefix="t", models_dir=tmp_path / "models", metrics_port=0)
    leader = StatsHooks(settings, store, metrics_registry=CollectorRegistry())
    late, early = (audit_item(rid, Route.AUTO_QC, confidence=0.9, inclusion_prob=0.5, version="1")
                   for rid in ("late", "early"))
    other = ThreadPoolExecutor(1)  # another connection: this thread's is inside the open ingest below
    try:
        assert other.submit(leader.seed_from_store, store).result() == 0
        if store._db.kind == "sqlite":  # one writer at a time: the second ingest waits for the first
            store.ingest_many([late], 9_000.0)
            store.ingest_many([early], 9_000.0)
        else:
            with store._db.write() as cur:
                cur.run(_INSERT_ITEM, store._item_row(late, 9_000.0))  # takes the lower id, commits last
                other.submit(store.ingest_many, [early], 9_000.0).result()
                other.submit(leader.catch_up, store).result()
                assert not leader.tracker.states.get(("zip", "1")) or not leader.tracker.states[("zip", "1")].order.queue
        # On PostgreSQL the final position waits for the oldest open transaction of the whole
        # server (pg_snapshot_xmin): another test's, on the shared server, may hold it a moment.
        deadline = time.monotonic() + 60
        while True:
            other.submit(leader.catch_up, store).result()
            state = leader.tracker.states.get(("zip", "1"))
            if (state is not None and len(state.order.queue) == 2) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        ids = dict(store._db.query("SELECT request_id, id FROM {p}items"))
        assert ids["late"] < ids["early"]
        assert list(leader.tracker.states[("zip", "1")].order.queue) == ["late", "early"]
        assert other.submit(leader.catch_up, store).result() == 0  # nothing read twice
        assert list(leader.tracker.states[("zip", "1")].order.queue) == ["late", "early"]
    finally:
        other.shutdown()
