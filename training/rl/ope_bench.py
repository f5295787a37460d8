"""``auditstream bench ope``: do the OPE intervals cover the true value of a policy?

For each environment we log ``trials`` independent datasets of ``episodes`` episodes with a known
behaviour policy, estimate a different target policy's value with WIS, DR and FQE, and compare
each 95% interval with the target's true value, measured by Monte Carlo with
``truth_episodes`` fresh episodes. Printed per estimator: coverage (share of intervals holding
the truth; the target is >= 0.9), bias (mean estimate - truth) and mean interval width.

Policies: ε-soft versions of fixed heuristics, so the bench needs no training and runs in a few
minutes: CartPole pushes toward the side the pole leans to (sign of the angle);
LunarLander uses Gymnasium's own hand-written ``heuristic`` controller. Behaviour ε = 0.3,
target ε = 0.1, so the two policies differ on a sizeable share of steps.

Value: discounted with γ = 0.95 over the first ``horizon`` = 150 steps of each episode
(episodes are cut there and marked as timeouts). γ = 0.95 keeps the effective horizon near 20
steps, where products of importance ratios still have manageable variance; the cut at 150
steps changes the value by at most γ^150 ≈ 5e-4 of the reward scale, and the estimand is
defined with the cut, so it is exact.

JSON (last line): ``wis``, ``dr``, ``fqe`` → pooled over environments: ``coverage`` (all trials
together), ``bias`` and ``width`` in units of the target policy's per-episode return standard
deviation (so environments with different reward scales can be averaged; dividing by the true
value would blow up where it is near 0, as LunarLander's is), averaged over environments;
``per_env`` → environment → estimator → ``coverage``, ``bias``, ``width``, ``rmse`` in reward
units, plus ``true_value``, its Monte Carlo standard error and ``return_sd``. Coverage and width
count the trials where the estimator gave an interval (``undefined``: those where it gave none);
an environment whose returns do not vary is left out of the pooled bias and width.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from auditstream import finite_json
from training.rl.args import OPE_BENCH_ENVS, OPEBenchArgs, bench_envs
from training.rl.offline_data import OfflineDataset, StepRecord, build_dataset
from training.rl.ope import evaluate
from training.rl.policy_export import NumpyPolicy

ESTIMATORS = ("wis", "dr", "fqe")


def cartpole_greedy(obs: np.ndarray) -> np.ndarray:
    """Push toward the side the pole leans to (sign of the angle): keeps it up for a while but
    fails often enough within the horizon that the value is not a constant."""
    return (obs[:, 2] > 0).astype(np.int64)


def lunar_greedy(env: Any) -> Callable[[np.ndarray], np.ndarray]:
    from gymnasium.envs.box2d.lunar_lander import heuristic

    base = env.unwrapped
    return lambda obs: np.asarray([heuristic(base, o) for o in obs], dtype=np.int64)


def make_policies(env_id: str, env: Any, args: OPEBenchArgs) -> tuple[NumpyPolicy, NumpyPolicy]:
    """(behaviour, target) for ``env_id``."""
    if env_id == "CartPole-v1":
        greedy, n = cartpole_greedy, 2
    elif env_id == "LunarLander-v3":
        greedy, n = lunar_greedy(env), 4
    else:  # OPEBenchArgs refuses it first (OPE_BENCH_ENVS)
        raise ValueError(f"bench ope knows heuristics for {', '.join(OPE_BENCH_ENVS)}, not {env_id!r}")
    return (NumpyPolicy.softened(greedy, n, args.behaviour_epsilon),
            NumpyPolicy.softened(greedy, n, args.target_epsilon))


def rollout(env: Any, policy: NumpyPolicy, episodes: int, horizon: int, rng: np.random.Generator,
            seed: int, key_prefix: str) -> list[StepRecord]:
    """Run ``episodes`` episodes (cut at ``horizon`` steps) and log every decision."""
    records: list[StepRecord] = []
    for e in range(episodes):
        obs, _ = env.reset(seed=seed + e)
        for t in range(horizon):
            probs = policy.probs(obs[None])[0]
            action = min(int(np.searchsorted(np.cumsum(probs), rng.random(), side="right")), len(probs) - 1)
            next_obs, reward, terminated, truncated, _ = env.step(action)
            cut = t == horizon - 1
            ended = terminated or truncated or cut
            records.append(StepRecord(f"{key_prefix}-{e}", t, obs, action, probs, float(reward), bool(terminated),
                                      bool(truncated or cut), next_observation=next_obs if ended else None))
            obs = next_obs
            if terminated or truncated:
                break
    return records


def true_value(env: Any, policy: NumpyPolicy, args: OPEBenchArgs, seed: int) -> tuple[float, float, float]:
    """Monte Carlo value of ``policy``, its standard error and the returns' standard deviation."""
    from training.rl.ope import discounted_returns

    rng = np.random.default_rng(seed)
    data = build_dataset(rollout(env, policy, args.truth_episodes, args.horizon, rng, seed, "truth"))
    returns = discounted_returns(data, args.gamma)
    sd = float(returns.std(ddof=1))
    return float(returns.mean()), sd / np.sqrt(len(returns)), sd


def bench_env(env_id: str, args: OPEBenchArgs) -> dict[str, Any]:
    import gymnasium as gym
    from tqdm import tqdm

    env = gym.make(env_id)
    behaviour, target = make_policies(env_id, env, args)
    truth, truth_se, return_sd = true_value(env, target, args, seed=args.seed + 1_000_000)
    print(f"{env_id}: true value of the target policy {truth:.3f} ± {truth_se:.3f} (MC, {args.truth_episodes} "
          f"episodes, gamma={args.gamma}, horizon={args.horizon})")
    rows: dict[str, list[tuple[float, float, float]]] = {k: [] for k in ESTIMATORS}
    for trial in tqdm(range(args.trials), desc=f"ope {env_id}", disable=not args.progress):
        rng = np.random.default_rng(args.seed + trial)
        data: OfflineDataset = build_dataset(
            rollout(env, behaviour, args.episodes, args.horizon, rng, args.seed + 10_000 * (trial + 1), f"t{trial}"))
        estimates = evaluate(data, target, args.gamma, args.confidence, args.bootstrap, seed=args.seed + trial)
        for name in ESTIMATORS:
            est = estimates[name]
            rows[name].append((est.value, est.lower, est.upper))
    env.close()
    out: dict[str, Any] = {"true_value": truth, "true_value_se": truth_se, "return_sd": return_sd}
    for name in ESTIMATORS:
        out[name] = score(np.asarray(rows[name], dtype=float), truth)
        row = out[name]
        print(f"  {name:>3}: coverage {_shown(row['coverage'], '.3f')}  bias {_shown(row['bias'], '+.3f')}  "
              f"width {_shown(row['width'], '.3f')}  rmse {_shown(row['rmse'], '.3f')}"
              + (f"  (no interval in {row['undefined']} of {args.trials} trials)"
                 if row["undefined"] else ""))
    return out


def score(rows: np.ndarray, truth: float) -> dict[str, Any]:
    """Coverage and width over the trials whose interval is defined, bias and RMSE over those
    whose estimate is; ``undefined``: trials without an interval (an estimator that gives none
    is not scored as a miss, and no NaN reaches the summary). None where no trial has one."""
    values = rows[:, 0][np.isfinite(rows[:, 0])]
    bounded = rows[np.isfinite(rows[:, 1]) & np.isfinite(rows[:, 2])]
    return {"coverage": float(np.mean((bounded[:, 1] <= truth) & (truth <= bounded[:, 2]))) if len(bounded) else None,
            "width": float((bounded[:, 2] - bounded[:, 1]).mean()) if len(bounded) else None,
            "bias": float(values.mean() - truth) if len(values) else None,
            "rmse": float(np.sqrt(np.mean((values - truth) ** 2))) if len(values) else None,
            "undefined": int(len(rows) - len(bounded))}


def pool(per_env: dict[str, dict[str, Any]], name: str) -> dict[str, float | None]:
    """An estimator's rows averaged over environments: coverage as it is, bias and width in
    units of each environment's return standard deviation. An environment whose returns do not
    vary (a deterministic target over a short horizon: the s.d. is rounding noise) or whose row
    is undefined is left out of that average; None where none is left."""
    def mean(key: str, scaled: bool) -> float | None:
        values = [row[name][key] / (row["return_sd"] if scaled else 1.0) for row in per_env.values()
                  if row[name][key] is not None and (not scaled or _varies(row))]
        return float(np.mean(values)) if values else None
    return {"coverage": mean("coverage", False), "bias": mean("bias", True), "width": mean("width", True)}


def _varies(row: dict[str, Any]) -> bool:
    return row["return_sd"] > 1e-9 * max(1.0, abs(row["true_value"]))


def _shown(x: float | None, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def main(args: OPEBenchArgs, as_json: bool) -> int:
    envs = bench_envs(args.envs, OPE_BENCH_ENVS, "the environments with a heuristic policy")  # (args checked it)
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)  # many small solves: BLAS threads only contend on a shared machine
    start = time.perf_counter()
    per_env = {env_id: bench_env(env_id, args) for env_id in envs}
    pooled = {name: pool(per_env, name) for name in ESTIMATORS}
    for name, row in pooled.items():
        print(f"pooled {name:>3}: coverage {_shown(row['coverage'], '.3f')}  bias {_shown(row['bias'], '+.4f')} sd"
              f"  width {_shown(row['width'], '.4f')} sd (in return standard deviations)")
    seconds = time.perf_counter() - start
    print(f"{args.trials} trials x {len(envs)} envs in {seconds:.0f} s")
    if as_json:
        finite_json.print_summary({**pooled, "per_env": per_env, "seconds": round(seconds, 1),
                                   "settings": {k: getattr(args, k) for k in args.__dataclass_fields__}}, sort_keys=True)
    return 0
