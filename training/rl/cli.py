"""RL commands: ``train policy`` (PPO), ``rl train-offline`` (BC / CQL), ``bench ope``,
``bench overrides`` (HG-DAgger), ``bench offline`` (BC / CQL vs the behaviour policy).

Registered by ``training/cli.py`` through ``register(train, rl, bench)``. Nothing heavy is
imported here: torch and gymnasium load inside the handlers, so ``auditstream --help`` stays fast.
The streaming commands (``rl run``, ``rl dataset``, ``rl promote``) live with the serving side
and call :mod:`training.rl.offline_data`, :mod:`training.rl.ope` and :mod:`training.rl.promotion`.
"""

from __future__ import annotations

import argparse

from auditstream.cli_args import add_dataclass_arguments, dataclass_from_namespace
from training.rl.args import OfflineArgs, OfflineBenchArgs, OPEBenchArgs, OverridesBenchArgs, PPOArgs, check_gym_env


def _models_dir(args: argparse.Namespace) -> str:
    from auditstream.settings import Settings

    return str(args.models_dir or Settings.from_env().models_dir)


def _train_policy(args: argparse.Namespace) -> int:
    ppo_args = dataclass_from_namespace(PPOArgs, args)
    ppo_args.resolved()  # a rollout that does not split is refused before torch is imported
    check_gym_env("--env", ppo_args.env, discrete=True)  # so is an environment PPO cannot act in
    from training.rl.ppo import main

    return main(ppo_args, _models_dir(args), args.json)


def _train_offline(args: argparse.Namespace) -> int:
    offline_args = dataclass_from_namespace(OfflineArgs, args)
    if offline_args.env:  # evaluated on after training: refused before the dataset is read
        check_gym_env("--env", offline_args.env, discrete=True)
    from training.rl.offline_train import main

    return main(offline_args, _models_dir(args), args.json)


def _bench_ope(args: argparse.Namespace) -> int:
    from training.rl.ope_bench import main

    return main(dataclass_from_namespace(OPEBenchArgs, args), args.json)


def _bench_overrides(args: argparse.Namespace) -> int:
    from training.rl.overrides_bench import main

    return main(dataclass_from_namespace(OverridesBenchArgs, args), args.json)


def _bench_offline(args: argparse.Namespace) -> int:
    from training.rl.offline_bench import main

    return main(dataclass_from_namespace(OfflineBenchArgs, args), args.json)


def register(train: argparse._SubParsersAction, rl: argparse._SubParsersAction,
             bench: argparse._SubParsersAction) -> None:

    p = train.add_parser("policy", help="PPO on a Gymnasium environment; export to ONNX and publish")
    add_dataclass_arguments(p, PPOArgs)
    p.add_argument("--models-dir", default=None, help="registry root (default: AUDITSTREAM_MODELS_DIR or models)")
    p.add_argument("--json", action="store_true", help="end with one JSON line of the results")
    p.set_defaults(handler=_train_policy)

    p = rl.add_parser("train-offline", help="behaviour cloning or discrete CQL on an offline dataset (.npz)")
    add_dataclass_arguments(p, OfflineArgs)
    p.add_argument("--models-dir", default=None, help="registry root (default: AUDITSTREAM_MODELS_DIR or models)")
    p.add_argument("--json", action="store_true", help="end with one JSON line of the results")
    p.set_defaults(handler=_train_offline)

    p = bench.add_parser("ope", help="coverage, bias and width of WIS, DR and FQE intervals on CartPole/LunarLander")
    add_dataclass_arguments(p, OPEBenchArgs)
    p.add_argument("--json", action="store_true", help="end with one JSON line of the results")
    p.set_defaults(handler=_bench_ope)

    p = bench.add_parser("overrides", help="HG-DAgger: online return of a policy fine-tuned on human takeovers vs "
                                           "without them, CartPole/LunarLander, over seeds")
    add_dataclass_arguments(p, OverridesBenchArgs)
    p.add_argument("--json", action="store_true", help="end with one JSON line of the results")
    p.set_defaults(handler=_bench_overrides)

    p = bench.add_parser("offline", help="online return of BC and CQL learnt from logs of a mediocre and of a good "
                                         "behaviour policy vs that policy, CartPole/LunarLander, over seeds")
    add_dataclass_arguments(p, OfflineBenchArgs)
    p.add_argument("--json", action="store_true", help="end with one JSON line of the results")
    p.set_defaults(handler=_bench_offline)
