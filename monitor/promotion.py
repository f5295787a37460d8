"""``auditstream promote``: shadow → (canary) → live for a model version of any task kind.

    auditstream serve --model digits --version 3 --shadow       # the candidate answers in shadow
    auditstream promote --model digits --candidate 3 --canary-share 0.1   # optional: 10% acting
    auditstream promote --model digits --candidate 3            # gate, record, move LIVE, announce

1. **Evidence.** The candidate answers the live requests in shadow (its predictions are flagged
   ``shadow``; nothing acts on them), and with a copy of the live version beside it says for each
   request whether the two answers are the same (store/shadow.py). When such comparisons exist,
   **every compared request is a pair** (the ``traffic`` stratum, qc/paired.py): the same answer
   is concordant without an audit, a difference is settled by the request's verdict or, nobody
   having audited it, counted against the candidate. Without them (a detector, whose boxes match
   with a tolerance, or a shadow that could not load the live version) each audited item of the live version with its label (the decisive verdict of its last needed
   review round: a double-reviewed item's adjudication, the label certify and retrain use) and a
   shadow answer is one pair, one stratum per route, counted in the store's ingest order up to a
   point (qc.promotion.pairs_by_stratum): a pair still waiting for its verdict before that point
   counts against the candidate, so which pairs count never depends on which verdicts auditors
   happened to give first. Either way a pair counts only if the
   candidate did not learn from it: a candidate retrained from verdicts (its card's
   ``data_hygiene``) is judged on the certify side of the request-id split only
   (qc/audit_split.py), computed with the store's own split key (``store.split_key``), as
   ``certify --from-audits`` judges it; a card whose ``data_hygiene`` names another store's key
   (``split_key_id``) is refused. A new shadow group reads the
   request topic from its start, so without this rule the audits that taught the candidate would
   also vouch for it.
2. **Decision** (:func:`decide_promotion`, pure parts in qc/promotion.py and qc/paired.py): the
   candidate's certificate must hold at its card's target (no looser than the live card's), and
   the paired bound must show it is not worse than live by the margin; too few pairs → no
   promotion, and the reason says about how many more paired audits are needed. The bound is a
   confidence sequence (qc/paired.py): valid at every number of pairs at once, so the decision
   may be asked for -- by this command, a bench, or the dashboard showing it live -- as often as
   anyone likes and acted on whenever it says PROMOTE, each time at the full ``delta``. Which
   look it is (counted from ``promotion.json``) is recorded and changes nothing.
3. **Record.** Every decision, either way, is appended to ``models/<model>/<V>/promotion.json``
   (beside the version, as ``rl promote`` does) with every number, and printed.
4. **Act** (unless ``dry_run``): promoted → the registry's ``LIVE`` pointer moves to the candidate,
   then a :class:`~auditstream.control.Rollout` on the control topic tells running consumers,
   which load, verify and warm the version up and switch between batches (serving/rollout.py).
   ``canary_share`` instead starts (or with 0 ends) a canary: the candidate answers that hashed
   share of the requests, acting; it needs the certificate, not yet the paired gate.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, TypeVar

from auditstream import finite_json, tasks
from auditstream.control import Rollout, announce_rollout
from auditstream.errors import AuditstreamError, ConfigError, ModelRefused
from auditstream.registry import ModelCard, ModelRegistry
from auditstream.settings import Settings
from qc.audit_split import CERTIFY, SplitKey, audit_part
from monitor.verdict_sets import learnt_split
from qc.paired import PairedCounts, PairedGateConfig, traffic_counts
from qc.promotion import PromotionDecision, decide, decide_canary, pairs_by_stratum
from store.shadow import ShadowAnswers

T = TypeVar("T")
PROMOTION_FILE = "promotion.json"
PAIRED = "paired"  # the record kind of a paired-gate decision


def decide_promotion(store: Any, registry: ModelRegistry, model: str, candidate: str, *,
                     config: PairedGateConfig = PairedGateConfig(), look: int | None = None,
                     shadow: ShadowAnswers | None = None) -> PromotionDecision:
    """The paired gate on what the store holds now, against the registry's live version (without
    a ``LIVE`` pointer: the newest version older than the candidate, the one consumers started
    before it was published serve). ``look``: which decision on this candidate this is
    (default: one more than recorded), recorded with it; every look is taken at the full delta,
    so the decision does not depend on it. ``shadow``: the store's :class:`ShadowAnswers`, when
    the caller keeps one (building one is a write transaction: it creates its tables)."""
    cand, live = registry.card(model, candidate), live_card(registry, model, candidate)
    strata, hygiene = judged_pairs(store, cand, live, config, shadow)
    if look is None:
        look = recorded_looks(registry, model, cand.version) + 1
    decision = decide(cand, live, strata, config, look)
    return dataclasses.replace(decision, reason=f"{decision.reason}; {hygiene}") if hygiene else decision


def may_judge(candidate: ModelCard, pairs: list[T], key: SplitKey,
              what: str = "audited items") -> tuple[list[T], str]:
    """The pairs (anything with a ``request_id``) that may judge ``candidate`` and, when some may
    not, why (the hygiene rule: a candidate that learnt from verdicts is judged on the certify
    side of the request-id split only, by ``key``, the split key of the store the pairs come
    from; module docstring, step 1)."""
    learnt = learnt_split(candidate)  # a damaged record raises: every pair could count what it learnt from
    if learnt is None:
        return pairs, ""
    share, learnt_key = learnt
    if learnt_key and learnt_key != key.key_id:
        # its train part was split by another store's key: this store's certify side may hold it
        raise ModelRefused(f"{candidate.name} v{candidate.version}", f"it learnt from verdicts split by the key "
                           f"{learnt_key}, and this audit store splits by {key.key_id}: which of its items the "
                           "candidate learnt from cannot be set apart here; judge it on the store it was retrained from")
    kept = [a for a in pairs if audit_part(a.request_id, share, key) == CERTIFY]
    return kept, (f"{len(pairs) - len(kept)} of {len(pairs)} {what} fall on the train side of the "
                  f"request-id split (certify share {share:g}), which v{candidate.version} may have learnt from: "
                  "not counted")


def judged_pairs(store: Any, candidate: ModelCard, live: ModelCard, config: PairedGateConfig,
                 shadow: ShadowAnswers | None = None) -> tuple[list[PairedCounts], str]:
    """The strata that judge ``candidate`` against ``live`` and why some requests do not count:
    the ``traffic`` stratum when the shadow compared its answers with live's, else the audited
    pairs per route (module docstring, step 1)."""
    shadow = shadow if shadow is not None else ShadowAnswers(store)
    compared = shadow.traffic_pairs(candidate.name, live.version, candidate.version) \
        if tasks.lookup(candidate.task).agreement_is_concordance else []
    if compared:
        kept, hygiene = may_judge(candidate, compared, store.split_key, "compared requests")
        return [traffic_counts([(p.same_answer, p.verdict) for p in kept])], hygiene
    # in the store's ingest order, items still waiting for a verdict included: the gate counts a
    # prefix of that order (qc.promotion.pairs_by_stratum), not the set auditors happen to have decided
    audits, hygiene = may_judge(candidate, shadow.paired_stream(candidate.name, live.version, candidate.version),
                                store.split_key)
    return pairs_by_stratum([(a.route, a.live_wrong, a.candidate_wrong, a.waiting) for a in audits], config.per_route,
                            config.margin), hygiene


def live_card(registry: ModelRegistry, model: str, candidate: str) -> ModelCard:
    """The card of the version ``LIVE`` names; without the pointer, of the newest version older
    than the candidate (what consumers started before it was published serve)."""
    return registry.card(model, registry.reference_version(model, candidate))


def promote(settings: Settings, model: str, candidate: str, *, dry_run: bool = False,
            canary_share: float | None = None, config: PairedGateConfig = PairedGateConfig(),
            store: Any = None, announce: bool = True) -> PromotionDecision:
    """Decide, record, and (unless ``dry_run``) move ``LIVE`` and announce; see the module docstring.
    ``store``: the audit store (default: the settings' store, opened and closed here)."""
    registry = ModelRegistry.from_settings(settings)
    history_path = registry.root / model / candidate / PROMOTION_FILE
    history = recorded_decisions(history_path)  # a file that cannot be read stops us before anything moves
    live_before = registry.live_version(model)
    if canary_share is not None:
        decision = decide_canary(registry.card(model, candidate), live_card(registry, model, candidate), canary_share)
    elif store is None:
        from store import open_store

        with open_store(settings.resolved_store_url, create=False) as own:
            decision = decide_promotion(own, registry, model, candidate, config=config)
    else:
        decision = decide_promotion(store, registry, model, candidate, config=config)
    record: dict[str, Any] = {"kind": "canary" if canary_share is not None else PAIRED, "decision": decision.to_dict(),
                              "decided_at_s": time.time(), "dry_run": dry_run, "live_before": live_before}
    acts = decision.promote or decision.code in ("canary", "canary_ended")
    # LIVE already names the candidate, and the last record that moved it says the announcement
    # failed (the broker was down): finish that promotion. (A LIVE set any other way is left
    # alone: announcing it would also end a canary someone runs.)
    moves = [r for r in history if r.get("live_after") == decision.candidate]
    unannounced = decision.code == "already_live" and bool(moves) and moves[-1].get("announced") is False
    if (acts or unannounced) and not dry_run:
        if decision.promote:
            registry.set_live(model, decision.candidate)  # first: a consumer started from now on reads it
        rollout = Rollout(model, registry.live_version(model) or decision.live,
                          decision.candidate if decision.canary_share else None, decision.canary_share,
                          reason=decision.reason[:1000], updated_at_s=time.time())
        record["live_after"] = rollout.live_version
        if announce:
            announce_recorded(settings, rollout, record, history_path,
                              "Run the same auditstream promote again once the broker answers: it announces "
                              "without moving anything else")
    append_record(history_path, record)
    return decision


def rollback(settings: Settings, model: str, version: str, reason: str, *, announce: bool = True) -> dict[str, Any]:
    """``auditstream rollback``: make ``version`` live again at once -- no gate: a person decided
    (an over-budget alarm, a bad promotion) -- and end any canary. The version's files are
    verified first (checksum, graph safety, memory budget: what a consumer will check); LIVE
    moves, running consumers are told, and the move is appended to the version's
    ``promotion.json`` as ``kind: rollback`` with the reason. The version LIVE names already is
    announced again, moving nothing: that ends a canary of another version (a canary leaves LIVE
    where it was) and finishes a move whose announcement failed."""
    if not reason.strip():
        raise ConfigError("--reason", reason, "a few words on why, for the record (e.g. 'v3 over budget')")
    registry = ModelRegistry.from_settings(settings)
    history_path = registry.root / model / version / PROMOTION_FILE
    recorded_decisions(history_path)  # a history that cannot be read stops us before LIVE moves
    registry.load(model, version)  # ModelRefused (one line) for a missing or damaged version
    live_before = registry.live_version(model)
    record: dict[str, Any] = {"kind": "rollback", "reason": reason[:1000], "decided_at_s": time.time(),
                              "dry_run": False, "live_before": live_before, "live_after": version}
    if live_before != version:
        registry.set_live(model, version)  # first: a consumer started from now on reads it
    if announce:
        announce_recorded(settings, Rollout(model, version, reason=f"rollback: {reason}"[:1000],
                                            updated_at_s=time.time()), record, history_path,
                          "Run the same auditstream rollback again once the broker answers: it announces "
                          "without moving anything else")
    append_record(history_path, record)
    return record


def recorded_looks(registry: ModelRegistry, model: str, version: str) -> int:
    """How many paired-gate decisions ``promotion.json`` records for this version (a count for the
    record: a look spends no delta, qc/paired.py)."""
    return sum(1 for r in recorded_decisions(registry.root / model / version / PROMOTION_FILE) if r.get("kind") == PAIRED)


def announce_recorded(settings: Settings, rollout: Rollout, record: dict[str, Any], history_path: Path,
                      how_to_finish: str) -> None:
    """Announce ``rollout`` after LIVE moved and say in ``record`` whether it went out. When it did
    not, the record is appended now (LIVE moved: the history must say so) and
    :class:`PromotionIncomplete` says what happened and ``how_to_finish``."""
    try:
        announce_rollout(settings, rollout)
    except Exception as e:
        record["announced"], record["announce_error"] = False, repr(e)[:500]
        append_record(history_path, record)
        raise PromotionIncomplete(
            f"LIVE of {rollout.model} names v{rollout.live_version}, but announcing it to the running consumers "
            f"failed ({e}); they still serve what they served. {how_to_finish}") from e
    record["announced"] = True


class PromotionIncomplete(AuditstreamError):
    """LIVE moved, but the running consumers were not told (the message says how to finish)."""


def recorded_decisions(path: Path) -> list[dict[str, Any]]:
    """The decisions ``promotion.json`` records (an old ``rl promote`` file: its one record).
    :class:`ModelRefused` naming the file when it is not such a history (truncated, not UTF-8,
    another shape): promote stops before it moves anything rather than lose the history."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as e:  # ValueError: not JSON, or not UTF-8
        raise ModelRefused(path, f"the promotion history cannot be read ({type(e).__name__}: {str(e)[:200]}); "
                           "restore it, or move it aside to start a new history") from None
    if isinstance(obj, dict) and isinstance(obj.get("decisions"), list) \
            and all(isinstance(r, dict) for r in obj["decisions"]):
        return obj["decisions"]
    if isinstance(obj, dict) and "decisions" not in obj:
        return [{"kind": "rl_promote", **obj}]  # what `rl promote` wrote before it appended
    raise ModelRefused(path, "the promotion history is not {\"decisions\": [objects...]}; restore it, or move it "
                       "aside to start a new history")


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append to the version's decision history, atomically (a reader sees the old or the new file).
    Written as strict JSON: a NaN or infinity (an older release recorded one for a shadow that
    compared no request) is written as null, this project's "undefined"."""
    history = finite_json.nulled(recorded_decisions(path) + [record])
    text = finite_json.dumps({"decisions": history}, indent=2, sort_keys=True, default=_json_default)
    fd, tmp = tempfile.mkstemp(prefix=".promotion-", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _json_default(value: Any) -> Any:
    return float(value) if hasattr(value, "__float__") else str(value)
