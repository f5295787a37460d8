"""The promotion gate: may a candidate policy replace the live one?

A pure function of numbers: the candidate's off-policy estimates on logs of the live policy,
and the live policy's own value on the same logs (its mean discounted return). What is judged is
the *difference* candidate − live, with both sides' uncertainty: when the two estimates were
bootstrapped over the same resamples of the same episodes (WIS, DR and the live value share
them), the lower end of the paired difference's percentile interval; otherwise (FQE resamples
groups of episodes) the conservative candidate lower bound − live upper bound. The candidate is
promoted only if that lower end is above ``min_improvement``: a candidate that merely might be
better stays in shadow, and one equal to the live policy is promoted with probability at most
(1 − confidence)/2. (Comparing the candidate's lower bound with the live *point* estimate
ignored the live side's noise.) The decision carries every number it was made from, so
``rl promote`` can record it as it is.

Decision table (first matching row wins):

==========================================================  ========  =====================
condition                                                   promote   reason code
==========================================================  ========  =====================
fewer logged episodes than ``min_episodes``                 no        too_few_episodes
a required difference's lower bound is not finite           no        no_estimate
required difference lower bound(s) > min_improvement        yes       lower_bound_beats_live
otherwise                                                   no        not_better
==========================================================  ========  =====================

"Required" is ``config.estimator`` alone, or every estimator given when ``require_all``.
``config.human_steps`` says what the estimates assume about steps a human acted on
(:mod:`training.rl.ope_humans`).
:func:`gate_from_dataset` computes the inputs from an offline dataset and a candidate policy.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from training.rl.ope import Estimate

ESTIMATORS = ("wis", "dr", "fqe")


@dataclass(frozen=True)
class PromotionConfig:
    """How strict the gate is."""

    estimator: str = field(default="dr", metadata={"help": "OPE estimator whose lower bound decides (wis, dr, fqe)"})
    require_all: bool = field(default=False, metadata={"help": "require every estimator's lower bound to beat live"})
    min_improvement: float = field(default=0.0, metadata={"help": "margin over the live value, in return units"})
    min_episodes: int = field(default=100, metadata={"help": "fewest logged episodes to decide on"})
    gamma: float = field(default=0.99, metadata={"help": "discount of the compared values"})
    confidence: float = field(default=0.95, metadata={"help": "two-sided confidence level of the intervals"})
    human_steps: str = field(default="as_logged", metadata={
        "help": "steps a human acted on: as_logged (one-hot propensities: humans a known deterministic policy), "
                "exclude (evaluate on episodes no human acted in) or model (fitted human action probabilities)"})

    def __post_init__(self) -> None:
        from training.rl.ope_humans import HUMAN_STEPS

        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator {self.estimator!r} not one of {ESTIMATORS}")
        if self.human_steps not in HUMAN_STEPS:
            raise ValueError(f"human_steps {self.human_steps!r} not one of {HUMAN_STEPS}")
        if self.min_improvement < 0 or self.min_episodes < 1:
            raise ValueError(f"min_improvement={self.min_improvement} must be >= 0 and "
                             f"min_episodes={self.min_episodes} >= 1")


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    code: str
    reason: str
    candidate: str
    live: str
    live_value: float
    live_interval: tuple[float, float]
    candidate_estimates: dict[str, dict[str, Any]]
    config: dict[str, Any]
    n_episodes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(candidate_estimates: dict[str, Estimate], live: Estimate, config: PromotionConfig,
           candidate: str = "candidate", live_name: str = "live") -> PromotionDecision:
    """Apply the decision table above."""
    required = sorted(candidate_estimates) if config.require_all else [config.estimator]
    missing = [name for name in required if name not in candidate_estimates]
    if missing:
        raise ValueError(f"estimates {missing} needed by the gate are missing; got {sorted(candidate_estimates)}")
    n = min([live.n_episodes] + [candidate_estimates[k].n_episodes for k in required])
    bar = live.value + config.min_improvement

    def make(promote: bool, code: str, reason: str) -> PromotionDecision:
        return PromotionDecision(promote, code, reason, candidate, live_name, live.value, (live.lower, live.upper),
                                 {k: e.to_dict() for k, e in candidate_estimates.items()}, asdict(config), n)

    if n < config.min_episodes:
        return make(False, "too_few_episodes", f"{n} logged episodes < min_episodes {config.min_episodes}")
    lowers = {k: difference_lower_bound(candidate_estimates[k], live) for k in required}
    if not all(math.isfinite(v) for v, _ in lowers.values()):
        return make(False, "no_estimate", f"difference lower bounds {lowers} are not all finite")
    shown = ", ".join(f"{k} - live >= {v:.4g} ({how})" for k, (v, how) in lowers.items())
    if all(v > config.min_improvement for v, _ in lowers.values()):
        return make(True, "lower_bound_beats_live", f"{shown}: above the margin {config.min_improvement:g}")
    return make(False, "not_better", f"{shown}: not all above the margin {config.min_improvement:g}")


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
                      live_name: str = "live", bootstrap: int = 200, seed: int = 0) -> PromotionDecision:
    """Estimate the candidate off-policy on logs of the live policy, and the live policy's own
    value from the same logs, then :func:`decide`. ``data`` is an OfflineDataset logged by the
    live policy; ``candidate_policy`` a :class:`~training.rl.policy_export.NumpyPolicy`."""
    from training.rl.ope import evaluate, on_policy_value
    from training.rl.ope_humans import with_human_steps

    data, _ = with_human_steps(data, config.human_steps, seed=seed)  # both sides on the same episodes
    estimates = evaluate(data, candidate_policy, config.gamma, config.confidence, bootstrap, seed)
    live = on_policy_value(data, config.gamma, config.confidence, bootstrap, seed)
    return decide(estimates, live, config, candidate, live_name)
