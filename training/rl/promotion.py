"""The promotion gate: may a candidate policy replace the live one?

A pure function of numbers: the candidate's off-policy estimates on logs of the live policy,
and the live policy's value on the same logs, *estimated the same way*. What is judged is the
*difference* candidate − live, with both sides' uncertainty: when the two estimates were
bootstrapped over the same resamples of the same episodes (WIS, DR and the live value share
them), the lower end of the paired difference's percentile interval; otherwise (FQE resamples
groups of episodes) the conservative candidate lower bound − live upper bound. The candidate is
promoted only if that lower end is above ``min_improvement``: a candidate that merely might be
better stays in shadow, and one equal to the live policy is never promoted (its difference is 0
on every resample when both are estimated by the same estimator). (Comparing the candidate's
lower bound with the live *point* estimate ignored the live side's noise.) The decision carries
every number it was made from, so ``rl promote`` can record it as it is.

**Both sides unrouted.** The logs are *routed*: where the live policy was unsure, triage sent
the step to a human, and a human or the safe-action fallback acted. The live policy's logged
return includes those actions; an off-policy estimate of a candidate does not (it is what the
candidate would earn acting on every step -- what humans would have answered where the live
policy did not defer is not in the logs). So :func:`gate_from_dataset` compares like with like:
given the live policy (``live_policy``, ``rl promote`` passes it), the live side is the same
estimator applied to the live policy's own action rule on the same logs and resamples -- both
unrouted. That value is in the logs only where they give the live policy's actions support: at
a step the fallback (or a human logged one-hot) took, they do not, and the gate says
``no_support`` (below) rather than compare an extrapolation. Without ``live_policy``, the logged
mean return stands for the live side only when no step of the logs was routed away from the
model; otherwise :class:`GateRefused` says to pass it.

Decision table (first matching row wins):

==========================================================  ========  =====================
condition                                                   promote   reason code
==========================================================  ========  =====================
fewer logged episodes than ``min_episodes``                 no        too_few_episodes
a required estimate puts more than ``max_unsupported`` on   no        no_support
actions the log gave propensity 0
a required estimate or difference lower bound is not finite no        no_estimate
a required estimate has fewer effective episodes than       no        too_few_effective_episodes
``min_effective_episodes``
required difference lower bound(s) > min_improvement        yes       lower_bound_beats_live
otherwise                                                   no        not_better
==========================================================  ========  =====================

"Required" is ``config.estimator`` alone, or every estimator given when ``require_all``; each is
compared with the live estimate of the same name (or with the one live estimate given). The
estimates of both sides are checked. **Support**: an estimate whose policy puts probability on
actions the log gave propensity 0 -- at a step it can reach (``details.unsupported_mass``), or
summed over an episode (``details.unsupported_probability``, :mod:`training.rl.ope_stats`) -- is
of a quantity the logs do not show (WIS conditions on the logged actions, FQE and DR extrapolate
Q), whichever way the bootstrap falls. On routed logs that is the live policy's own side: at a
deferred step the log holds the human's or the fallback's action one-hot, and the live policy's
unrouted action rule gives the other actions probability (a worse candidate was promoted 20 of
20 times on such logs). An estimate is not finite when no logged episode supports
it (:mod:`training.rl.ope_stats`: the target never takes the logged actions); its effective
episodes are ``details.effective_sample_size`` (Kish, of the importance weights; an estimate
without it is not checked): below ``min_effective_episodes`` its interval rests on a handful of
episodes and is not trusted.
``config.human_steps`` says what the estimates assume about steps a human acted on
(:mod:`training.rl.ope_humans`): ``as_logged`` or ``model``. ``exclude`` is refused (a
:class:`~auditstream.errors.ConfigError` from :class:`PromotionConfig`): the episodes no human
acted in are selected by the actions taken along them -- under the logging policy, episodes
whose actions kept them out of the states humans handle -- so both sides' values and their
difference are biased (on the toy MDP a candidate 0.9 worse was promoted in 10 of 10 logs).
:func:`gate_from_dataset` computes the inputs from an offline dataset and a candidate policy.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from auditstream.cli_args import COUNT, FRACTION, NON_NEGATIVE, PROBABILITY, SHARE, check_fields
from auditstream.errors import AuditstreamError, ConfigError
from auditstream.finite_json import finite_or_none
from training.rl.ope import Estimate
from training.rl.ope_stats import SUPPORT_TOLERANCE

ESTIMATORS = ("wis", "dr", "fqe")
MIN_EFFECTIVE_EPISODES = 20.0
EXCLUDE_REFUSED = ("as_logged or model: 'exclude' keeps the episodes no human acted in, which the actions taken "
                   "select, so it biases the candidate - live difference too (a far worse candidate was promoted); "
                   "it is for reports (rl train-offline --ope-human-steps), not for promotion")


class GateRefused(AuditstreamError, ValueError):
    """The gate cannot compare the candidate with the live policy on these inputs; the message
    says what to pass."""


@dataclass(frozen=True)
class PromotionConfig:
    """How strict the gate is."""

    estimator: str = field(default="dr", metadata={"help": "OPE estimator whose lower bound decides (wis, dr, fqe)"})
    require_all: bool = field(default=False, metadata={"help": "require every estimator's lower bound to beat live"})
    min_improvement: float = field(default=0.0, metadata={"check": NON_NEGATIVE,
                                                          "help": "margin over the live value, in return units"})
    min_episodes: int = field(default=100, metadata={"check": COUNT, "help": "fewest logged episodes to decide on"})
    max_unsupported: float = field(default=SUPPORT_TOLERANCE, metadata={
        "check": SHARE, "help": "most probability either policy may put on actions the logs gave propensity 0 "
                                "(at any step, and per episode)"})
    min_effective_episodes: float = field(default=MIN_EFFECTIVE_EPISODES, metadata={
        "check": NON_NEGATIVE, "help": "fewest effective episodes (Kish, of the importance weights) an estimate of "
                                       "either side may rest on"})
    gamma: float = field(default=0.99, metadata={"check": FRACTION, "help": "discount of the compared values"})
    # 0.99, not 0.95: percentile bootstrap intervals under-cover on such logs, and at 0.95 an
    # equal candidate was promoted in 3.3-5.6% of toy logs against the 2.5% aimed at; at 0.99 in
    # 0.8-1.6% (docs/rl.md, "Measured coverage of the intervals and of the gate").
    confidence: float = field(default=0.99, metadata={
        "check": PROBABILITY, "help": "two-sided confidence level of the intervals (0.99: what keeps an equal "
                                      "candidate's promotions under 2.5%%, docs/rl.md)"})
    human_steps: str = field(default="as_logged", metadata={
        "help": "steps a human acted on: as_logged (one-hot propensities: humans a known deterministic policy) "
                "or model (fitted human action probabilities); exclude is for reports only"})

    def __post_init__(self) -> None:
        from training.rl.ope_humans import HUMAN_STEPS

        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator {self.estimator!r} not one of {ESTIMATORS}")
        if self.human_steps not in HUMAN_STEPS:
            raise ValueError(f"human_steps {self.human_steps!r} not one of {HUMAN_STEPS}")
        if self.human_steps == "exclude":
            raise ConfigError("--human-steps", self.human_steps, EXCLUDE_REFUSED)
        check_fields(self)  # NaN and infinities too, before the shadow pass starts (auditstream/cli_args.py)


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    code: str
    reason: str
    candidate: str
    live: str
    live_value: float | None  # None: undefined (live_estimates says why)
    live_interval: tuple[float | None, float | None]
    candidate_estimates: dict[str, dict[str, Any]]
    config: dict[str, Any]
    n_episodes: int
    live_estimates: dict[str, dict[str, Any]] = field(default_factory=dict)  # by the estimator they face
    comparison: str = ""  # how the live side was valued (LIVE_UNROUTED, LIVE_LOGGED or given)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


LIVE_UNROUTED = ("unrouted: the live policy's own action rule, estimated off-policy by the same estimator on "
                 "the same logs and resamples as the candidate")
LIVE_LOGGED = "logged: the live policy's mean discounted return (no step of the logs was routed away from it)"


def decide(candidate_estimates: dict[str, Estimate], live: Estimate | dict[str, Estimate], config: PromotionConfig,
           candidate: str = "candidate", live_name: str = "live", comparison: str = "") -> PromotionDecision:
    """Apply the decision table above. ``live``: one estimate of the live policy's value that
    every candidate estimate is compared with, or one per estimator name (each candidate
    estimate faces the live estimate of its own name)."""
    required = sorted(candidate_estimates) if config.require_all else [config.estimator]
    missing = [name for name in required if name not in candidate_estimates]
    if missing:
        raise ValueError(f"estimates {missing} needed by the gate are missing; got {sorted(candidate_estimates)}")
    lives = live if isinstance(live, dict) else {k: live for k in candidate_estimates}
    missing = [name for name in required if name not in lives]
    if missing:
        raise ValueError(f"live estimates {missing} needed by the gate are missing; got {sorted(lives)}")
    main = lives[config.estimator] if config.estimator in lives else lives[required[0]]
    n = min([lives[k].n_episodes for k in required] + [candidate_estimates[k].n_episodes for k in required])

    def make(promote: bool, code: str, reason: str) -> PromotionDecision:
        # null, not NaN, where the live side has no value or interval (its estimate says why)
        return PromotionDecision(promote, code, reason, candidate, live_name, finite_or_none(main.value),
                                 (finite_or_none(main.lower), finite_or_none(main.upper)),
                                 {k: e.to_dict() for k, e in candidate_estimates.items()}, asdict(config), n,
                                 {k: e.to_dict() for k, e in lives.items()}, comparison)

    if n < config.min_episodes:
        return make(False, "too_few_episodes", f"{n} logged episodes < min_episodes {config.min_episodes}")
    sides = [(side, k, e) for k in required for side, e in (("candidate", candidate_estimates[k]), ("live", lives[k]))]
    unsupported = [unsupported_text(side, k, e) for side, k, e in sides
                   if max(e.details.get("unsupported_mass", 0.0), e.details.get("unsupported_probability", 0.0))
                   > config.max_unsupported]
    if unsupported:
        return make(False, "no_support", "; ".join(unsupported) + f" (max_unsupported {config.max_unsupported:g}): "
                    "nothing logged says what those actions earn. " + NO_SUPPORT_HELP)
    undefined = [f"{side} {k}: {e.details.get('undefined') or e.details.get('no_interval') or f'value {e.value:.4g} in [{e.lower:.4g}, {e.upper:.4g}]'}"
                 for side, k, e in sides if not all(math.isfinite(x) for x in (e.value, e.lower, e.upper))]
    if undefined:
        return make(False, "no_estimate", "; ".join(undefined) + " -- not an estimate; evaluate on logs where the "
                    "logging policy takes the actions the policy takes")
    lowers = {k: difference_lower_bound(candidate_estimates[k], lives[k]) for k in required}
    if not all(math.isfinite(v) for v, _ in lowers.values()):
        return make(False, "no_estimate", f"difference lower bounds {lowers} are not all finite")
    thin = [f"{side} {k} rests on {e.details['effective_sample_size']:.3g}"
            for side, k, e in sides if e.details.get("effective_sample_size", math.inf) < config.min_effective_episodes]
    if thin:
        return make(False, "too_few_effective_episodes",
                    f"{', '.join(thin)} effective episodes < min_effective_episodes {config.min_effective_episodes:g}: "
                    "the importance weights sit on a handful of logged episodes (the policy acts too differently "
                    "from the logging one); log more episodes, or with a logging policy closer to it")
    shown = ", ".join(f"{k} - live >= {v:.4g} ({how})" for k, (v, how) in lowers.items())
    if all(v > config.min_improvement for v, _ in lowers.values()):
        return make(True, "lower_bound_beats_live", f"{shown}: above the margin {config.min_improvement:g}")
    return make(False, "not_better", f"{shown}: not all above the margin {config.min_improvement:g}")


NO_SUPPORT_HELP = ("Where humans acted, --human-steps model gives their steps fitted propensities; otherwise log "
                   "the live policy sampling its actions (not greedy), with fewer steps routed to the fallback, "
                   "until every action either policy takes has a logged propensity > 0")


def unsupported_text(side: str, name: str, e: Estimate) -> str:
    sources = e.details.get("unsupported_sources") or {}
    where = f" (sources {sources})" if sources else ""
    return (f"{side} {name} puts up to {e.details.get('unsupported_mass', 0.0):.3g} of its probability on actions "
            f"logged with propensity 0 at {e.details.get('unsupported_steps', 0)} steps{where}, "
            f"{e.details.get('unsupported_probability', 0.0):.3g} per episode")


def difference_lower_bound(candidate: Estimate, live: Estimate) -> tuple[float, str]:
    """(lower end of the candidate − live difference at the estimates' level, how it was made):
    paired bootstrap when both saw the same resamples, else candidate lower − live upper."""
    paired = (candidate.resample_key is not None and candidate.resample_key == live.resample_key
              and candidate.resamples is not None and live.resamples is not None)
    if paired:
        diff = candidate.resamples - live.resamples
        diff = diff[np.isfinite(diff)]
        if diff.size == 0:
            return math.nan, "paired bootstrap"
        return float(np.quantile(diff, (1.0 - candidate.confidence) / 2.0)), "paired bootstrap"
    return candidate.lower - live.upper, "candidate lower - live upper"


def gate_from_dataset(data: Any, candidate_policy: Any, config: PromotionConfig, candidate: str = "candidate",
                      live_name: str = "live", bootstrap: int = 200, seed: int = 0,
                      live_policy: Any = None) -> PromotionDecision:
    """Estimate the candidate off-policy on logs of the live policy, and the live policy's value
    on the same logs the same way (module docstring, "Both sides unrouted"), then :func:`decide`.
    ``data`` is an OfflineDataset logged by the live policy; ``candidate_policy`` and
    ``live_policy`` are :class:`~training.rl.policy_export.NumpyPolicy` s with the probabilities
    each acts with (:func:`training.rl.policy_export.acting_policy`)."""
    from training.rl.fqe import refit_resamples, select_basis
    from training.rl.ope import evaluate, on_policy_value
    from training.rl.ope_humans import with_human_steps

    data, _ = with_human_steps(data, config.human_steps, seed=seed)  # both sides on the same episodes
    if live_policy is not None:
        # DR of both sides on the same resamples (its plan depends on the basis: the wider decides)
        features = [select_basis(data, p, config.gamma, seed=seed) for p in (candidate_policy, live_policy)]
        dr_key = refit_resamples(data, features, bootstrap, seed)
        estimates = evaluate(data, candidate_policy, config.gamma, config.confidence, bootstrap, seed, features[0],
                             dr_key)
        live = evaluate(data, live_policy, config.gamma, config.confidence, bootstrap, seed, features[1], dr_key)
        return decide(estimates, live, config, candidate, live_name, LIVE_UNROUTED)
    estimates = evaluate(data, candidate_policy, config.gamma, config.confidence, bootstrap, seed)
    routed = data.sources != "model"
    if routed.any():
        raise GateRefused(
            f"{int(routed.sum())} of the {len(routed)} logged steps were acted on by a human or the fallback "
            f"(sources {sorted(set(data.sources[routed].tolist()))}): the live policy's logged return includes "
            "them and the candidate's off-policy estimate does not; pass live_policy= (the live policy as it acts) "
            "so that both are estimated the same way")
    # the logged return on each estimate's own resamples (DR's may be groups), so every difference pairs
    live_values = {k: on_policy_value(data, config.gamma, config.confidence, bootstrap, seed, e.resample_key)
                   for k, e in estimates.items()}
    return decide(estimates, live_values, config, candidate, live_name, LIVE_LOGGED)
