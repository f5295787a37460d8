"""Live quality control: how often are the auto-accepted answers wrong, and is that still within
what the model card certified? (docs/qc-statistics.md)

The monitor feeds every prediction and every verdict to one :class:`QCTracker`; per (model,
version) it keeps coverage (share auto-accepted), the audited error rate of auto-accepted
answers with a 95% interval, KS drift of confidences (rounded alike to the card's 6-decimal
reference, qc/drift.py), a CUSUM on audited errors, and — when the sequence shows the budgeted
rate over budget — a suggested tighter threshold. The audit statistics are of the version's
effective auto-accept threshold (:meth:`QCTracker.set_threshold`: the card's raised by a
threshold override); when it changes they start again, since the answers accepted change.

The error estimate is the Hajek (weighted) estimator (qc/binomial.py), exactly ``errors /
audited`` under uniform QC sampling; the interval shown is the anytime-valid confidence sequence
(qc/sequential.py), and the effective sample size is Korn-Graubard's ``n*`` capped at the audits,
a description only. The threshold suggestion judges each candidate by :func:`qc.binomial.shown_at_most`
with ``anytime=True``: the betting gambler against the budget, for uniform audits too, because it
is asked again at every snapshot while a version is over budget (a fixed-sample Clopper-Pearson
bound asked that often says "within budget" far more often than its level). Only verdicts on AUTO_QC
items count: they are the audited sample of answers that stood. A reject or correct verdict is
an error of the model's answer, accept is not, skip says nothing; gold items are auditor tests,
not traffic. Predictions and verdicts are deduplicated by request id (redeliveries).

**Kinds that accept parts one by one** (a detector's boxes, ``Task.accepts_parts``) promise a
false-discovery rate of accepted parts, not an error rate of answers. For them an audited QC
answer also counts its parts ``A`` and the false ones ``F`` (the kind's matching of the model's
boxes to the auditor's), and the tracker keeps the weighted (Hajek) ratio
``sum(F / pi) / sum(A / pi)`` with its anytime-valid confidence sequence (qc/sequential.py, with
exposures ``A / K``; ``K`` = the card's most parts per answer). The card's target risk is then
judged against that rate (budget state, over budget), while the answers' error rate is still
shown but not judged, and no CUSUM is designed: an answer with four boxes errs about four
times as often as each box.

The CUSUM needs an i.i.d. Bernoulli stream, which risk-weighted audits are not (they over-sample
low confidence). So each audit enters the CUSUM with probability ``r / pi_i`` (by a hash of the
request id, ``r`` = the smallest inclusion probability seen): every answer then reaches the
CUSUM with the same probability ``r``, whatever its confidence, and the chart sees a uniform
sample. Under uniform sampling every audit enters.

**The order of the audits** (monitor/qc_order.py). The sequences and the CUSUM are valid only if
the audits enter in an order fixed before their outcomes; the order verdicts are decided in is
not (auditors skip hard items, hard items take longer, queues are filtered), and with right
answers decided first the interval sat too low. So the audits enter in *stream order*: each QC
sample of a version takes its place in a first-in-first-out queue when its prediction is seen (or
the leading monitor reads it from the store: ``seed``), and a verdict is held until every earlier
sample of the version has its verdict; then the decided run at the head is counted (sums,
sequences, CUSUM, the audits of the threshold suggestion), in queue order. A sample still without
a verdict after more than ``QCConfig.order_wait`` verdicts were held behind it, or past the memory
bound, is given up (``qc_released_unaudited``): the samples given up are likely the hard ones, so
the sequences count it, at its place, as right for the lower bound and as wrong for the upper
(qc/sequential.py, ``PartlyAuditedSequence``), and both bounds stay valid; the estimate, the sums
and the CUSUM are of the audits only. A verdict with no place — its prediction never seen, or its
sample already given up — is left out (``audits_unplaced``); held ones are ``audits_waiting``.
The numbers: docs/qc-statistics.md, "The order of the audits".
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Mapping

import numpy as np

from auditstream import tasks
from auditstream.registry import ModelCard
from auditstream.settings import Settings
from auditstream.wire import Prediction, Route, TaskKind, Verdict, VerdictKind
from monitor.qc_order import Audit, StreamOrder, Turn
from qc.binomial import DEFAULT_MIN_INCLUSION_PROB, estimate_from_sums, shown_at_most
from qc.drift import MIN_CUSUM_P0, BernoulliCusum, ConfidenceWindow, design_bernoulli_cusum, ks_drift
from qc.sequential import BudgetState, PartlyAuditedSequence, SequenceConfig
from qc.snapshot import ModelQC
from qc.triage import DEFAULT_QC_SALT, derived_salt, hash_uniform, policy_for
from store.records import audit_error, audit_false_parts

if TYPE_CHECKING:
    from auditstream.control import ControlState
    from store.records import QCSample

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QCConfig:
    """How the tracker judges a model version (one object per monitor process)."""

    confidence: float = field(default=0.95, metadata={"help": "level of the confidence sequence (valid at every audit)"})
    min_inclusion_prob: float = field(default=0.005, metadata={
        "help": "smallest QC inclusion probability the triage policy gives (bounds the audit weights)"})
    ks_window: int = field(default=2000, metadata={"help": "live confidences in the KS window"})
    ks_min_window: int = field(default=200, metadata={"help": "fewest live confidences before KS runs"})
    ks_alpha: float = field(default=1e-3, metadata={"help": "KS p-value below which the reason reports drift"})
    cusum_shift: float = field(default=2.0, metadata={"help": "CUSUM detects p0 -> cusum_shift * p0"})
    cusum_arl0: float = field(default=200_000.0, metadata={"help": "in-control CUSUM chart entries per false alarm (an audit enters with probability "
                  "min inclusion prob / its own: under risk-weighted QC more audits per alarm, and per detection)"})
    suggest_threshold: bool = field(default=True, metadata={"help": "suggest a tighter threshold when over budget"})
    threshold_candidates: int = field(default=20, metadata={"help": "thresholds tried (Bonferroni-adjusted)"})
    memory: int = field(default=200_000, metadata={"help": "request ids / audits remembered per model version"})
    order_wait: int = field(default=2000, metadata={
        "help": "verdicts held behind a QC sample still without one before it is given up (released unaudited)"})

    def __post_init__(self) -> None:
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence={self.confidence} must be in (0, 1)")
        if not 0.0 < self.ks_alpha < 1.0 or self.cusum_shift <= 1.0 or self.cusum_arl0 <= 1.0:
            raise ValueError(f"need 0 < ks_alpha < 1, cusum_shift > 1, cusum_arl0 > 1; got "
                             f"{self.ks_alpha}, {self.cusum_shift}, {self.cusum_arl0}")
        if min(self.ks_window, self.ks_min_window, self.threshold_candidates, self.memory, self.order_wait) < 1:
            raise ValueError("ks_window, ks_min_window, threshold_candidates, memory and order_wait must be >= 1")
        SequenceConfig(1.0 - self.confidence, self.min_inclusion_prob)  # validates them

    @property
    def sequence(self) -> SequenceConfig:
        return SequenceConfig(alpha=1.0 - self.confidence, min_inclusion_prob=self.min_inclusion_prob)


def suggest_threshold(confidences, errors, inclusion_probs, current: float, budget: float,
                      confidence: float = 0.95, candidates: int = 20, *,
                      min_inclusion_prob: float | None = None) -> float | None:
    """The smallest threshold >= ``current`` whose audited answers are shown within ``budget``.

    Candidates are up to ``candidates`` quantiles of the audited confidences; a candidate ``t``
    passes when the audits with confidence >= ``t`` (in the order given: the tracker's stream
    order, monitor/qc_order.py) show the error rate at most ``budget`` at one-sided level
    ``(1 - confidence) / (2k)`` (:func:`qc.binomial.shown_at_most` with ``anytime=True``: the
    betting gambler against the budget, for a uniform sample too, whose wealth may be looked at
    after every audit — the tracker asks at every snapshot while the version is over budget, which
    a fixed-sample Clopper-Pearson bound does not survive). That is the upper side of a ``1 - (1 - confidence) / k`` interval: Bonferroni over the ``k``
    candidates, because picking the best of many thresholds on the same audits would otherwise
    overstate what they prove. ``min_inclusion_prob``: the policy's floor (weights at most its
    inverse; the monitor passes :attr:`QCConfig.min_inclusion_prob`). A suggestion for a human or
    the monitor to act on, not a certificate (qc/certify.py makes those).
    """
    c = np.asarray(confidences, dtype=np.float64)
    y = np.asarray(errors, dtype=np.float64)
    pi = np.asarray(inclusion_probs, dtype=np.float64)
    keep = c >= current
    if not keep.any():
        return None
    grid = np.unique(np.quantile(c[keep], np.linspace(0.0, 1.0, candidates, endpoint=False)))
    alpha = (1.0 - confidence) / (2 * len(grid))
    floor = min_inclusion_prob
    if floor is None and not np.all(pi == pi[0]):  # one floor for every candidate, from all the audits
        floor = min(float(pi.min()), DEFAULT_MIN_INCLUSION_PROB)
    for t in grid:  # ascending: the first that passes is the smallest
        above = c >= t
        if shown_at_most(y[above], pi[above], budget, alpha, min_inclusion_prob=floor, anytime=True):
            return float(t)
    return None


class _Recent:
    """A bounded set of recently seen keys (redelivery dedupe without unbounded memory)."""

    def __init__(self, size: int) -> None:
        self.size, self.keys = size, OrderedDict[str, None]()

    def add(self, key: str) -> bool:
        """True when ``key`` is new."""
        if key in self.keys:
            return False
        self.keys[key] = None
        if len(self.keys) > self.size:
            self.keys.popitem(last=False)
        return True


class _VersionState:
    def __init__(self, config: QCConfig) -> None:
        self.counts = {route: 0 for route in Route}
        self.seen_predictions, self.seen_verdicts = _Recent(config.memory), _Recent(config.memory)
        self.order = StreamOrder(config.order_wait, config.memory)  # QC samples in stream order (monitor/qc_order.py)
        self.sums = np.zeros(5)  # n, sum w, sum w y, sum w^2, sum w^2 y
        self.errors = 0
        self.audits: deque[tuple[float, float, int]] = deque(maxlen=config.memory)  # (confidence, pi, error)
        self.window = ConfidenceWindow(config.ks_window)
        self.ks_cache: tuple[int, float, float] | None = None  # (predictions seen, statistic, p-value)
        self.min_pi = 1.0
        self.card: ModelCard | None = None
        self.cusum: BernoulliCusum | None = None
        self.sequence: PartlyAuditedSequence | None = None  # made with the card (its budget is a grid point)
        # turns to replay into the sequences once the card is known: (error, pi, parts, false parts),
        # error None for a sample given up unaudited
        self.before_card: deque[tuple[int | None, float, int | None, int | None]] = deque(maxlen=config.memory)
        self.task: str | None = None  # the kind, from the predictions (verdicts do not carry it)
        self.details: dict | None = None  # the last prediction's: the rule's parameters before the card is read
        self.part_sums = np.zeros(2)  # sum F / pi, sum A / pi over audited answers (accepts_parts kinds)
        self.parts_audited = self.parts_false = 0
        self.part_sequence: PartlyAuditedSequence | None = None  # the judged sequence of those kinds
        self.max_parts: int | None = None
        # The auto-accept threshold the statistics above are of (the card's raised by an override,
        # QCTracker.set_threshold); None: not told yet (the card's assumed). A change of it changes
        # the population of accepted answers, so the audit statistics start again (_restart).
        self.threshold: float | None = None
        self.old_turns = 0  # QC samples placed before the last threshold change still to come out of the order
        self.left_out = 0  # audits of answers accepted under another threshold, left out of the statistics
        self.earlier: list[str] = []  # what the statistics under each earlier threshold showed (history)


# Versions the registry does not know (yet) that the tracker keeps statistics for at once. Any
# writer of the predictions or audit topics names the model and version, so without a bound a
# stream of made-up versions would grow the tracker, the QC history and the metrics' label sets
# without end; a real version missing from the registry for a moment is one of a few.
MAX_VERSIONS_WITHOUT_CARD = 64


class QCTracker:
    """Per (model, version) QC statistics from the predictions and verdicts streams. Versions
    the registry does not know are tracked up to :data:`MAX_VERSIONS_WITHOUT_CARD` at once;
    records of further unknown ones are left out (``untracked`` counts them, a warning names the
    first few)."""

    def __init__(self, cards: Callable[[str, str], ModelCard | None], config: QCConfig = QCConfig(),
                 salt: str = DEFAULT_QC_SALT,
                 controls: Callable[[], Mapping[str, ControlState] | None] | None = None) -> None:
        """``controls``: the control topic's states by model (``ControlView.states``), or None while
        they are not known yet (the view not caught up); read at every :meth:`snapshot` for the
        threshold overrides (:meth:`observe_control`)."""
        self.cards, self.config, self.controls = cards, config, controls
        # The CUSUM thinning hash is keyed by the secret QC salt too (settings.qc_salt): with a
        # public salt a producer could pick ids whose audits never reach the chart.
        self._cusum_salt = derived_salt(salt, "cusum")
        self.states: dict[tuple[str, str], _VersionState] = {}
        self.untracked = 0  # records of versions left out (MAX_VERSIONS_WITHOUT_CARD)
        self.store_position = -1  # how far the store's QC stream was read (store.qc_position): read on from there (StatsHooks.catch_up)

    def _state(self, model: str, version: str) -> _VersionState | None:
        """The statistics of ``(model, version)``, made at its first record; None for a version
        the registry does not know while :data:`MAX_VERSIONS_WITHOUT_CARD` others wait for theirs."""
        state = self.states.get((model, version))
        if state is None:
            card = self.cards(model, version)
            if card is None and sum(s.card is None for s in self.states.values()) >= MAX_VERSIONS_WITHOUT_CARD:
                self.untracked += 1
                if self.untracked <= 10:
                    log.warning("QC statistics leave out %r v%r: the registry does not know it and %d other unknown "
                                "versions are tracked already (a writer naming made-up versions?)", model[:100],
                                version[:100], MAX_VERSIONS_WITHOUT_CARD)
                return None
            state = self.states[(model, version)] = _VersionState(self.config)
        if state.card is None:  # look again until the registry has the card
            state.card = self.cards(model, version)
            if state.card is not None:
                state.max_parts = tasks.lookup(state.card.task).max_parts(state.card)
                self._start_judging(state)
                for error, pi, parts, false in state.before_card:
                    if error is None:
                        self._update_unaudited(state, pi)
                    else:
                        state.sequence.update(bool(error), pi)
                        self._update_part_sequence(state, pi, parts, false)
                state.before_card.clear()
        return state

    def _start_judging(self, state: _VersionState) -> None:
        """Fresh sequences and CUSUM for a version whose card is known."""
        per_part = state.max_parts is not None
        state.cusum = None if per_part else self._cusum_for(state.card)
        state.sequence = PartlyAuditedSequence(None if per_part else _budget(state.card), self.config.sequence)
        state.part_sequence = PartlyAuditedSequence(_budget(state.card), self.config.sequence) if per_part else None

    def set_threshold(self, model: str, version: str, threshold: float) -> None:
        """The auto-accept threshold the consumers of ``(model, version)`` apply now (the card's,
        raised by a threshold override: by hand or ``AUDITSTREAM_AUTO_TIGHTEN``). A changed
        threshold changes the answers accepted, so the audit statistics (estimate, sequences,
        CUSUM, the audits of the threshold suggestion) start again for the new one: an alarm
        under the old one stays in the QC history and the reason, not in the live state. The QC
        samples placed before the change (accepted under the old threshold), and any audited
        answer below the new threshold, are left out of the new statistics."""
        state = self.states.get((model, version))
        if state is None or not threshold == threshold:  # untracked, or NaN
            return
        current = state.threshold
        if current is None:
            current = state.card.triage.threshold if state.card is not None else None
            if current is not None and threshold == current:
                state.threshold = threshold  # as assumed: nothing to start again
                return
        if current is not None and threshold == current:
            return
        self._restart(state, threshold)

    def observe_control(self, controls: Mapping[str, ControlState]) -> None:
        """The control topic's states by model: each tracked version with a card gets its
        effective threshold (:meth:`auditstream.control.ControlState.threshold_for`, the card's
        where the model has no state or the version no override)."""
        for (model, version), state in list(self.states.items()):
            if state.card is None:
                continue
            control = controls.get(model)
            card_threshold = state.card.triage.threshold
            self.set_threshold(model, version, control.threshold_for(version, card_threshold)
                               if control is not None else card_threshold)

    def _restart(self, state: _VersionState, threshold: float) -> None:
        """Start the audit statistics again for a new effective threshold (:meth:`set_threshold`)."""
        before = state.threshold if state.threshold is not None else (
            state.card.triage.threshold if state.card is not None else None)
        if state.sums[0] > 0:
            summary = (f"threshold {before:.4f}: " if before is not None else "") + \
                f"{int(state.sums[0])} audits, {state.errors} errors"
            if state.card is not None and state.sequence is not None:
                report = state.part_sequence.report() if state.part_sequence is not None else state.sequence.report()
                summary += f", {report.state.value} ({report.low:.4f} .. {report.high:.4f})"
            if state.cusum is not None and state.cusum.alarm:
                summary += ", CUSUM ALARM"
            state.earlier.append(summary)
            del state.earlier[:-5]  # the last few: the QC history keeps the rest
        log.info("QC statistics start again at threshold %.4f (was %s)", threshold, before)
        state.threshold = threshold
        state.sums = np.zeros(5)
        state.errors = 0
        state.audits.clear()
        state.part_sums = np.zeros(2)
        state.parts_audited = state.parts_false = 0
        state.before_card.clear()
        state.old_turns = len(state.order.queue)  # stream order: these come out first
        if state.card is not None:
            self._start_judging(state)

    def _cusum_for(self, card: ModelCard) -> BernoulliCusum | None:
        budget = _budget(card)
        if budget is None:
            return None
        p0 = max(budget, MIN_CUSUM_P0)  # rarer errors are charted as 0.1%: fewer false alarms, slower
        try:
            return BernoulliCusum(design_bernoulli_cusum(p0, min(p0 * self.config.cusum_shift, 0.999),
                                                         self.config.cusum_arl0))
        except ValueError as e:
            log.warning("no CUSUM for %s v%s: %s", card.name, card.version, e)
            return None

    def observe_prediction(self, p: Prediction) -> None:
        state = self._state(p.model, p.model_version)
        if state is None:
            return
        state.task, state.details = p.task, p.details
        if not state.seen_predictions.add(p.request_id):
            return
        state.counts[p.route] += 1
        state.window.add(p.confidence)
        if p.route is Route.AUTO_QC and not p.shadow:  # a shadow answer is never audited
            self._count(state, state.order.place(p.request_id, p.confidence, p.qc_inclusion_prob))

    def observe_verdict(self, v: Verdict) -> None:
        if v.item_route is not Route.AUTO_QC or v.kind is VerdictKind.SKIP or v.is_gold:
            return
        state = self._state(v.model, v.model_version)
        if state is None:
            return
        rule = _rule(state)
        error = audit_error(v.kind, rule, v.model_output, v.corrected_output)
        parts = false = None
        if rule is not None and rule.accepts_parts:
            parts = rule.count_parts(v.model_output)
            false = audit_false_parts(v.kind, rule, v.model_output, v.corrected_output)
        self._decide(v.model, v.model_version, Audit(v.request_id, error, v.inclusion_prob, parts, false), v.verdict_id)

    def seed(self, samples: Iterable[QCSample]) -> int:
        """Replay the QC samples read back from the store (``store.qc_stream()``: every non-gold
        QC sample in stream order, the item ids, each with its first decisive verdict or none
        yet) so the audited error estimate, its bound and the CUSUM continue across a monitor
        restart, and verdicts still to come wait behind the open samples before them; returns
        how many audits counted. Verdicts published afterwards that the store already held are
        recognised by request id and not counted twice; a sample placed already (its prediction
        seen, or read before) keeps its place. Coverage and the KS window come from the
        predictions stream and start afresh."""
        counted = 0
        for s in samples:
            state = self._state(s.model, s.model_version)
            if state is None:
                continue
            counted += self._count(state, state.order.place(s.request_id, s.confidence, s.inclusion_prob))
            o = s.outcome
            if o is not None:
                audit = Audit(o.request_id, o.is_error, o.inclusion_prob, o.parts, o.false_parts)
                counted += self._decide(s.model, s.model_version, audit, o.request_id)
        return counted

    def _decide(self, model: str, version: str, audit: Audit, what: str) -> int:
        """One verdict's audit (the first per request id) takes its place in the stream order;
        returns how many audits that let count."""
        if not 0.0 < audit.inclusion_prob <= 1.0:
            log.warning("ignoring audit %s on %s: inclusion_prob %r not in (0, 1]", what, audit.request_id,
                        audit.inclusion_prob)
            return 0
        state = self._state(model, version)
        if state is None:
            return 0
        if not state.seen_verdicts.add(audit.request_id):  # redelivery or a second review: first counts
            return 0
        return self._count(state, state.order.decide(audit))

    def _count(self, state: _VersionState, ready: list[Turn]) -> int:
        """Count the turns now in stream order; returns how many were audits."""
        audits = 0
        for turn in ready:
            if state.old_turns > 0:  # placed before the threshold changed: of the old population
                state.old_turns -= 1
                state.left_out += turn.audit is not None
                continue
            if state.threshold is not None and not turn.confidence >= state.threshold:
                # accepted under a lower threshold (a consumer not yet told of the override)
                state.left_out += turn.audit is not None
                continue
            if turn.audit is None:
                self._unaudited(state, turn.inclusion_prob)
            else:
                self._audit(state, turn.audit, turn.confidence)
                audits += 1
        return audits

    def _unaudited(self, state: _VersionState, pi: float) -> None:
        """A QC sample given up without a verdict, at its place: the sequences take the worst case
        on each side (it is likely a hard one); the estimate and the CUSUM count audits only."""
        if state.sequence is not None:
            self._update_unaudited(state, pi)
        else:
            state.before_card.append((None, pi, None, None))

    @staticmethod
    def _update_unaudited(state: _VersionState, pi: float) -> None:
        state.sequence.unaudited_sample(pi)
        if state.part_sequence is not None:
            state.part_sequence.unaudited_sample(pi)

    def _audit(self, state: _VersionState, audit: Audit, confidence: float) -> None:
        """Count one audited QC answer, in stream order."""
        request_id, pi, parts, false_parts = audit.request_id, audit.inclusion_prob, audit.parts, audit.false_parts
        error = int(audit.is_error)
        w = 1.0 / pi
        state.sums += (1.0, w, w * error, w * w, w * w * error)
        state.errors += error
        state.audits.append((confidence, pi, error))
        state.min_pi = min(state.min_pi, pi)
        if parts is not None and false_parts is not None:
            state.part_sums += (false_parts * w, parts * w)
            state.parts_audited += parts
            state.parts_false += false_parts
        if state.sequence is not None:
            state.sequence.update(bool(error), pi)
            self._update_part_sequence(state, pi, parts, false_parts)
        else:
            state.before_card.append((error, pi, parts, false_parts))
        if state.cusum is not None and hash_uniform(request_id, salt=self._cusum_salt) < state.min_pi / pi:
            state.cusum.update(bool(error))

    @staticmethod
    def _update_part_sequence(state: _VersionState, pi: float, parts: int | None, false: int | None) -> None:
        if state.part_sequence is None or parts is None or false is None:
            return
        k = state.max_parts
        if k is None or not 0 <= false <= parts <= k:
            log.warning("audit with %s false of %s parts does not fit the card's %s parts per answer: not counted "
                        "in the false-discovery rate", false, parts, k)
            return
        state.part_sequence.update(false / k, pi, parts / k)

    def snapshot(self) -> list[ModelQC]:
        controls = self.controls() if self.controls is not None else None
        if controls is not None:
            self.observe_control(controls)
        return [self._model_qc(model, version, self._state(model, version))
                for model, version in sorted(self.states)]

    def _model_qc(self, model: str, version: str, s: _VersionState) -> ModelQC:
        cfg, card = self.config, s.card
        predictions = sum(s.counts.values())
        auto = s.counts[Route.AUTO] + s.counts[Route.AUTO_QC]
        n = int(s.sums[0])
        p, _, _, n_eff = (float(a) for a in estimate_from_sums(*s.sums, confidence=cfg.confidence))
        budget = _budget(card) if card is not None else None
        item_report = s.sequence.report() if s.sequence is not None else None
        low, high = (item_report.low, item_report.high) if item_report is not None else (0.0, 1.0)
        per_part = s.part_sequence is not None
        # the judged sequence: a kind that accepts parts one by one promises their false-discovery rate
        report = s.part_sequence.report() if per_part else item_report
        state = report.state if report is not None else BudgetState.NOT_JUDGED
        rule = _rule(s)
        accepts_parts = bool(rule and rule.accepts_parts)
        reasons = [f"{n} audits, {s.errors} errors"]
        if s.threshold is not None and card is not None and s.threshold != card.triage.threshold:
            reasons.append(f"at the overridden threshold {s.threshold:.4f} (the card's {card.triage.threshold:.4f})")
        if s.earlier:
            reasons.append("statistics started again at a threshold change; before: " + "; ".join(s.earlier))
        if s.left_out:
            reasons.append(f"{s.left_out} audits of answers accepted under another threshold left out")
        if accepts_parts:
            reasons.append(f"{s.parts_audited} audited parts, {s.parts_false} false")
        what = "false-discovery rate of accepted parts" if per_part else "error rate"
        if card is None:
            reasons.append("no model card")
        elif budget is None:
            reasons.append("card has no target risk: budget not judged")
        elif state is BudgetState.OVER:
            reasons.append(f"OVER BUDGET: {what} shown above {budget:.4f} (sequence lower bound {report.low:.4f})")
        elif state is BudgetState.VERIFIED:
            reasons.append(f"within budget, verified: {what} shown below {budget:.4f} (upper bound {report.high:.4f})")
        else:
            settle = f"; about {report.audits_to_settle} more audits would settle it" if report.audits_to_settle else ""
            reasons.append(f"budget {budget:.4f} not yet known: {report.low:.4f} <= {what} <= {report.high:.4f}{settle}")
        over = state is BudgetState.OVER
        suggested = None
        if over and cfg.suggest_threshold and s.audits and not per_part:
            c, pi, y = (np.array(a) for a in zip(*s.audits))
            current = s.threshold if s.threshold is not None else card.triage.threshold
            suggested = suggest_threshold(c, y, pi, current, budget, cfg.confidence,
                                          cfg.threshold_candidates, min_inclusion_prob=cfg.min_inclusion_prob)
            reasons.append(f"suggested threshold {suggested:.4f}" if suggested is not None
                           else "no audited threshold is within budget")
        order = s.order
        if order.waiting:
            reasons.append(f"{order.waiting} verdicts wait for an earlier QC sample's (stream order)")
        if order.released or order.unplaced:
            reasons.append(f"{order.released} QC samples released unaudited (in the bounds as right for the lower, "
                           f"wrong for the upper; not in the estimate), {order.unplaced} verdicts without a place in "
                           "the stream: not counted")
        ks_stat, ks_p = self._ks(s, predictions, reasons)
        if s.cusum is not None:
            reasons.append(f"CUSUM {'ALARM' if s.cusum.alarm else 'ok'} "
                           f"({s.cusum.statistic:.2f} of h={s.cusum.design.h_nats:.2f} nats)")
        return ModelQC(
            model=model, version=version, predictions=predictions, auto=auto, human=s.counts[Route.HUMAN],
            coverage=auto / predictions if predictions else None, audited=n, errors=s.errors,
            error_estimate=p if n else None, ci_low=low, ci_high=high,
            certified_risk=card.triage.certified_risk if card is not None else None, over_budget=over,
            ks_statistic=ks_stat, ks_pvalue=ks_p,
            cusum_statistic=s.cusum.statistic if s.cusum else None, cusum_alarm=bool(s.cusum and s.cusum.alarm),
            suggested_threshold=suggested, effective_sample_size=n_eff if n else 0.0, reason="; ".join(reasons),
            budget=budget, budget_state=state.value, audits_to_settle=report.audits_to_settle if report else None,
            parts_audited=s.parts_audited if accepts_parts else None,
            parts_false=s.parts_false if accepts_parts else None,
            part_fdr_estimate=float(s.part_sums[0] / s.part_sums[1]) if s.part_sums[1] > 0 else None,
            part_fdr_low=report.low if per_part else None, part_fdr_high=report.high if per_part else None,
            audits_waiting=order.waiting, qc_released_unaudited=order.released, audits_unplaced=order.unplaced,
        )

    def _ks(self, s: _VersionState, predictions: int, reasons: list[str]) -> tuple[float | None, float | None]:
        reference = (s.card.reference.get("confidence_sample") if s.card is not None else None) or []
        if len(s.window) < self.config.ks_min_window or len(reference) == 0:
            return None, None
        if s.ks_cache is None or s.ks_cache[0] != predictions:  # the test is O(n log n): rerun on news only
            # the card stores its sample at 6 decimals; `serve` publishes at 6 too, another producer
            # may not: ks_drift rounds both to that grid (qc.drift.REFERENCE_DECIMALS)
            result = ks_drift(s.window.values, reference)
            s.ks_cache = (predictions, result.statistic, result.pvalue)
        _, stat, pvalue = s.ks_cache
        if pvalue < self.config.ks_alpha:
            reasons.append(f"confidence DRIFT: KS D={stat:.3f}, p={pvalue:.2g}")
        return stat, pvalue


def _rule(state: _VersionState) -> tasks.Task | None:
    """The version's task kind: the card's, else the one its predictions said (verdicts do not
    carry it); None while neither was seen."""
    if state.card is not None:
        return tasks.rule_for(state.card.task, state.card)  # at the card's parameters (a detector's match_iou)
    # before the card: at the parameters the predictions recorded, as the store's reads judge them
    return tasks.rule_for(state.task, details=state.details) if state.task else None


def audit_weight_floor(settings: Settings) -> float:
    """The smallest QC inclusion probability the consumers' triage policy gives any model (the
    audit weights' bound), as they apply it (:func:`qc.triage.policy_for`)."""
    floors = [policy_for(settings, tasks.lookup(kind).min_qc_rate).min_inclusion_prob for kind in TaskKind]
    return min((f for f in floors if f > 0.0), default=SequenceConfig.min_inclusion_prob)


def _budget(card: ModelCard) -> float | None:
    """The error budget live audits are judged against: the card's *target* risk, the promise
    made to users (docs/qc-statistics.md, "Which budget"). Not its certified risk: that is an
    upper confidence bound proven at calibration, at or below the target; judging against it
    would flag a model that still keeps its promise (certified 1.4% for a 2% target: a model
    erring 1.6% of the time is within what users were promised). None (not judged) when the card
    has no target in (0, 1)."""
    target = card.triage.target_risk
    return float(target) if target is not None and 0.0 < target < 1.0 else None
