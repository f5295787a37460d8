"""``auditstream rl train-offline``: learn a policy from a logged dataset, export, publish.

Reads a Minari dataset written by :func:`training.rl.minari_format.write_minari` or an ``.npz``
written by :func:`training.rl.offline_data.save_dataset` (``rl dataset`` builds either from the
decisions and verdicts topics), trains behaviour cloning on the human-corrected
actions (``--algorithm bc``) or discrete CQL (``--algorithm cql``), estimates the new policy's
value off-policy on the same logs (WIS, DR, FQE with intervals: the numbers ``rl promote``
compares), optionally evaluates it online when ``--env`` is given, exports it with a parity check
and publishes it with a policy model card::

    auditstream rl train-offline --dataset logs.npz --algorithm cql --env CartPole-v1 --json
    auditstream rl train-offline --dataset datasets/auditstream/policy-cartpole-v1/logs-v0 --algorithm bc --json
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from typing import Any

import numpy as np

from auditstream import finite_json
from auditstream.errors import ConfigError
from auditstream.finite_json import finite_or_none
from training.rl.args import OfflineArgs
from training.rl.offline_data import OfflineDataset, dataset_env_id, load_dataset
from training.rl.ope_stats import SUPPORT_TOLERANCE
from training.rl.promotion import MIN_EFFECTIVE_EPISODES, unsupported_text

ALGORITHMS = ("bc", "cql")
# What metrics.ope of the card estimates, by the card's action selection.
OPE_POLICY = {
    "sample": "the policy as served: actions drawn from action_probs; unrouted (no triage, no humans)",
    "greedy": "the policy as served: argmax of action_probs (one-hot); unrouted (no triage, no humans)",
}


def load_logs(path: Any) -> OfflineDataset:
    """A Minari dataset's directory (or its ``data`` folder), else an ``.npz`` file. Whatever
    cannot be read or breaks a rule of the format (no such path, a directory that is not a Minari
    dataset, a damaged file, inconsistent arrays) is a :class:`DatasetRefused` naming the path,
    raised before any training: the CLI prints it on one line and exits with status 2."""
    from training.rl.minari_format import is_minari_dataset, read_minari

    return read_minari(path) if is_minari_dataset(path) else load_dataset(path)


def check_env_fits(env_id: str, data: OfflineDataset, recorded: str, dataset: Any) -> None:
    """:class:`ConfigError` naming ``--env`` when the policy learnt from ``data`` could not act in
    ``env_id``: the dataset says it was logged on another environment (``recorded``), or the
    environment's observations or actions are not the dataset's. Called before training, not
    after it, when the online evaluation would fail on the first step."""
    import gymnasium as gym

    if recorded and recorded != env_id:
        raise ConfigError("--env", env_id, f"the environment the dataset was logged on, {recorded} ({dataset} "
                                           f"records it), or no --env (no online evaluation)")
    env = gym.make(env_id)
    try:
        space = env.observation_space
        n_actions = getattr(env.action_space, "n", None)
        if space.shape != data.observations.shape[1:] or n_actions != data.n_actions:
            raise ConfigError("--env", env_id, f"an environment with the dataset's observations "
                                               f"{tuple(data.observations.shape[1:])} and {data.n_actions} actions "
                                               f"({env_id} has {space.shape} and {n_actions}), or no --env")
    finally:
        env.close()


def train_policy(args: OfflineArgs, data: Any) -> Any:
    if args.algorithm == "bc":
        from training.rl.bc import train_bc

        return train_bc(data, args.steps, args.batch_size, args.learning_rate, args.hidden, args.human_weight,
                        args.gamma, args.seed, args.progress)
    if args.algorithm == "cql":
        from training.rl.cql import train_cql

        return train_cql(data, args.steps, args.batch_size, args.learning_rate, args.hidden, args.gamma,
                         args.cql_alpha, args.target_update, args.policy_temperature, args.seed, args.progress)
    raise ValueError(f"algorithm {args.algorithm!r} not one of {ALGORITHMS}")


def online_returns(module: Any, env_id: str, episodes: int, seed: int, action_selection: str = "sample") -> np.ndarray:
    from training.rl.ppo import evaluate

    return evaluate(module, env_id, episodes, seed, progress=False, action_selection=action_selection)["returns"]


def run(args: OfflineArgs, models_dir: str) -> dict[str, Any]:
    from training.rl.ope import evaluate as ope_evaluate
    from training.rl.ope import on_policy_value
    from training.rl.ope_humans import with_human_steps
    from training.rl.policy_export import NumpyPolicy, acting_policy, card_name, export_policy, policy_card

    data = load_logs(args.dataset)
    if args.env:
        check_env_fits(args.env, data, dataset_env_id(args.dataset), args.dataset)
    start = time.perf_counter()
    module = train_policy(args, data)
    train_seconds = time.perf_counter() - start
    ope_data, human_steps = with_human_steps(data, args.ope_human_steps, seed=args.seed)
    # The card describes the policy that will serve: a greedy one acts with the argmax (one-hot),
    # not with its soft probabilities.
    served = acting_policy(NumpyPolicy.from_torch(module), args.action_selection)
    estimates = ope_evaluate(ope_data, served, args.gamma, seed=args.seed)
    logged = on_policy_value(ope_data, args.gamma, seed=args.seed)
    metrics: dict[str, Any] = {
        "train_seconds": round(train_seconds, 2), "dataset_steps": int(len(data.actions)),
        "dataset_episodes": data.n_episodes, "human_labelled_steps": int(np.sum(data.human_actions >= 0)),
        "ope": {name: e.to_dict() for name, e in estimates.items()}, "logged_policy_value": logged.to_dict(),
        "ope_policy": OPE_POLICY[args.action_selection], "gamma": args.gamma, "ope_human_steps": human_steps,
        **ope_caveats(estimates),
    }
    if args.env:
        returns = online_returns(module, args.env, args.eval_episodes, args.seed, args.action_selection)
        metrics.update(mean_return=float(returns.mean()), std_return=float(returns.std()), episodes=len(returns),
                       action_selection=args.action_selection)
    onnx_bytes, parity = export_policy(module, data.observations)
    metrics["parity_max_abs_diff"] = parity
    # the environment the card describes: --env, else the one the dataset records (its action names and
    # safe action), else only a name taken from the file
    env_id = args.env or dataset_env_id(args.dataset) or str(args.dataset.stem)
    training = {"algorithm": args.algorithm, "args": {k: str(v) for k, v in asdict(args).items()}}
    card = policy_card(module, env_id, args.name or card_name(env_id, f"policy-{args.algorithm}"), data.observations,
                       metrics, training=training, action_selection=args.action_selection)
    nested = ("ope", "logged_policy_value")
    summary = {"algorithm": args.algorithm, **{k: v for k, v in metrics.items() if k not in nested},
               **{f"ope_{k}": rounded(e.value) for k, e in estimates.items()},
               **{f"ope_{k}_lower": rounded(e.lower) for k, e in estimates.items()},
               "logged_policy_value": rounded(logged.value)}
    if args.publish:
        from auditstream.registry import ModelRegistry

        registered = ModelRegistry(models_dir).publish(card, onnx_bytes)
        summary.update(model=registered.card.name, version=registered.card.version)
    return summary


def rounded(value: float) -> float | None:
    """``value`` to 4 places for the summary; None (null) where it is undefined (``ope_undefined`` says why)."""
    x = finite_or_none(value)
    return None if x is None else round(x, 4)


def ope_caveats(estimates: dict[str, Any], max_unsupported: float = SUPPORT_TOLERANCE,
                min_effective_episodes: float = MIN_EFFECTIVE_EPISODES) -> dict[str, dict[str, str]]:
    """Why an estimate's numbers do not stand as they are, per estimator (the promotion gate's
    defaults decide): ``ope_undefined`` -- its value or interval is null, and why;
    ``ope_unsupported`` -- the logs do not show what the policy earns: it puts more than
    ``max_unsupported`` on actions logged with propensity 0, or its importance weights rest on
    fewer than ``min_effective_episodes`` episodes (the logs hardly ever act as it does). FQE
    still gives a number there -- Q's extrapolation -- and ``rl promote`` would refuse it
    (no_support, too_few_effective_episodes)."""
    undefined = {k: e.details.get("undefined") or e.details.get("no_interval") or "not a finite number"
                 for k, e in estimates.items() if not all(math.isfinite(x) for x in (e.value, e.lower, e.upper))}
    unsupported = {}
    for k, e in estimates.items():
        ess = e.details.get("effective_sample_size", math.inf)
        if max(e.details.get("unsupported_mass", 0.0), e.details.get("unsupported_probability", 0.0)) > max_unsupported:
            unsupported[k] = unsupported_text("the policy", k, e) + f" (more than {max_unsupported:g})"
        elif ess < min_effective_episodes:
            unsupported[k] = (f"the policy's {k} importance weights rest on {ess:.3g} effective episodes (fewer than "
                              f"{min_effective_episodes:g}): the logs hardly ever act as the policy does")
    return {"ope_undefined": undefined, "ope_unsupported": unsupported}


def _shown(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.3f}"


def main(args: OfflineArgs, models_dir: str, as_json: bool) -> int:
    summary = run(args, models_dir)
    online = f"; online mean return {summary['mean_return']:.1f}" if "mean_return" in summary else ""
    unsupported = summary["ope_unsupported"]
    caveat = (f" (unsupported by the logs, not evidence: {', '.join(sorted(unsupported))})" if unsupported else "")
    print(f"{summary['algorithm']}: trained in {summary['train_seconds']:.0f} s on {summary['dataset_steps']} steps; "
          f"logged policy {_shown(summary['logged_policy_value'])}; OPE wis {_shown(summary['ope_wis'])} "
          f"dr {_shown(summary['ope_dr'])} fqe {_shown(summary['ope_fqe'])}{caveat}{online}")
    if as_json:
        finite_json.print_summary(summary, sort_keys=True)
    return 0
