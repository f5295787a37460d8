"""``auditstream bench overrides``: do human takeovers, learnt from, make the policy better?

HG-DAgger (Kelly et al. 2019), measured the way the field measures offline learning: online
return over several seeds. Per environment and seed:

1. **Initial policy** π0: behaviour cloning (``bc.py``) on ``demo_episodes`` episodes of the
   simulated human (:func:`training.rl.rollouts.simulated_human`: a PD rule on CartPole,
   Gymnasium's heuristic on LunarLander). Few demonstrations make it mediocre.
2. **Routing threshold**: the ``defer_rate`` quantile of π0's confidence (max probability) on the
   states it visits, exactly as a published policy card's threshold is chosen.
3. **Logs without overrides**: π0 deployed alone (sampled actions, as served) for ``episodes``
   episodes. Their mean return is ``behaviour``.
4. **Logs with overrides**: π0 deployed with routing: a decision below the threshold goes to the
   simulated human, who acts (the takeover); the step is logged with ``source = "human"``.
5. **Fine-tuning**: π0 fine-tuned by behaviour cloning on the demonstrations plus each arm's
   logs (labels: the human's action where a human acted, else the executed one; human steps
   weigh ``human_weight``): ``offline_without_overrides`` and ``offline_with_overrides``.
6. **Evaluation**: each fine-tuned policy acts alone (no human), sampled as served, for
   ``eval_episodes`` episodes on fresh seeds.

JSON (last line): per environment ``behaviour``, ``offline_without_overrides``,
``offline_with_overrides`` → ``{"mean", "ci95": [lo, hi], "seeds"}``, the mean over seeds of each
seed's mean return with a Student-t 95% interval over seeds; also ``human`` (the simulated
human's return), ``logged_with_overrides`` (π0 with takeovers: what the deployment earned),
``takeover_rate`` and ``with_minus_without`` (paired per seed, same interval).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from training.rl.args import OverridesBenchArgs
from training.rl.rollouts import HUMANS, mean_ci95, run_bench, run_episodes, torch_probs

DEMO_EPISODES = {"CartPole-v1": 1, "LunarLander-v3": 2}
ARMS = ("behaviour", "offline_without_overrides", "offline_with_overrides")


def one_seed(env_id: str, seed: int, args: OverridesBenchArgs) -> dict[str, float]:
    """The numbers of one repetition (steps 1-6 of the module docstring)."""
    from training.rl.bc import train_bc
    from training.rl.offline_data import build_dataset
    from training.rl.policy_export import choose_threshold

    demos = run_episodes(env_id, None, args.demo_episodes or DEMO_EPISODES.get(env_id, 2), seed=10 * seed + 1,
                         key_prefix="demo", log=True)
    pi0 = train_bc(build_dataset(demos.records), steps=args.bc_steps, human_weight=args.human_weight, seed=seed)
    probs0 = torch_probs(pi0)
    alone = run_episodes(env_id, probs0, args.episodes, seed=10 * seed + 2, key_prefix="alone", log=True)
    visited = np.stack([np.asarray(r.observation, np.float32) for r in alone.records])
    threshold = choose_threshold(probs0(visited).max(axis=1), args.defer_rate)
    helped = run_episodes(env_id, probs0, args.episodes, seed=10 * seed + 3, threshold=threshold,
                          key_prefix="helped", log=True)
    out = {"behaviour": float(np.mean(alone.returns)), "logged_with_overrides": float(np.mean(helped.returns)),
           "takeover_rate": helped.takeover_rate, "threshold": threshold}
    for arm, logs in (("offline_without_overrides", alone), ("offline_with_overrides", helped)):
        policy = train_bc(build_dataset(demos.records + logs.records), steps=args.finetune_steps,
                          human_weight=args.human_weight, seed=seed, init=pi0)
        out[arm] = float(np.mean(run_episodes(env_id, torch_probs(policy), args.eval_episodes,
                                              seed=10 * seed + 4).returns))
    return out


def bench_env(env_id: str, args: OverridesBenchArgs) -> dict[str, Any]:
    from tqdm import tqdm

    human = float(np.mean(run_episodes(env_id, None, args.eval_episodes, seed=args.seed + 999).returns))
    rows = [one_seed(env_id, args.seed + i, args)
            for i in tqdm(range(args.seeds), desc=f"overrides {env_id}", disable=not args.progress)]
    out: dict[str, Any] = {arm: mean_ci95([r[arm] for r in rows]) for arm in ARMS}
    out["with_minus_without"] = mean_ci95([r["offline_with_overrides"] - r["offline_without_overrides"] for r in rows])
    out["logged_with_overrides"] = mean_ci95([r["logged_with_overrides"] for r in rows])
    out["takeover_rate"] = float(np.mean([r["takeover_rate"] for r in rows]))
    out["human"] = {"return": human, "policy": HUMANS[env_id]}
    out["per_seed"] = rows
    print(f"{env_id} (human {human:.1f}; takeovers {out['takeover_rate']:.1%} of logged decisions):")
    for arm in ARMS + ("with_minus_without",):
        m = out[arm]
        print(f"  {arm:>26}: {m['mean']:8.1f}  95% CI [{m['ci95'][0]:.1f}, {m['ci95'][1]:.1f}] over {m['seeds']} seeds")
    return out


def main(args: OverridesBenchArgs, as_json: bool) -> int:
    if not 0.0 < args.defer_rate < 1.0:
        raise ValueError(f"defer_rate={args.defer_rate} must be in (0, 1): it is the human budget")
    return run_bench(args, bench_env, as_json, "bench overrides")
