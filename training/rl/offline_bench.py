"""``auditstream bench offline``: do the offline learners beat the policy that logged their data?

The field's test of an offline RL algorithm (D4RL's "medium" and "expert" datasets): log
episodes with a behaviour policy, learn from the logs alone, then run the learnt policy online
and compare its return with the behaviour policy's, over several seeds, on logs of a mediocre
and of a good behaviour policy. Per environment, data quality and seed:

* **mediocre** behaviour: behaviour cloning on ``demo_episodes`` episodes of the simulated human
  (:mod:`training.rl.rollouts`), acting by sampling its probabilities (as served); **good**
  behaviour: the simulated human itself, ``good_epsilon``-soft (a known probability vector).
* ``episodes`` logged episodes (with the behaviour propensities); ``behaviour`` is their mean
  return.
* ``bc`` (``bc.py`` on the executed actions; no human labels here; ``bc_steps``) and ``cql``
  (``cql.py``; ``cql_steps``) learnt from the logs, evaluated online for ``eval_episodes`` episodes acting greedily (argmax), as the
  offline RL literature evaluates learnt policies.

JSON (last line): ``<env>.<quality>.{behaviour, bc, cql, bc_minus_behaviour, cql_minus_behaviour}``
→ ``{"mean", "ci95": [lo, hi], "seeds"}`` (Student-t over seeds; differences paired per seed). An
environment without a simulated human and ``--seeds`` below 2 (no interval) are refused before
anything runs; the JSON never holds NaN.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from training.rl.args import OfflineBenchArgs
from training.rl.overrides_bench import DEMO_EPISODES
from training.rl.rollouts import ci_text, mean_ci95, run_bench, run_episodes, simulated_human, torch_probs

QUALITIES = ("mediocre", "good")


def behaviour_policy(env_id: str, quality: str, seed: int, args: OfflineBenchArgs) -> Any:
    """``probs_fn`` of the behaviour policy of ``quality`` (see the module docstring)."""
    if quality == "good":
        import gymnasium as gym

        env = gym.make(env_id)
        human, n = simulated_human(env_id, env), int(env.action_space.n)
        env.close()  # the heuristics read only the observation (and the env's fixed settings)

        def probs(obs: np.ndarray) -> np.ndarray:
            out = np.full((len(obs), n), args.good_epsilon / n)
            out[np.arange(len(obs)), [human(o) for o in obs]] += 1.0 - args.good_epsilon
            return out

        return probs
    from training.rl.bc import train_bc
    from training.rl.offline_data import build_dataset

    demos = run_episodes(env_id, None, args.demo_episodes or DEMO_EPISODES.get(env_id, 2), seed=10 * seed + 1,
                         key_prefix="demo", log=True)
    return torch_probs(train_bc(build_dataset(demos.records), steps=args.demo_bc_steps, seed=seed))


def one_seed(env_id: str, quality: str, seed: int, args: OfflineBenchArgs) -> dict[str, float]:
    from training.rl.bc import train_bc
    from training.rl.cql import train_cql
    from training.rl.offline_data import build_dataset

    logs = run_episodes(env_id, behaviour_policy(env_id, quality, seed, args), args.episodes, seed=10 * seed + 5,
                        key_prefix="logs", log=True)
    data = build_dataset(logs.records)
    learnt = {"bc": train_bc(data, steps=args.bc_steps, seed=seed),
              "cql": train_cql(data, steps=args.cql_steps, gamma=args.gamma, alpha=args.cql_alpha, seed=seed)}
    out = {"behaviour": float(np.mean(logs.returns))}
    for name, policy in learnt.items():
        returns = run_episodes(env_id, torch_probs(policy), args.eval_episodes, seed=10 * seed + 6,
                               action_selection="greedy").returns
        out[name] = float(np.mean(returns))
    return out


def bench_env(env_id: str, args: OfflineBenchArgs) -> dict[str, Any]:
    from tqdm import tqdm

    result: dict[str, Any] = {}
    for quality in QUALITIES:
        rows = [one_seed(env_id, quality, args.seed + i, args)
                for i in tqdm(range(args.seeds), desc=f"offline {env_id} {quality}", disable=not args.progress)]
        out: dict[str, Any] = {k: mean_ci95([r[k] for r in rows]) for k in ("behaviour", "bc", "cql")}
        for k in ("bc", "cql"):
            out[f"{k}_minus_behaviour"] = mean_ci95([r[k] - r["behaviour"] for r in rows])
        out["per_seed"] = rows
        result[quality] = out
        print(f"{env_id}, {quality} behaviour:")
        for k in ("behaviour", "bc", "cql", "bc_minus_behaviour", "cql_minus_behaviour"):
            m = out[k]
            print(f"  {k:>19}: {m['mean']:8.1f}  {ci_text(m)} over {m['seeds']} seeds")
    return result


def main(args: OfflineBenchArgs, as_json: bool) -> int:
    if not 0.0 <= args.good_epsilon <= 1.0:
        from auditstream.errors import BadArguments

        raise BadArguments(f"--good-epsilon {args.good_epsilon} must be in [0, 1]")
    return run_bench(args, bench_env, as_json, "bench offline")
