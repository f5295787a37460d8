"""``auditstream bench qc``: simulations that measure the QC statistics against their targets.

Run: ``auditstream bench qc --json`` (about 45 s on 2 cores; numpy-vectorised, fixed seed).

1. Interval width: the expected width of the exact 95% Clopper-Pearson interval for 1,000
   uniform audits at a 1% error rate, summed exactly over Binomial(1000, 0.01) (target <= 1.4
   points).
2. Risk-weighted vs uniform auditing on a stream whose errors cluster at low confidence:
   accepted answers have ``1 - c = 0.1 U^9`` (threshold 0.9, most answers near 1.0) and the
   model is *miscalibrated* — overconfident, with true error probability ``2 (1 - c)``, so 2%
   of accepted answers are wrong while the confidences promise 1%. Risk-weighted sampling uses
   the default policy (``pi = clip(0.02 sqrt((1 - c) / 0.01), 0.005, 0.5)``); uniform sampling
   gets the same expected number of audits. ESS ratio = Var(uniform) / Var(weighted) (targets:
   >= 2, and bias of the weighted estimate < 0.02 points, reported with its Monte-Carlo error).
3. CUSUM for 1% -> 2% designed for ARL0 >= 200,000: median audits to detection from a fresh
   chart at 2% (target <= 2,000; uniform audits, each of which enters the chart -- under
   risk-weighted QC only a share does, docs/qc-statistics.md) and false alarms per 100,000 in-control audits, restarting
   after each alarm (target <= 1).
4. Anytime-valid monitoring (qc/sequential.py), checked after every audit: on a stream whose
   error rate sits exactly at the 2% budget, the share of runs (of ``anytime_runs``, 20,000
   audits each) ever declared over budget — by the betting confidence sequence (target <= 0.025:
   it promises at most alpha/2 on each side) and, beside it, by a fixed-n 95% Clopper-Pearson interval whose lower bound is compared with
   the budget after every audit (what peeking does to it); the median audits until a stream at
   2x the budget is declared over budget; and the sequence's width after 1,000 uniform audits
   at 1% error (next to the fixed-n interval's).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from qc.binomial import clopper_pearson, estimate_from_sums
from qc.drift import cusum_run_lengths, design_bernoulli_cusum
from qc.sequential import BettingState, ErrorSequence, SequenceConfig
from qc.triage import POLICIES, inclusion_probability


@dataclass(frozen=True)
class BenchArgs:
    seed: int = 20241
    replications: int = 8000  # weighted-vs-uniform streams
    stream_items: int = 50_000  # auto-accepted answers per stream
    cusum_runs: int = 4000  # detection-delay runs and 100k-audit in-control streams
    anytime_runs: int = 500  # runs of the anytime-valid simulations
    anytime_audits: int = 20_000  # audits per run, a check after every one
    anytime_budget: float = 0.02


def ci_width(n: int = 1000, p: float = 0.01) -> tuple[float, float]:
    """Expected and typical (x = n p) width of the 95% Clopper-Pearson interval."""
    from scipy.stats import binom

    xs = np.arange(0, n + 1)
    pmf = binom.pmf(xs, n, p)
    keep = pmf > 1e-12
    widths = np.array([np.subtract(*clopper_pearson(int(x), n)[::-1]) for x in xs[keep]])
    return float((pmf[keep] * widths).sum() / pmf[keep].sum()), float(np.subtract(*clopper_pearson(round(n * p), n)[::-1]))


def weighted_vs_uniform(args: BenchArgs, rng: np.random.Generator) -> dict[str, float]:
    policy = POLICIES["risk-weighted"]
    pi_of = np.vectorize(lambda c: inclusion_probability(float(c), policy))
    grid = np.linspace(0.9, 1.0, 100_001)
    pi_table = pi_of(grid)  # pi(c) tabulated once: the stream loop stays vectorised

    def pi(c: np.ndarray) -> np.ndarray:
        return pi_table[np.clip(np.rint((c - 0.9) * 1e6).astype(np.int64), 0, grid.size - 1)]

    true_p = 2.0 * 0.1 / 10.0  # E[2 * 0.1 U^9] = 0.02
    probe = 1.0 - 0.1 * rng.random(2_000_000) ** 9
    uniform_rate = float(pi(probe).mean())
    rows = {k: np.empty(args.replications) for k in ("w", "u", "naive", "lo_w", "hi_w", "lo_u", "hi_u", "n_w", "n_u")}
    for r in tqdm(range(args.replications), desc="weighted vs uniform", unit="stream", mininterval=2.0):
        c = 1.0 - 0.1 * rng.random(args.stream_items) ** 9
        y = (rng.random(args.stream_items) < np.minimum(1.0, 2.0 * (1.0 - c))).astype(np.float64)
        p_i = pi(c)
        s = rng.random(args.stream_items) < p_i
        w, ys = 1.0 / p_i[s], y[s]
        est, lo, hi, _ = estimate_from_sums(s.sum(), w.sum(), (w * ys).sum(), (w * w).sum(), (w * w * ys).sum())
        u = rng.random(args.stream_items) < uniform_rate
        n_u, x_u = u.sum(), y[u].sum()
        est_u, lo_u, hi_u, _ = estimate_from_sums(n_u, n_u, x_u, n_u, x_u)
        for key, value in (("w", est), ("u", est_u), ("naive", ys.mean()), ("lo_w", lo), ("hi_w", hi), ("lo_u", lo_u),
                           ("hi_u", hi_u), ("n_w", s.sum()), ("n_u", n_u)):
            rows[key][r] = value
    var_w, var_u = rows["w"].var(ddof=1), rows["u"].var(ddof=1)
    return {
        "true_error": true_p,
        "audits_weighted": float(rows["n_w"].mean()),
        "audits_uniform": float(rows["n_u"].mean()),
        "ess_weighted": true_p * (1 - true_p) / var_w,
        "ess_uniform": true_p * (1 - true_p) / var_u,
        "ess_ratio": float(var_u / var_w),
        "bias": float(rows["w"].mean() - true_p),
        "bias_mc_error": float(1.96 * np.sqrt(var_w / args.replications)),
        "naive_bias": float(rows["naive"].mean() - true_p),
        "coverage_weighted": float(np.mean((rows["lo_w"] <= true_p) & (true_p <= rows["hi_w"]))),
        "coverage_uniform": float(np.mean((rows["lo_u"] <= true_p) & (true_p <= rows["hi_u"]))),
        "width_weighted": float(np.mean(rows["hi_w"] - rows["lo_w"])),
        "width_uniform": float(np.mean(rows["hi_u"] - rows["lo_u"])),
    }


def cusum(args: BenchArgs, rng: np.random.Generator) -> dict[str, float]:
    design = design_bernoulli_cusum(0.01, 0.02, 200_000.0)
    delays = cusum_run_lengths(design, 0.02, args.cusum_runs, rng)
    horizon, alarms = 100_000, 0
    remaining = np.full(args.cusum_runs, horizon)
    while remaining.size:  # renewal: after an alarm the chart restarts at 0 on the rest of the stream
        lengths = cusum_run_lengths(design, 0.01, remaining.size, rng, max_audits=remaining)
        hit = lengths <= remaining
        alarms += int(hit.sum())
        remaining = (remaining - lengths)[hit]
        remaining = remaining[remaining > 0]
    return {
        "cusum_h_nats": design.h_nats, "cusum_arl0_design": design.arl0, "cusum_arl1_design": design.arl1,
        "cusum_median_delay": float(np.median(delays)), "cusum_mean_delay": float(delays.mean()),
        "cusum_false_alarms_per_100k": alarms / args.cusum_runs,
    }


def first_over_budget(error_rate: float, args: BenchArgs, rng: np.random.Generator,
                      config: SequenceConfig = SequenceConfig(min_inclusion_prob=1.0)) -> np.ndarray:
    """Audit index (1-based) at which each of ``anytime_runs`` uniform streams at ``error_rate``
    is first declared over ``anytime_budget`` by the betting sequence; 0: never within the horizon."""
    state = BettingState(np.float64(args.anytime_budget), config, shape=(args.anytime_runs,))
    first = np.zeros(args.anytime_runs, dtype=np.int64)
    for t in tqdm(range(1, args.anytime_audits + 1), desc=f"anytime at {error_rate:.0%}", unit="audit",
                  mininterval=2.0, leave=False):
        state.update(rng.random(args.anytime_runs) < error_rate, 1.0)
        first[(first == 0) & state.shown_over] = t
    return first


def fixed_n_peeking_alarms(error_rate: float, args: BenchArgs, rng: np.random.Generator, confidence: float = 0.95) -> float:
    """Share of runs in which the fixed-n Clopper-Pearson lower bound, recomputed after every
    audit, ever exceeds the budget (a stream exactly at the budget: every alarm is false)."""
    from scipy.stats import binom

    n = np.arange(1, args.anytime_audits + 1)
    # CP lower bound > budget  <=>  P(X >= k | n, budget) < (1 - confidence) / 2: the least such k per n
    k_alarm = binom.isf((1.0 - confidence) / 2.0, n, args.anytime_budget) + 1
    alarms = 0
    for _ in range(args.anytime_runs):
        errors = np.cumsum(rng.random(args.anytime_audits) < error_rate)
        alarms += bool(np.any(errors >= k_alarm))
    return alarms / args.anytime_runs


def anytime(args: BenchArgs, rng: np.random.Generator) -> dict[str, float]:
    at_budget = first_over_budget(args.anytime_budget, args, rng)
    doubled = first_over_budget(2.0 * args.anytime_budget, args, rng)
    detected = doubled[doubled > 0]
    widths = []
    for _ in range(min(args.anytime_runs, 200)):  # the production path: the full grid, one stream at a time
        sequence = ErrorSequence(args.anytime_budget, SequenceConfig(min_inclusion_prob=1.0))
        for error in rng.random(1000) < 0.01:
            sequence.update(bool(error), 1.0)
        report = sequence.report()
        widths.append(report.high - report.low)
    return {
        "anytime_false_alarm_rate": float(np.mean(at_budget > 0)),
        "fixed_n_false_alarm_rate": fixed_n_peeking_alarms(args.anytime_budget, args, rng),
        "anytime_detection_median_audits": float(np.median(detected)) if detected.size else float("inf"),
        "anytime_detected_share": float(detected.size / doubled.size),
        "anytime_width_1000": float(np.mean(widths)),
        "anytime_budget": args.anytime_budget,
        "anytime_runs": float(args.anytime_runs),
        "anytime_audits": float(args.anytime_audits),
    }


def run(args: BenchArgs) -> dict[str, float]:
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    mean_width, width_at_10 = ci_width()
    print(f"Clopper-Pearson 95% width, 1,000 uniform audits at 1%: expected {100 * mean_width:.3f} points "
          f"({100 * width_at_10:.3f} at exactly 10 errors; target <= 1.4)")
    wu = weighted_vs_uniform(args, rng)
    print(f"stream: {args.stream_items:,} accepted answers x {args.replications:,}, true error {100 * wu['true_error']:.2f}% "
          f"(model overconfident: confidences promise 1%)")
    print(f"audits: risk-weighted {wu['audits_weighted']:.0f}, uniform {wu['audits_uniform']:.0f} per stream")
    print(f"effective sample size: risk-weighted {wu['ess_weighted']:.0f} vs uniform {wu['ess_uniform']:.0f}: "
          f"ratio {wu['ess_ratio']:.2f} (target >= 2)")
    print(f"bias of the weighted estimate: {100 * wu['bias']:+.4f} points (+- {100 * wu['bias_mc_error']:.4f} MC, "
          f"target |bias| < 0.02); unweighted mean of the same audits: {100 * wu['naive_bias']:+.3f} points")
    print(f"95% interval coverage: weighted (Chernoff bound from sums) {wu['coverage_weighted']:.3f}, uniform (CP) "
          f"{wu['coverage_uniform']:.3f}; mean width {100 * wu['width_weighted']:.3f} vs {100 * wu['width_uniform']:.3f} points")
    cs = cusum(args, rng)
    print(f"CUSUM 1% -> 2% (h = {cs['cusum_h_nats']:.2f} nats, design ARL0 {cs['cusum_arl0_design']:,.0f}, "
          f"ARL1 {cs['cusum_arl1_design']:,.0f}): median delay {cs['cusum_median_delay']:.0f} audits (target <= 2,000), "
          f"{cs['cusum_false_alarms_per_100k']:.3f} false alarms per 100,000 in-control audits (target <= 1)")
    av = anytime(args, rng)
    print(f"anytime-valid, a check after every audit, {args.anytime_runs} runs x {args.anytime_audits:,} audits at the "
          f"{args.anytime_budget:.0%} budget: false over-budget alarms in {av['anytime_false_alarm_rate']:.3f} of runs "
          f"(target <= 0.025) vs {av['fixed_n_false_alarm_rate']:.3f} for a fixed-n Clopper-Pearson interval")
    print(f"  at 2x the budget: over budget after a median {av['anytime_detection_median_audits']:.0f} audits "
          f"({av['anytime_detected_share']:.1%} of runs within the horizon); width after 1,000 audits at 1%: "
          f"{100 * av['anytime_width_1000']:.2f} points (fixed-n {100 * mean_width:.2f})")
    result = {"ci_width_1000": mean_width, "ci_width_1000_points": 100 * mean_width, **wu, **cs, **av,
              "seconds": time.perf_counter() - start}
    return {k: float(v) for k, v in result.items()}
