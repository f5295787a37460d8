"""``auditstream rl promote``: shadow first, then off-policy evaluation, then (maybe) live.

    auditstream rl promote --candidate policy-cartpole-v1:3 --live policy-cartpole-v1

1. **Shadow.** The candidate serves in shadow mode (:class:`serving.app.ServeApp` with
   ``shadow_of``): its own consumer group reads the live model's request topic from the
   beginning until idle and answers every logged request; its answers go to ``predictions``
   flagged ``shadow`` and nothing acts on them (no decisions, actions, audit items or episode
   state). The report compares its actions with the live policy's on the same requests.
2. **OPE.** The live policy's logs (transitions + decisions + verdicts of ``--live``, built by
   :mod:`training.rl.stream_dataset`) give the candidate's WIS / DR / FQE estimates and the live
   policy's, each with its own action rule and neither routed (the logs' humans and fallbacks
   are no part of either: :mod:`training.rl.promotion`);
   :func:`training.rl.promotion.gate_from_dataset` decides.
3. **Record.** The decision with every number (gate, shadow report, dataset summary) is written to
   ``models/<candidate>/<version>/promotion.json`` and printed. If promoted, the live model's
   ``LIVE`` pointer moves to the candidate (``ModelRegistry.set_live``); a candidate published
   under another name is first published as a new version of the live name, and the new live
   version is announced on the control channel: running policy consumers started without a
   pinned version load it and switch between batches (serving/rollout.py).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from auditstream import finite_json
from auditstream.cli_args import POSITIVE, check_fields
from training.rl.args import BOOTSTRAP_RESAMPLES

log = logging.getLogger(__name__)

PROMOTION_FILE = "promotion.json"


@dataclass(frozen=True)
class PromoteArgs:
    """Arguments of ``auditstream rl promote`` (the gate's own are PromotionConfig's)."""

    candidate: str = field(default="", metadata={"help": "NAME[:VERSION] of the candidate (default version: latest)"})
    live: str = field(default="", metadata={"help": "NAME[:VERSION] of the live policy (default version: live)"})
    shadow_idle_s: float = field(default=5.0, metadata={
        "check": POSITIVE, "help": "end the shadow pass after this long without requests"})
    bootstrap: int = field(default=200, metadata={"check": BOOTSTRAP_RESAMPLES,
                                                  "help": "bootstrap resamples of the OPE intervals"})
    dry_run: bool = field(default=False, metadata={"help": "decide and record, but never move the LIVE pointer"})

    def __post_init__(self) -> None:
        check_fields(self)


def parse_ref(text: str) -> tuple[str, str | None]:
    """``name[:version]`` -> (name, version or None)."""
    name, _, version = text.partition(":")
    if not name or (version and not version.isdigit()):
        raise ValueError(f"model reference {text!r} must be NAME or NAME:VERSION (VERSION an integer)")
    return name, version or None


@dataclass
class ShadowReport:
    requests: int = 0  # requests the candidate answered in shadow
    compared: int = 0  # of those, requests the live policy also acted on
    agreement: float = float("nan")  # share of compared requests where both chose the same action
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """As JSON: agreement null (not NaN) when no request was compared, and says so."""
        out = dataclasses.asdict(self)
        if not self.compared:
            out.update(agreement=None, agreement_undefined="no request was answered by both the candidate in shadow "
                                                           "and the live policy")
        return out


def run_shadow(settings: Any, candidate: Any, live_name: str, idle_s: float = 5.0) -> ShadowReport:
    """Serve ``candidate`` in shadow on ``live_name``'s requests until idle; compare actions."""
    from auditstream import topics as T
    from auditstream.kafka import read_to_end
    from auditstream.wire import Decision, Prediction
    from serving.app import ServeApp
    from serving.metrics import ServeMetrics
    from prometheus_client import CollectorRegistry

    started = time.perf_counter()
    app = ServeApp(settings, candidate, ServeMetrics(candidate.card.name, CollectorRegistry(), role="shadow"), shadow_of=live_name)
    try:
        stats = app.loop.run(until_idle_s=idle_s)
    finally:
        app.close()
    report = ShadowReport(requests=stats.records_in, seconds=round(time.perf_counter() - started, 2))
    shadow: dict[str, Any] = {}
    live: dict[str, Any] = {}
    for r in read_to_end(settings, [settings.topic(T.PREDICTIONS), settings.topic(T.DECISIONS)]):
        if r.topic == settings.topic(T.PREDICTIONS):
            p = Prediction.from_bytes(r.value or b"")
            if p.shadow and p.model == candidate.card.name and p.model_version == candidate.card.version:
                shadow[p.request_id] = p.output
        else:
            d = Decision.from_bytes(r.value or b"")
            if d.model == live_name and d.source == "model":
                live[d.request_id] = d.output
    both = sorted(set(shadow) & set(live))
    report.compared = len(both)
    if both:
        report.agreement = float(np.mean([shadow[k] == live[k] for k in both]))
    return report


def candidate_policy(model: Any) -> Any:
    """A registered policy (candidate or live) as a NumpyPolicy with the probabilities it would
    *act* with: one-hot argmax for a greedy card (:func:`training.rl.policy_export.acting_policy`)."""
    from auditstream.tasks.policy import frame_stack
    from auditstream.tasks.policy import action_selection
    from training.rl.policy_export import NumpyPolicy, acting_policy

    if frame_stack(model.card) > 1:
        raise ValueError(f"{model.card.name} stacks {frame_stack(model.card)} frames; OPE on logged single "
                         "observations needs a policy of one observation")
    return acting_policy(NumpyPolicy.from_onnx(Path(model.onnx_path).read_bytes()), action_selection(model.card))


def promote(settings: Any, args: PromoteArgs, config: Any) -> dict[str, Any]:
    """Shadow, evaluate, decide, record; returns the record written to promotion.json."""
    from auditstream.registry import ModelRegistry
    from training.rl.promotion import gate_from_dataset
    from training.rl.stream_dataset import build_stream_dataset

    registry = ModelRegistry.from_settings(settings)
    cand_name, cand_version = parse_ref(args.candidate)
    live_name, live_version = parse_ref(args.live)
    candidate = registry.load(cand_name, cand_version or registry.latest(cand_name))
    live = registry.load(live_name, live_version)
    if (candidate.card.name, candidate.card.version) == (live.card.name, live.card.version):
        raise ValueError(f"candidate and live are the same model version {live.card.name}/{live.card.version}; "
                         "name the live version explicitly (--live NAME:VERSION) when the candidate is the latest")
    shadow = run_shadow(settings, candidate, live.card.name, args.shadow_idle_s)
    data, data_report = build_stream_dataset(settings, live.card.name, live.card.version)
    decision = gate_from_dataset(data, candidate_policy(candidate), config, bootstrap=args.bootstrap,
                                 candidate=f"{candidate.card.name}/{candidate.card.version}",
                                 live_name=f"{live.card.name}/{live.card.version}",
                                 live_policy=candidate_policy(live))  # both unrouted, estimated alike
    record: dict[str, Any] = {"decision": decision.to_dict(), "shadow": shadow.to_dict(), "dataset": data_report.to_dict(),
                              "decided_at_s": time.time(), "dry_run": args.dry_run,
                              "live_before": f"{live.card.name}/{registry.default_version(live.card.name)}"}
    from monitor.promotion import announce_recorded, append_record, recorded_decisions

    path = candidate.directory / PROMOTION_FILE
    recorded_decisions(path)  # a history that cannot be read stops us before LIVE moves
    finite_json.dumps(record, default=float)  # so does a record that would not be JSON (a NaN)
    record["kind"] = "rl_promote"
    if decision.promote and not args.dry_run:
        from auditstream.control import Rollout

        version = _make_live(registry, candidate, live.card.name)
        record["live_after"] = f"{live.card.name}/{version}"
        announce_recorded(settings, Rollout(live.card.name, version, reason=decision.reason[:1000],
                                            updated_at_s=time.time()), record, path,
                          "Restart them (a consumer reads LIVE when it starts)")
    append_record(path, record)  # beside the version's other decisions, atomically
    record["recorded_at"] = str(path)
    return record


def _make_live(registry: Any, candidate: Any, live_name: str) -> str:
    """Point ``live_name``'s LIVE at the candidate (published under that name first if needed)."""
    if candidate.card.name != live_name:
        card = dataclasses.replace(candidate.card, name=live_name,
                                   extra={**candidate.card.extra,
                                          "promoted_from": f"{candidate.card.name}/{candidate.card.version}"})
        candidate = registry.publish(card, Path(candidate.onnx_path).read_bytes())
    registry.set_live(live_name, candidate.card.version)
    return candidate.card.version
