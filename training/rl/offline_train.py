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

import json
import time
from dataclasses import asdict
from typing import Any

import numpy as np

from training.rl.args import OfflineArgs
from training.rl.offline_data import OfflineDataset, load_dataset

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
    }
    if args.env:
        returns = online_returns(module, args.env, args.eval_episodes, args.seed, args.action_selection)
        metrics.update(mean_return=float(returns.mean()), std_return=float(returns.std()), episodes=len(returns),
                       action_selection=args.action_selection)
    onnx_bytes, parity = export_policy(module, data.observations)
    metrics["parity_max_abs_diff"] = parity
    env_id = args.env or str(args.dataset.stem)
    training = {"algorithm": args.algorithm, "args": {k: str(v) for k, v in asdict(args).items()}}
    card = policy_card(module, env_id, args.name or card_name(env_id, f"policy-{args.algorithm}"), data.observations,
                       metrics, training=training, action_selection=args.action_selection)
    nested = ("ope", "logged_policy_value")
    summary = {"algorithm": args.algorithm, **{k: v for k, v in metrics.items() if k not in nested},
               **{f"ope_{k}": round(e.value, 4) for k, e in estimates.items()},
               **{f"ope_{k}_lower": round(e.lower, 4) for k, e in estimates.items()},
               "logged_policy_value": round(logged.value, 4)}
    if args.publish:
        from auditstream.registry import ModelRegistry

        registered = ModelRegistry(models_dir).publish(card, onnx_bytes)
        summary.update(model=registered.card.name, version=registered.card.version)
    return summary


def main(args: OfflineArgs, models_dir: str, as_json: bool) -> int:
    summary = run(args, models_dir)
    online = f"; online mean return {summary['mean_return']:.1f}" if "mean_return" in summary else ""
    print(f"{summary['algorithm']}: trained in {summary['train_seconds']:.0f} s on {summary['dataset_steps']} steps; "
          f"logged policy {summary['logged_policy_value']:.3f}; OPE wis {summary['ope_wis']:.3f} "
          f"dr {summary['ope_dr']:.3f} fqe {summary['ope_fqe']:.3f}{online}")
    if as_json:
        print(json.dumps(summary, sort_keys=True))
    return 0
