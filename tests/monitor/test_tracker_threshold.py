"""A threshold override (by hand or AUDITSTREAM_AUTO_TIGHTEN) changes the answers auto-accepted:
the tracker starts its audit statistics again for the effective threshold (the reviewer's
scenario: page, tighten, keep auditing)."""

from __future__ import annotations

import numpy as np

from auditstream.control import ControlState
from auditstream.registry import ModelCard, TensorSpec, TriageSpec
from auditstream.wire import Prediction, Route, Verdict, VerdictKind
from monitor.tracker import QCConfig, QCTracker

CARD = ModelCard(name="zip", version="1", task="classification", inputs=[TensorSpec("x", "float32", [None, 4])],
                 outputs=[TensorSpec("p", "float32", [None, 10])],
                 triage=TriageSpec(threshold=0.9, certified_risk=0.015, target_risk=0.02),
                 reference={"confidence_sample": []})
PI = 0.02


class Stream:
    """Answers accepted at ``threshold``: 7% wrong below confidence 0.95, 0.5% above (3.8% over [0.9, 1))."""

    def __init__(self, tracker: QCTracker, seed: int) -> None:
        self.tracker, self.rng, self.i = tracker, np.random.default_rng(seed), 0

    def predict(self, threshold: float, confidence: float | None = None) -> tuple[str, float]:
        c = float(self.rng.uniform(threshold, 1.0)) if confidence is None else confidence
        rid = f"r{self.i}"
        self.i += 1
        self.tracker.observe_prediction(Prediction(
            request_id=rid, model="zip", model_version="1", task="classification", output=1, confidence=c,
            route=Route.AUTO_QC, reason="", qc_inclusion_prob=PI, created_at_s=0.0))
        return rid, c

    def verdict(self, rid: str, c: float) -> None:
        err = self.rng.random() < (0.07 if c < 0.95 else 0.005)
        self.tracker.observe_verdict(Verdict(
            verdict_id="v" + rid, request_id=rid, model="zip", model_version="1", auditor="a",
            kind=VerdictKind.REJECT if err else VerdictKind.ACCEPT, decided_at_s=1.0, item_route=Route.AUTO_QC,
            inclusion_prob=PI, is_gold=False))

    def audit(self, threshold: float) -> None:
        self.verdict(*self.predict(threshold))


def page(stream: Stream):
    for _ in range(200):  # at most 10,000 audits; ~2,000 in practice
        for _ in range(50):
            stream.audit(0.9)
        s = stream.tracker.snapshot()[0]
        if s.over_budget:
            return s
    raise AssertionError("never paged at 3.8% against a 2% budget")


def test_after_the_runbook_tightens_the_page_clears_and_the_interval_never_flips():
    controls: dict[str, ControlState] = {}
    tracker = QCTracker(lambda m, v: CARD, QCConfig(min_inclusion_prob=PI), controls=lambda: controls)
    stream = Stream(tracker, seed=6)
    paged = page(stream)
    tau = paged.suggested_threshold
    assert tau is not None and tau > 0.95
    controls["zip"] = ControlState(model="zip", threshold_override={"1": tau})  # what AUTO_TIGHTEN publishes
    s = tracker.snapshot()[0]
    assert not s.over_budget and s.audited == 0 and "over_budget" in s.reason  # the old alarm: history
    for _ in range(12):  # the new population errs 0.5%
        for _ in range(500):
            stream.audit(tau)
        s = tracker.snapshot()[0]
        assert not s.over_budget and s.ci_low <= s.ci_high and s.budget_state != "over_budget"
        assert s.suggested_threshold is None
    assert s.audited == 6000 and s.budget_state == "within_budget" and s.ci_high < 0.02


def test_after_tightening_the_suggestion_never_goes_below_the_effective_threshold():
    """Tightened by hand to 0.92, still over budget ([0.92, 0.95) errs 7%): the suggestion comes
    from the audits at 0.92 and never goes back below it (the card's 0.9, or the old audits)."""
    tracker = QCTracker(lambda m, v: CARD, QCConfig(min_inclusion_prob=PI))
    stream = Stream(tracker, seed=7)
    page(stream)
    tracker.set_threshold("zip", "1", 0.92)
    paged_again = False
    for _ in range(100):
        for _ in range(100):
            stream.audit(0.92)
        s = tracker.snapshot()[0]
        if s.suggested_threshold is not None:
            assert s.suggested_threshold >= 0.92
        paged_again |= s.over_budget
    assert paged_again and s.audited == 10_000


def test_samples_accepted_under_the_old_threshold_do_not_enter_the_new_statistics():
    tracker = QCTracker(lambda m, v: CARD, QCConfig(min_inclusion_prob=PI))
    stream = Stream(tracker, seed=8)
    placed = [stream.predict(0.9) for _ in range(30)]  # accepted at 0.9, verdicts not in yet
    tracker.set_threshold("zip", "1", 0.9)  # the card's: nothing starts again
    tracker.set_threshold("zip", "1", 0.96)
    late = stream.predict(0.9, confidence=0.93)  # a consumer not yet told: below the new threshold
    fresh = [stream.predict(0.96) for _ in range(5)]
    for rid, c in placed + [late] + fresh:
        stream.verdict(rid, c)
    s = tracker.snapshot()[0]
    assert s.audited == 5 and "31 audits of answers accepted under another threshold left out" in s.reason
    tracker.observe_control({})  # override cleared: back to the card's threshold, statistics start again
    assert tracker.snapshot()[0].audited == 0
