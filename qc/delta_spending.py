"""δ spending over the model versions certified on one calibration/certificate slice.

Every published version of a model carries a certificate: "with probability >= 1 - delta over
the certificate slice, the risk of auto-accepted answers is <= target". Training and
``auditstream retrain`` certify each new version on the *same* fixed slice, and which version
goes live is chosen after its certificate is seen. A version whose certificate happens to be
wrong (an unlucky slice for that model) looks best and gets promoted, so the promise must hold
for every version at once: P(some certificate on the slice is wrong) <= delta. Each at the full
delta, that chance grows with every round (20 rounds at delta 0.05: about 0.11, simulated in
tests/qc/test_delta_spending.py).

The schedule: the k-th certificate issued on a slice (k = 1 for the first training) is made at

    delta_k = delta * 6 / (pi^2 k^2),        sum over k >= 1 of delta_k = delta,

so a union bound makes every certificate ever issued on the slice hold at once with probability
>= 1 - delta, however many versions follow and whichever is promoted. The first version gets
0.61 delta (its Clopper-Pearson bound grows by ln(1/0.61) = 0.5 in the log-term, e.g. ln(9/delta) =
5.2 -> 5.7 at delta 0.05); the k-th pays ~2 ln k more. (The alternative delta/2 for the first and
the other half spread over k >= 2 gives k = 2 and 3 more but k = 1 and every k >= 4 less.)

``k`` comes from the registry, never from the caller alone (:func:`plan`): one more than the
versions of the model already certified on the slice (or than the highest index recorded, if a
version was removed: removing a version gives none of its delta back). A card from before this
schedule (no ``extra.delta_spending``) occupies an index and counts as having spent its recorded
``triage.delta`` in full; the family bound then is the sum actually spent plus what the schedule
still allows (``family_delta_bound``), above delta by what the old cards overspent. A card that
does not say which slice it was certified on counts as certified on this one (the safe side).
Certificates on items generated for them (the detector's labels rendered from the certificate
digits, the captioner's scenes) name the slice by how they were generated as well
(``CertificateSlice.rendering``): the same seed is the same slice whatever the count.

Pure: no I/O. The training scripts read the registry and hand the cards in
(training/selective.py, :func:`certificate_spending`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from auditstream.errors import BadArguments

# The --delta help of a family whose versions share one certificate slice (digits, zip-reader).
FAMILY_DELTA_HELP = ("the family delta: all versions certified on the certificate slice together fail with "
                     "probability <= delta (the k-th version certified on the slice, retrained ones included, "
                     "gets delta*6/(pi^2 k^2): qc/delta_spending.py)")

SCHEDULE = "delta_k = family_delta * 6 / (pi^2 k^2), k = 1, 2, ... per model and certificate slice"
EXTRA_KEY = "delta_spending"  # the card's extra field that records a version's spending
_SHARE = 6.0 / math.pi ** 2


class BadDelta(BadArguments):
    """A family delta outside (0, 1)."""


def _check_delta(delta: float) -> float:
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0.0 < delta < 1.0:
        raise BadDelta(f"delta={delta!r} must be a number in (0, 1) (the family's failure probability, e.g. 0.05)")
    return float(delta)


def _check_index(index: int) -> int:
    if isinstance(index, bool) or not isinstance(index, int) or index < 1:
        raise ValueError(f"index={index!r} must be an integer >= 1 (the first certificate on a slice is 1)")
    return index


def delta_at(family_delta: float, index: int) -> float:
    """The delta of the ``index``-th certificate on a slice: ``family_delta * 6 / (pi^2 index^2)``."""
    return _check_delta(family_delta) * _SHARE / _check_index(index) ** 2


def spent_through(family_delta: float, index: int) -> float:
    """What certificates ``1..index`` spend together (< ``family_delta`` for every index)."""
    return _check_delta(family_delta) * _SHARE * math.fsum(1.0 / j ** 2 for j in range(1, _check_index(index) + 1))


def left_from(family_delta: float, index: int) -> float:
    """What certificates ``index, index + 1, ...`` may spend together: ``family_delta`` minus
    what the schedule gave ``1..index-1``."""
    _check_index(index)
    return _check_delta(family_delta) - (spent_through(family_delta, index - 1) if index > 1 else 0.0)


@dataclass(frozen=True)
class CertificateSlice:
    """The data a certificate is computed on, as a card records it: the split's slice name, the
    split seed and fractions, and the sha256 of the slice's item indices (None: not known).

    ``rendering``: for a certificate on items generated from the slice rather than its items
    themselves, how they were generated (the detector's labels rendered from the certificate
    digits, the captioner's scenes drawn by the generator): a dict with at least ``seed`` and
    ``count``. Two renderings are the same data unless a key both record other than ``count``
    differs: the same seed with another count draws overlapping items (the same stream, longer or
    shorter), so those versions share the slice; another seed (or kind, or variant) is another,
    independent draw and starts its own count. None: the items themselves (digits, zip-reader)."""

    split: str
    split_seed: int | None = None
    split_fractions: dict[str, float] | None = None
    indices_sha256: str | None = None
    rendering: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def covers(self, card: Any) -> bool:
        """Whether ``card`` may have been certified on this slice. Only a card that positively
        records another slice is left out; one that records too little counts (the safe side)."""
        recorded = _recorded_slice(card)
        if recorded is not None:
            if recorded.get("split", self.split) != self.split:
                return False
            if not _same_rendering(recorded.get("rendering"), self.rendering):
                return False
            theirs = recorded.get("indices_sha256")
            if theirs is not None and self.indices_sha256 is not None:
                return theirs == self.indices_sha256
            seed, fractions = recorded.get("split_seed"), recorded.get("split_fractions")
        else:  # a card from before the schedule: what its training section says of the split
            seed, fractions = card.training.get("split_seed"), card.training.get("split_fractions")
        if seed is not None and self.split_seed is not None and seed != self.split_seed:
            return False
        if fractions is not None and self.split_fractions is not None and fractions != self.split_fractions:
            return False
        return True


def _same_rendering(theirs: Any, ours: dict[str, Any] | None) -> bool:
    """Whether two recorded renderings may be the same data: only a key both record, other than
    ``count``, that differs tells them apart; a rendering not recorded counts as the same (the safe side)."""
    if not isinstance(theirs, dict) or ours is None:
        return True
    return all(theirs[k] == ours[k] for k in set(theirs) & set(ours) - {"count"})


def _record(card: Any) -> dict[str, Any] | None:
    """The card's ``extra.delta_spending`` when it is well formed; None for a card from before
    the schedule or one whose record is damaged (then treated like an old card: the safe side)."""
    rec = card.extra.get(EXTRA_KEY) if isinstance(card.extra, dict) else None
    if not isinstance(rec, dict):
        return None
    index, delta = rec.get("index"), rec.get("delta")
    ok = (isinstance(index, int) and not isinstance(index, bool) and index >= 1
          and isinstance(delta, (int, float)) and not isinstance(delta, bool) and 0.0 < delta < 1.0
          and isinstance(rec.get("slice"), dict))
    return rec if ok else None


def _recorded_slice(card: Any) -> dict[str, Any] | None:
    rec = _record(card)
    return None if rec is None else rec["slice"]


def spent_by(card: Any) -> float:
    """The delta a published card's certificate spent: its recorded ``delta_spending.delta``,
    else (an old card) its ``triage.delta`` in full; 0 for a card that claims no delta."""
    rec = _record(card)
    if rec is not None:
        return float(max(rec["delta"], card.triage.delta or 0.0))  # whichever the card claims more of
    return float(card.triage.delta or 0.0)


@dataclass(frozen=True)
class DeltaSpending:
    """The delta a new certificate on ``slice`` may spend, and the family's account before it."""

    family_delta: float
    index: int
    delta: float
    slice: dict[str, Any]
    spent_before: float  # what the earlier certificates on the slice spent (old cards: in full)
    family_delta_bound: float  # spent_before + what the schedule allows from this index on
    earlier: list[dict[str, Any]] = field(default_factory=list)  # {"version", "index", "delta"} per earlier card
    schedule: str = SCHEDULE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """One line for a summary: this version's delta and where it stands in the family."""
        text = (f"delta {self.delta:.4g} = certificate {self.index} on this slice of family delta "
                f"{self.family_delta:g}")
        if self.family_delta_bound > self.family_delta * (1 + 1e-9):
            text += (f"; the earlier certificates on this slice spent {self.spent_before:.4g}, more than the schedule "
                     f"gives them (a version certified at its full delta), so all certificates on the slice hold "
                     f"together with probability >= {1 - self.family_delta_bound:.4g}")
        return text


def plan(family_delta: float, slice_: CertificateSlice, earlier: Iterable[Any]) -> DeltaSpending:
    """The spending of the next certificate on ``slice_``, given the model's published cards
    ``earlier`` (all of them: the ones on other slices are left out here)."""
    family_delta = _check_delta(family_delta)
    on_slice = [c for c in earlier if slice_.covers(c)]
    indices = [rec["index"] for rec in map(_record, on_slice) if rec is not None]
    index = max([len(on_slice), *indices]) + 1
    spent = math.fsum(spent_by(c) for c in on_slice)
    listed = [{"version": c.version, "index": (_record(c) or {}).get("index"), "delta": spent_by(c)}
              for c in sorted(on_slice, key=lambda c: int(c.version) if str(c.version).isdigit() else -1)]
    return DeltaSpending(family_delta, index, delta_at(family_delta, index), slice_.to_dict(), spent,
                         spent + left_from(family_delta, index), listed)
