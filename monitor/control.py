"""What the monitor tells the consumers each statistics tick (the control channel,
auditstream/control.py): the human queue depth per model, and — with auto-tightening on — a
higher auto-accept threshold for a model version whose audited error bound is over budget.

:func:`plan_control` is pure: snapshots + store figures + the states already on the topic in,
the states to publish out. Overrides only tighten and are sticky: the previous override is kept
until a person clears it, so a monitor restart (which reads the compacted topic back first)
never silently loosens a threshold.
"""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

from auditstream.control import DEFER_ALL, MAX_THRESHOLD_OVERRIDES, ControlState
from auditstream.wire import MAX_ID_CHARS, Route
from qc.snapshot import ModelQC
from store.records import StoreStats

log = logging.getLogger(__name__)
# Over budget with no threshold that passes the audited bound: defer every answer to humans with
# DEFER_ALL (1.01; defined with the control records in auditstream/control.py, since serving
# defers with it too before its view has read the topic).


def human_queue_depths(stats: StoreStats) -> dict[str, int]:
    depths: dict[str, int] = {}
    for q in stats.queue:
        if Route(q.route) == Route.HUMAN:
            depths[q.model] = depths.get(q.model, 0) + q.depth
    return depths


def plan_control(snapshots: Sequence[ModelQC], stats: StoreStats, previous: Mapping[str, ControlState],
                 auto_tighten: bool, now_s: float) -> list[ControlState]:
    """One state per model seen in the snapshots, the queue or the previous states. Each is
    within the bounds of a control record (``ControlState``): a version no record can name (over
    MAX_ID_CHARS: it came from a prediction, which does not bound it) or one past
    MAX_THRESHOLD_OVERRIDES gets no override, and is logged."""
    depths = human_queue_depths(stats)
    models = sorted({s.model for s in snapshots} | set(depths) | set(previous))
    by_model: dict[str, list[ModelQC]] = {}
    for s in snapshots:
        by_model.setdefault(s.model, []).append(s)
    states = []
    for model in models:
        before = previous.get(model)
        overrides = dict(before.threshold_override) if before else {}
        reasons = [before.reason] if before and before.threshold_override else []
        for snap in by_model.get(model, []):
            if not (auto_tighten and snap.over_budget):
                continue
            wanted = snap.suggested_threshold if snap.suggested_threshold is not None else DEFER_ALL
            if len(snap.version) > MAX_ID_CHARS or (snap.version not in overrides
                                                    and len(overrides) >= MAX_THRESHOLD_OVERRIDES):
                log.error("model %r version %.80r is over budget, but its threshold cannot be raised: a control record "
                          "takes versions of at most %d characters and %d overrides (clear old ones: auditstream "
                          "control clear)", model, snap.version, MAX_ID_CHARS, MAX_THRESHOLD_OVERRIDES)
                continue
            if wanted > overrides.get(snap.version, float("-inf")):
                overrides[snap.version] = wanted
                reasons = [_tighten_reason(snap, wanted)]
        states.append(ControlState(model=model, human_queue_depth=depths.get(model, 0),
                                   threshold_override=overrides, reason="; ".join(r for r in reasons if r),
                                   updated_at_s=now_s))
    return states


def _tighten_reason(snap: ModelQC, wanted: float) -> str:
    """What was judged (a kind that accepts parts one by one is judged on their false-discovery
    rate, and gets no threshold suggestion) and what the override does."""
    per_part = snap.part_fdr_low is not None
    what, low = ("audited false-discovery rate of accepted parts", snap.part_fdr_low) if per_part \
        else ("audited error rate", snap.ci_low)
    why = ""
    if wanted == DEFER_ALL:
        why = (" (this kind gets no threshold suggestion: every answer deferred)" if per_part
               else " (no threshold passes: every answer deferred)")
    return (f"version {snap.version}: {what} shown above its budget {snap.budget} (lower bound {low:.4f}); "
            f"threshold raised to {wanted:.4f}{why}")


def cleared(state: ControlState, version: str | None, now_s: float) -> ControlState:
    """``state`` without the override of ``version`` (all versions when None): a person's call."""
    overrides = {} if version is None else {v: t for v, t in state.threshold_override.items() if v != version}
    return ControlState(model=state.model, human_queue_depth=state.human_queue_depth, threshold_override=overrides,
                        reason=f"override cleared by an operator ({version or 'all versions'})", updated_at_s=now_s)
