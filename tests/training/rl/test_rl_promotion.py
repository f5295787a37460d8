"""The promotion gate's decision table; the candidate and the live policy are valued the same way
(both unrouted) on routed logs, so a candidate identical to live differs from it by exactly 0."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.rl.offline_data import OfflineDataset, StepRecord, build_dataset
from training.rl.ope import Estimate
from training.rl.promotion import (LIVE_LOGGED, LIVE_UNROUTED, GateRefused, PromotionConfig, decide,
                                   gate_from_dataset)

from tests.training.rl.rl_toy import GAMMA, HORIZON, MU, PI, mean_reward, next_dist, simulate, table_policy, true_value


def est(value: float, lower: float, upper: float, n: int = 500, method: str = "dr") -> Estimate:
    return Estimate(method, value, lower, upper, 0.95, n)


LIVE = est(10.0, 9.0, 11.0, method="on_policy")


@pytest.mark.parametrize("estimates, config, promote, code", [
    # unpaired estimates (no shared resamples): candidate lower vs live upper (11)
    ({"dr": est(12, 11.5, 13.5)}, PromotionConfig(), True, "lower_bound_beats_live"),
    ({"dr": est(12, 10.5, 13.5)}, PromotionConfig(), False, "not_better"),  # might be better: stays in shadow
    ({"dr": est(13, 11.5, 14.5)}, PromotionConfig(min_improvement=1.0), False, "not_better"),
    ({"dr": est(13, 12.5, 14.5)}, PromotionConfig(min_improvement=1.0), True, "lower_bound_beats_live"),
    ({"dr": est(12, 11.5, 13.5, n=50)}, PromotionConfig(), False, "too_few_episodes"),
    ({"dr": est(12, math.nan, 13.5)}, PromotionConfig(), False, "no_estimate"),
    ({"dr": est(12, 11.5, 13), "wis": est(11, 9.0, 13, method="wis")}, PromotionConfig(require_all=True), False,
     "not_better"),
    ({"dr": est(12, 11.5, 13), "wis": est(11, 11.1, 13, method="wis")}, PromotionConfig(require_all=True), True,
     "lower_bound_beats_live"),
    ({"wis": est(12, 11.5, 13, method="wis"), "dr": est(8, 7, 9)}, PromotionConfig(estimator="wis"), True,
     "lower_bound_beats_live"),
])
def test_decision_table(estimates, config, promote, code) -> None:
    decision = decide(estimates, LIVE, config, candidate="policy-x/2", live_name="policy-x/1")
    assert (decision.promote, decision.code) == (promote, code), decision.reason
    record = decision.to_dict()
    assert record["live_value"] == 10.0 and record["candidate"] == "policy-x/2"
    assert set(record["candidate_estimates"]) == set(estimates)


def test_paired_resamples_judge_the_difference_not_the_two_intervals() -> None:
    """Both estimates are noisy but move together: the paired difference is clearly positive
    although the intervals overlap; on other resamples the same intervals prove nothing."""
    rng = np.random.default_rng(0)
    shared = rng.normal(10.0, 1.0, 400)
    key = ("episodes", 500, 400, 0)
    live = Estimate("on_policy", 10.0, 8.0, 12.0, 0.95, 500, resamples=shared, resample_key=key)
    cand = Estimate("dr", 10.5, 8.5, 12.5, 0.95, 500, resamples=shared + 0.5 + rng.normal(0, 0.1, 400), resample_key=key)
    decision = decide({"dr": cand}, live, PromotionConfig())
    assert decision.promote and "paired bootstrap" in decision.reason
    unpaired = Estimate("dr", 10.5, 8.5, 12.5, 0.95, 500, resamples=cand.resamples, resample_key=("episodes", 500, 400, 1))
    assert not decide({"dr": unpaired}, live, PromotionConfig()).promote


@pytest.mark.slow
def test_a_candidate_equal_to_the_live_policy_is_promoted_at_most_alpha_of_the_time() -> None:
    """The candidate *is* the behaviour policy: on 60 independent logs, the gate (DR, paired
    bootstrap at 95%) promotes it in at most (1 - 0.95) / 2 of them, plus Monte-Carlo slack."""
    config = PromotionConfig(gamma=GAMMA, min_episodes=100)
    promoted = [gate_from_dataset(simulate(300, seed=100 + k), table_policy(MU), config, seed=k).promote
                for k in range(60)]
    assert np.mean(promoted) <= 0.025 + 2 * np.sqrt(0.025 * 0.975 / 60)


def test_missing_estimator_is_an_error() -> None:
    with pytest.raises(ValueError, match="missing"):
        decide({"wis": est(1, 0, 2)}, LIVE, PromotionConfig(estimator="dr"))


@pytest.mark.parametrize("kwargs", [{"estimator": "mc"}, {"min_improvement": -1}, {"min_episodes": 0}])
def test_bad_config(kwargs) -> None:
    with pytest.raises(ValueError):
        PromotionConfig(**kwargs)


def test_gate_from_logs_promotes_the_better_policy_only() -> None:
    data = simulate(600, seed=11)  # logged by the live policy MU
    config = PromotionConfig(gamma=GAMMA)
    better = gate_from_dataset(data, table_policy(PI), config)
    assert better.promote, better.reason
    worse = gate_from_dataset(data, table_policy(MU[:, ::-1].copy()), config)
    assert not worse.promote


def simulate_routed(episodes: int, seed: int, human_takes_0: float | None = None) -> OfflineDataset:
    """Logs of the live policy MU with triage: in state 1 it is unsure (0.6) and the step goes to a
    human. ``human_takes_0`` None: nobody answers in time and the safe action 1 (pays 0.5 where
    action 0 pays 1) acts, logged one-hot with source fallback; else a noisy human answers (action 0
    with that probability), logged one-hot with source human. Route HUMAN either way. The logged
    return is the *routed* value."""
    rng = np.random.default_rng(seed)
    records = []
    for e in range(episodes):
        s = 0
        for t in range(HORIZON):
            deferred = s == 1
            if not deferred:
                a = int(rng.random() < MU[s][1])
            else:
                a = 1 if human_takes_0 is None else int(rng.random() < 1 - human_takes_0)
            human = deferred and human_takes_0 is not None
            records.append(StepRecord(f"e{e:05d}", t, np.eye(2)[s], a, np.eye(2)[a] if deferred else MU[s],
                                      mean_reward(s, a) + rng.normal(0, 0.1), False, t == HORIZON - 1,
                                      human_action=a if human else None,
                                      source=("human" if human else "fallback") if deferred else "model",
                                      route="HUMAN" if deferred else "AUTO"))
            s = int(rng.choice(2, p=next_dist(s, a)))
    return build_dataset(records)


def test_routed_logs_give_the_live_policy_no_support_and_the_gate_says_so() -> None:
    """At a deferred step the log holds the fallback's action one-hot; the live policy's own rule
    gives the other action 0.6 there: its unrouted value is not in the logs (WIS 0.49, DR 0.54 for
    a true 1.26), and a candidate that always takes the fallback's action (truly 0.44 worse) was
    promoted by every estimator. Now each decision is no_support, naming the side and what to do."""
    data = simulate_routed(400, seed=3)
    worse = np.array([[0.5, 0.5], [0.0, 1.0]])
    assert true_value(worse) < true_value(MU) - 0.4
    from training.rl.ope import evaluate

    cand, live = (evaluate(data, table_policy(p), GAMMA, bootstrap=50) for p in (worse, MU))
    for estimator in ("wis", "dr", "fqe"):
        decision = decide(cand, live, PromotionConfig(gamma=GAMMA, estimator=estimator))
        assert (decision.promote, decision.code) == (False, "no_support"), decision.reason
        assert decision.reason.startswith(f"live {estimator} puts up to 0.6 of its probability on actions logged with "
                                          "propensity 0") and "'fallback'" in decision.reason
        assert "--human-steps model" in decision.reason and "sampling" in decision.reason
        live_side, cand_side = decision.live_estimates[estimator], decision.candidate_estimates[estimator]
        assert live_side["unsupported_mass"] == pytest.approx(0.6) and live_side["unsupported_sources"] == {
            "fallback": int(np.sum(data.sources == "fallback"))}
        assert cand_side["unsupported_mass"] == 0 and cand_side["unsupported_probability"] == 0
    # a candidate identical to the live policy is refused the same way (not compared as "equal")
    same = gate_from_dataset(data, table_policy(MU), PromotionConfig(gamma=GAMMA, require_all=True), bootstrap=50,
                             live_policy=table_policy(MU))
    assert (same.promote, same.code) == (False, "no_support")


def test_unsupported_probability_is_the_chance_an_episode_leaves_the_logged_actions() -> None:
    """MU acting on its own takes action 0 in state 1, which the routed logs never show; the
    estimated chance that an episode of MU does so at least once matches the exact one."""
    exact, alive = 0.0, np.array([1.0, 0.0])  # P(state, no unlogged action yet) under MU
    for _ in range(HORIZON):
        exact += alive[1] * MU[1][0]
        alive = np.array([alive[0] * MU[0][0] + alive[0] * MU[0][1] * 0.2,
                          alive[0] * MU[0][1] * 0.8 + alive[1] * MU[1][1]])
    from training.rl.ope import wis

    estimates = [wis(simulate_routed(300, seed=40 + k), table_policy(MU), GAMMA, bootstrap=20)
                 .details["unsupported_probability"] for k in range(10)]
    assert abs(np.mean(estimates) - exact) < 4 * np.std(estimates, ddof=1) / np.sqrt(10) + 1e-3, (estimates, exact)


def test_modelled_humans_give_support_and_an_identical_candidate_differs_by_exactly_zero() -> None:
    """With the humans' propensities fitted (human_steps model) the live policy's own rule has
    support on routed logs; both sides are estimated alike, so a candidate identical to the live
    policy differs by exactly 0 on every resample (not_better), and a better one is promoted."""
    data = simulate_routed(400, seed=3, human_takes_0=0.7)
    assert (gate_from_dataset(data, table_policy(MU), PromotionConfig(gamma=GAMMA), live_policy=table_policy(MU))
            .code == "no_support")  # as logged (one-hot): no support
    config = PromotionConfig(gamma=GAMMA, require_all=True, human_steps="model")
    decision = gate_from_dataset(data, table_policy(MU), config, live_policy=table_policy(MU))
    assert (decision.promote, decision.code) == (False, "not_better"), decision.reason
    assert decision.candidate_estimates == decision.live_estimates and set(decision.live_estimates) == {"wis", "dr", "fqe"}
    assert "wis - live >= 0 " in decision.reason and "dr - live >= 0 " in decision.reason
    assert decision.comparison == LIVE_UNROUTED and decision.live_value == decision.candidate_estimates["dr"]["value"]
    assert decision.live_estimates["dr"]["unsupported_mass"] == 0
    better = gate_from_dataset(data, table_policy(PI), PromotionConfig(gamma=GAMMA, human_steps="model"),
                               live_policy=table_policy(MU))
    assert better.promote, better.reason


def test_routed_logs_without_the_live_policy_are_refused_not_compared_with_the_routed_return() -> None:
    """The routed return (state 1 always takes the fallback's 0.5) is below what MU earns acting
    on its own; comparing an unrouted estimate of MU with it promoted the live policy over itself."""
    data = simulate_routed(400, seed=3)
    with pytest.raises(GateRefused, match=r"acted on by a human or the fallback .*\['fallback'\].*live_policy="):
        gate_from_dataset(data, table_policy(MU), PromotionConfig(gamma=GAMMA))


def test_the_gate_treats_timeout_routes_as_it_treats_fallbacks_after_a_deferral() -> None:
    """``rl dataset`` now routes a fallback that no answer reached TIMEOUT, not HUMAN; the gate and
    OPE read ``sources`` (who acted), so the same logs with those routes renamed decide the same."""
    from dataclasses import replace

    data = simulate_routed(400, seed=3)
    timed_out = replace(data, routes=np.where(data.sources == "fallback", "TIMEOUT", data.routes))
    assert set(timed_out.routes.tolist()) == {"AUTO", "TIMEOUT"}
    config = PromotionConfig(gamma=GAMMA, require_all=True)
    a, b = (gate_from_dataset(d, table_policy(MU), config, bootstrap=50, live_policy=table_policy(MU))
            for d in (data, timed_out))
    assert (a.promote, a.code, a.reason) == (b.promote, b.code, b.reason) == (False, "no_support", a.reason)
    assert a.candidate_estimates == b.candidate_estimates and a.live_estimates == b.live_estimates
    with pytest.raises(GateRefused, match=r"acted on by a human or the fallback .*\['fallback'\]"):
        gate_from_dataset(timed_out, table_policy(MU), PromotionConfig(gamma=GAMMA))


def test_unrouted_comparison_still_promotes_the_better_policy_only() -> None:
    data = simulate(600, seed=11)
    config = PromotionConfig(gamma=GAMMA)
    better = gate_from_dataset(data, table_policy(PI), config, live_policy=table_policy(MU))
    assert better.promote and better.comparison == LIVE_UNROUTED, better.reason
    assert not gate_from_dataset(data, table_policy(MU[:, ::-1].copy()), config, live_policy=table_policy(MU)).promote
    logged = gate_from_dataset(data, table_policy(PI), config)  # no routed step: the logged return stands
    assert logged.promote and logged.comparison == LIVE_LOGGED


def est_with(value: float, lower: float, upper: float, **details) -> Estimate:
    return Estimate("dr", value, lower, upper, 0.95, 500, details)


@pytest.mark.parametrize("candidate, live, code", [
    # an undefined estimate (no logged episode supports it) on either side: no decision
    (est_with(math.nan, math.nan, math.nan, undefined="importance weights are all 0"), LIVE, "no_estimate"),
    (est_with(12, 11.5, 13.5), est_with(math.nan, 9, 11), "no_estimate"),
    # weights on a handful of episodes, on either side: the interval is not trusted
    (est_with(12, 11.5, 13.5, effective_sample_size=5.0), LIVE, "too_few_effective_episodes"),
    (est_with(12, 11.5, 13.5), est_with(10, 9, 11, effective_sample_size=19.9), "too_few_effective_episodes"),
    (est_with(12, 11.5, 13.5, effective_sample_size=20.0), est_with(10, 9, 11, effective_sample_size=500.0),
     "lower_bound_beats_live"),
])
def test_undefined_and_thin_estimates_are_not_decided_on(candidate, live, code) -> None:
    decision = decide({"dr": candidate}, live, PromotionConfig())
    assert (decision.promote, decision.code) == (code == "lower_bound_beats_live", code), decision.reason
    if code == "too_few_effective_episodes":
        assert "log more episodes" in decision.reason


# Logs of a greedy live policy (one-hot propensities) whose rewards are all negative; the candidate
# always takes the action the live policy never takes, and is worse (-6.53 vs -4.66).
GREEDY_LIVE = np.array([[0.0, 1.0], [1.0, 0.0]])
NEVER_LOGGED = np.array([[1.0, 0.0], [0.0, 1.0]])


def simulate_greedy(episodes: int, seed: int) -> OfflineDataset:
    rng = np.random.default_rng(seed)
    records = []
    for e in range(episodes):
        s = 0
        for t in range(HORIZON):
            a = int(GREEDY_LIVE[s].argmax())
            records.append(StepRecord(f"e{e:05d}", t, np.eye(2)[s], a, GREEDY_LIVE[s], mean_reward(s, a) - 2.0
                                      + rng.normal(0, 0.1), False, t == HORIZON - 1))
            s = int(rng.choice(2, p=next_dist(s, a)))
    return build_dataset(records)


@pytest.fixture(scope="module")
def never_logged():
    from training.rl.ope import evaluate

    data = simulate_greedy(120, seed=0)
    return tuple(evaluate(data, table_policy(p), GAMMA, bootstrap=50) for p in (NEVER_LOGGED, GREEDY_LIVE))


@pytest.mark.parametrize("estimator", ["wis", "dr", "fqe"])
def test_a_candidate_the_logs_never_show_acting_is_not_promoted(estimator, never_logged) -> None:
    """WIS gave it 0.0 [0, 0] and DR Q's extrapolation 0.94 [0.94, 0.94] (both far above the live
    -4.66), FQE an extrapolated interval above it too: all three promoted it."""
    cand, live = never_logged
    decision = decide(cand, live, PromotionConfig(gamma=GAMMA, estimator=estimator))
    assert not decision.promote
    assert decision.code == "no_support" and decision.reason.startswith(f"candidate {estimator} puts up to 1 "), decision.reason
    assert decision.candidate_estimates[estimator]["effective_sample_size"] == 0
    # without the support check, the estimate itself is no number to decide on
    lenient = decide(cand, live, PromotionConfig(gamma=GAMMA, estimator=estimator, max_unsupported=1.0))
    assert (lenient.promote, lenient.code) == (False, "too_few_effective_episodes" if estimator == "fqe" else "no_estimate")


def test_human_steps_exclude_is_refused_for_promotion_in_one_line() -> None:
    """Keeping only the episodes no human acted in selects them by the actions taken: on the toy
    MDP a candidate 0.9 worse than the live policy came out better and was promoted in 10 of 10
    logs. Refused by the config (so by ``rl promote --human-steps exclude`` before anything runs),
    kept for reports (with_human_steps)."""
    import argparse

    from auditstream.cli_args import add_dataclass_arguments, dataclass_from_namespace
    from auditstream.errors import ConfigError

    with pytest.raises(ConfigError, match=r"invalid --human-steps='exclude': expected as_logged or model: .*not for "
                                          r"promotion") as refused:
        PromotionConfig(human_steps="exclude")
    assert "\n" not in str(refused.value)
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, PromotionConfig)
    with pytest.raises(ConfigError, match="--human-steps"):
        dataclass_from_namespace(PromotionConfig, parser.parse_args(["--human-steps", "exclude"]))
    assert dataclass_from_namespace(PromotionConfig, parser.parse_args(["--human-steps", "model"])).human_steps == "model"


@pytest.mark.parametrize("with_live_policy", [False, True])
def test_the_gate_pairs_dr_with_the_live_side_when_memory_pools_episodes_into_groups(monkeypatch,
                                                                                      with_live_policy) -> None:
    """DR on groups of episodes (its normal equations would not fit per episode): the logged live
    value was bootstrapped over episodes, so the gate fell back to the conservative candidate
    lower - live upper. The live side now takes DR's resamples (and both DRs one plan)."""
    import training.rl.fqe as fqe_module

    monkeypatch.setattr(fqe_module, "MAX_GROUP_BYTES", 8 * 10**4)  # a few dozen episodes' normal equations
    data = simulate(300, seed=11)
    decision = gate_from_dataset(data, table_policy(PI), PromotionConfig(gamma=GAMMA, require_all=True),
                                 bootstrap=50, live_policy=table_policy(MU) if with_live_policy else None)
    assert decision.candidate_estimates["dr"]["n_episodes"] == 300
    assert "dr - live >=" in decision.reason and "wis - live >=" in decision.reason
    dr_part = decision.reason.split("dr - live >=")[1].split(")")[0]
    assert "paired bootstrap" in dr_part, decision.reason


def test_an_estimate_without_an_interval_is_no_estimate_and_says_why() -> None:
    few = est_with(12, math.nan, math.nan, no_interval="3 episode(s): a bootstrap interval needs at least 4")
    decision = decide({"dr": few}, LIVE, PromotionConfig(min_episodes=1))
    assert decision.code == "no_estimate" and "needs at least 4" in decision.reason
    record = decision.to_dict()
    assert record["candidate_estimates"]["dr"]["lower"] is None
    undefined_live = decide({"dr": est(12, 11, 13)}, est_with(math.nan, math.nan, math.nan, undefined="why"),
                            PromotionConfig())
    assert undefined_live.live_value is None and undefined_live.live_interval == (None, None)
