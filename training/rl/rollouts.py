"""Episodes in process, the way serving acts, with a simulated human where serving would defer.

The benches that measure offline learning (``bench offline``, ``bench overrides``) need three
things the broker loop also does, without the broker: act by the card's rule
(:func:`auditstream.tasks.policy.select_action`: a draw from the probabilities, or the argmax),
route a decision whose confidence (max probability) is below the threshold to a human, and log
every decision as a :class:`~training.rl.offline_data.StepRecord` (propensities of a human step
are one-hot, as in the stream's log).

Simulated humans (:func:`simulated_human`) are fixed, stated controllers that are much better
than the policies they correct:

* CartPole-v1: push toward where the pole is falling, ``action = [θ + 0.5·θ̇ > 0]`` (the classic
  PD rule; it keeps the pole up for all 500 steps from Gymnasium's start states).
* LunarLander-v3: Gymnasium's own hand-written ``heuristic`` controller
  (``gymnasium.envs.box2d.lunar_lander.heuristic``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from training.rl.offline_data import StepRecord

HUMANS = {
    "CartPole-v1": "push toward where the pole is falling: action = [theta + 0.5 * theta_dot > 0]",
    "LunarLander-v3": "Gymnasium's hand-written LunarLander heuristic controller",
}


def simulated_human(env_id: str, env: Any) -> Callable[[np.ndarray], int]:
    """The stated controller that plays the human auditor in ``env_id`` (see the module docstring)."""
    if env_id == "CartPole-v1":
        return lambda obs: int(obs[2] + 0.5 * obs[3] > 0)
    if env_id == "LunarLander-v3":
        from gymnasium.envs.box2d.lunar_lander import heuristic

        base = env.unwrapped
        return lambda obs: int(heuristic(base, obs))
    raise ValueError(f"simulated humans exist for {sorted(HUMANS)}, not {env_id!r}")


@dataclass
class Rollouts:
    returns: list[float] = field(default_factory=list)
    records: list[StepRecord] = field(default_factory=list)
    human_steps: int = 0
    steps: int = 0

    @property
    def takeover_rate(self) -> float:
        return self.human_steps / max(1, self.steps)


def run_episodes(env_id: str, probs_fn: Callable[[np.ndarray], np.ndarray] | None, episodes: int, seed: int,
                 action_selection: str = "sample", threshold: float | None = None, human: bool = False,
                 key_prefix: str = "ep", log: bool = False) -> Rollouts:
    """Run ``episodes`` full episodes of the policy ``probs_fn(obs[1, D]) -> [1, A]``.

    With ``threshold``, a decision whose max probability is below it goes to the simulated human,
    who acts (HG-DAgger's takeover, one decision at a time as serving routes). ``probs_fn=None``
    lets the human act everywhere. ``log`` keeps every decision as a StepRecord."""
    import gymnasium as gym

    from auditstream.tasks.policy import select_action

    env = gym.make(env_id)
    expert = simulated_human(env_id, env) if (human or threshold is not None or probs_fn is None) else None
    rng, out = np.random.default_rng(seed), Rollouts()
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed * 100_003 + episode)
        total, t, done = 0.0, 0, False
        while not done:
            if probs_fn is None:
                probs, deferred = None, True
            else:
                probs = np.asarray(probs_fn(np.asarray(obs, np.float32)[None])[0], dtype=np.float64)
                deferred = threshold is not None and not probs.max() >= threshold
            if deferred:
                action = expert(obs)
                propensities, source, route = np.eye(env.action_space.n)[action], "human", "HUMAN"
                out.human_steps += 1
            else:
                action, propensities = select_action(probs, rng.random(), action_selection)
                source, route = "model", "AUTO"
            next_obs, reward, terminated, truncated, _ = env.step(action)
            if log:
                out.records.append(StepRecord(f"{key_prefix}-{episode}", t, obs, action, propensities, float(reward),
                                              bool(terminated), bool(truncated),
                                              human_action=action if source == "human" else None,
                                              source=source, route=route,
                                              next_observation=next_obs if terminated or truncated else None))
            obs, total, t, done = next_obs, total + float(reward), t + 1, terminated or truncated
            out.steps += 1
        out.returns.append(total)
    env.close()
    return out


def torch_probs(module: Any) -> Callable[[np.ndarray], np.ndarray]:
    """``probs_fn`` of a torch policy whose forward gives (action_probs, value)."""
    import torch

    module = module.cpu().eval()

    def probs(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.as_tensor(obs))[0].numpy()

    return probs


def mean_ci95(values: list[float] | np.ndarray) -> dict[str, Any]:
    """Mean over seeds with a two-sided 95% Student-t interval (seeds are the independent units).
    One value has no interval: ``ci95`` is None (JSON null, never NaN) and ``ci95_missing`` says why."""
    from scipy import stats

    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        raise ValueError("mean_ci95 needs at least one value")
    mean = float(values.mean())
    if len(values) < 2:
        return {"mean": mean, "ci95": None, "seeds": int(len(values)),
                "ci95_missing": "one seed: a t interval over seeds needs at least 2"}
    half = float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))
    return {"mean": mean, "ci95": [mean - half, mean + half], "seeds": int(len(values))}


def ci_text(m: dict[str, Any]) -> str:
    """``95% CI [lo, hi]`` of a :func:`mean_ci95` result, or why it has none."""
    if m.get("ci95") is None:
        return f"no 95% CI ({m.get('ci95_missing', 'none')})"
    return f"95% CI [{m['ci95'][0]:.1f}, {m['ci95'][1]:.1f}]"


def run_bench(args: Any, bench_env: Callable[[str, Any], dict[str, Any]], as_json: bool, what: str) -> int:
    """What the benches on these rollouts share: check the sizes, run ``bench_env`` per
    environment of ``args.envs`` on one torch thread, print the time and the JSON line.

    Refused before any environment is made (:class:`BadArguments`, one line, exit 2): an
    environment without a simulated human (the message lists those that have one). Fewer than
    2 seeds (one seed has no interval) the arguments refuse (``SEEDS_FOR_AN_INTERVAL``)."""
    from auditstream.errors import BadArguments
    from training.rl.args import bench_envs

    envs = bench_envs(args.envs, tuple(HUMANS), "the environments with a simulated human")
    if args.episodes < 1 or args.eval_episodes < 1:
        raise BadArguments(f"need --episodes >= 1 and --eval-episodes >= 1; got {args.episodes} and "
                           f"{args.eval_episodes}")
    import time

    import torch

    from auditstream import finite_json

    torch.set_num_threads(1)  # small MLPs: extra threads only contend on a shared machine
    start = time.perf_counter()
    per_env = {env_id: bench_env(env_id, args) for env_id in envs}
    seconds = time.perf_counter() - start
    print(f"{what}: {args.seeds} seeds x {len(envs)} envs in {seconds:.0f} s")
    if as_json:
        # a NaN is not JSON; a bug that made one fails here, naming where, instead of printing it
        finite_json.print_summary({**per_env, "seconds": round(seconds, 1),
                                   "settings": {k: getattr(args, k) for k in args.__dataclass_fields__}}, sort_keys=True)
    return 0
