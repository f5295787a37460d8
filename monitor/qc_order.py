"""The order the live QC statistics read the audits in: the predictions stream, not the order
the verdicts were decided in (docs/qc-statistics.md, "The order of the audits").

A betting confidence sequence and a CUSUM treat the order of their audits as time: each bet is
chosen from the audits before it, and Ville's inequality holds only if the order was fixed before
the outcomes were known. The order verdicts are decided in was not: auditors skip hard items (a
skip hands the item to someone else), hard items take longer, auditors filter their queue by
model and route — so right answers are decided first and the sequence sits too low early on.

So every QC sample of a version takes its place when its prediction is seen (serving writes the
prediction before any verdict can exist), in one first-in-first-out queue per version. A verdict
is held until every earlier QC sample of its version has its verdict; then the run of decided
samples at the head is counted, in queue order. What is shown is always a prefix of one
stream-ordered sequence, so it keeps that sequence's guarantee at every look, whatever made the
prefix end where it does (the same rule as ``certify --from-audits``, stack/recertify.py).

Three things are counted so that they are seen rather than hidden:

- **waiting** — verdicts held behind an earlier sample still without a verdict, and verdicts that
  came before their prediction (they wait for it, at most ``wait`` of them per version);
- **released unaudited** — a sample at the head is given up when more than ``wait`` verdicts are
  held behind it, or when the queue outgrows ``memory``, and the queue moves on without it. It
  still takes its turn (a :class:`Turn` without an audit): the tracker counts it as right for the
  lower bound and as wrong for the upper (qc/sequential.py, ``PartlyAuditedSequence``), since the
  samples given up are likely the hard ones and leaving them out would let the interval sit low.
  The point estimate is of the audits only; the count says how many were given up;
- **unplaced** — verdicts with no place in the queue: their sample was already released, or
  neither its prediction was seen nor the store listed it when the leader read it
  (``QCTracker.seed``; e.g. an id committed after a later one had been read) before more than
  ``wait`` such verdicts waited. They are left out: counting them where they arrive would be
  decision order again.

Samples take their place from two sources, whichever comes first: the predictions this process
reads, and the store's list of QC samples (every monitor's), which the leader reads on from its
last item id before publishing verdicts. Both are fixed before any verdict.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class Audit:
    """One audited QC answer, ready to be counted (what the verdict said and how it was drawn)."""

    request_id: str
    is_error: bool
    inclusion_prob: float
    parts: int | None = None  # a kind that accepts parts one by one: the answer's parts
    false_parts: int | None = None  # and how many of them the audit found false


@dataclass(frozen=True)
class Turn:
    """A QC sample's turn in stream order: its audit, or None when it was given up unaudited."""

    audit: Audit | None
    confidence: float
    inclusion_prob: float


@dataclass
class _Slot:
    confidence: float
    inclusion_prob: float
    audit: Audit | None = None


class StreamOrder:
    """One version's QC samples in stream order: ``place`` each as its prediction is seen,
    ``decide`` each as its verdict comes; both return the turns that may now be counted, in
    order (audited samples and samples given up)."""

    def __init__(self, wait: int, memory: int) -> None:
        if wait < 1 or memory < 1:
            raise ValueError(f"wait={wait} and memory={memory} must be >= 1")
        self.wait, self.memory = wait, memory
        self.queue: OrderedDict[str, _Slot] = OrderedDict()
        self.held = 0  # decided samples in the queue (behind an undecided one)
        self.early: OrderedDict[str, Audit] = OrderedDict()  # verdicts whose prediction is not seen yet
        self.gone: OrderedDict[str, None] = OrderedDict()  # counted or released: never placed again
        self.released = self.unplaced = 0

    @property
    def waiting(self) -> int:
        """Verdicts not yet counted: held behind an undecided sample or waiting for their prediction."""
        return self.held + len(self.early)

    def place(self, request_id: str, confidence: float, inclusion_prob: float) -> list[Turn]:
        """A QC sample's prediction: it takes the next place (a redelivery keeps its first)."""
        if request_id in self.queue or request_id in self.gone:
            return []
        self.queue[request_id] = _Slot(confidence, inclusion_prob)
        audit = self.early.pop(request_id, None)
        if audit is not None:
            return self.decide(audit)
        return self._drain()

    def decide(self, audit: Audit) -> list[Turn]:
        """A verdict (the first per request id; the caller drops redeliveries)."""
        slot = self.queue.get(audit.request_id)
        if slot is None:
            if audit.request_id in self.gone:
                self.unplaced += 1  # its sample was released before the verdict came
                return []
            self.early[audit.request_id] = audit
            if len(self.early) > self.wait:
                self.early.popitem(last=False)
                self.unplaced += 1
            return []
        if slot.audit is not None:
            return []
        slot.audit = audit
        self.held += 1
        return self._drain()

    def _drain(self) -> list[Turn]:
        """Count the decided samples at the head; give up an undecided head that holds more than
        ``wait`` verdicts behind it or makes the queue outgrow ``memory``."""
        ready: list[Turn] = []
        while self.queue:
            request_id, slot = next(iter(self.queue.items()))
            if slot.audit is None:
                if self.held <= self.wait and len(self.queue) <= self.memory:
                    break
                self.released += 1
            else:
                self.held -= 1
            ready.append(Turn(slot.audit, slot.confidence, slot.inclusion_prob))
            self.queue.popitem(last=False)
            self.gone[request_id] = None
            if len(self.gone) > self.memory:
                self.gone.popitem(last=False)
        return ready
