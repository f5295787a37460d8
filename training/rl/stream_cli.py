"""RL commands on the stream: ``rl run`` (episodes through the broker), ``rl dataset`` (the offline
dataset of what the stream logged) and ``rl promote`` (shadow, OPE, promotion gate).

Registered by ``training/cli.py`` through ``register(train, rl, bench)``. Nothing heavy at import
time: gymnasium, ONNX Runtime, Kafka clients load inside the handlers. Process settings
(bootstrap, topic prefix, models dir) come from ``AUDITSTREAM_*`` variables, built once per
command by ``Settings.from_env()``.
"""

from __future__ import annotations

import argparse
import os
import sys

from auditstream import finite_json
from auditstream.cli_args import add_dataclass_arguments, check_output_path, dataclass_from_namespace
from training.rl.args import check_gym_env
from training.rl.env_driver import RunArgs
from training.rl.promotion import PromotionConfig
from training.rl.shadow import PromoteArgs

DATASET_FORMATS = ("npz", "minari")


def _settings():
    from auditstream.settings import Settings

    return Settings.from_env()


def _run(args: argparse.Namespace) -> int:
    from training.rl.env_driver import in_process_returns, run

    a = dataclass_from_namespace(RunArgs, args)
    check_gym_env("--env", a.env)  # before the registry, the broker or an episode
    settings = _settings()
    report = run(settings, a)
    summary = report.summary()
    returned = (f"mean return {summary['mean_return']:.1f} ± {summary['std_return']:.1f}"
                if summary["episodes"] else "no episode finished")
    print(f"{summary['episodes']} episodes of {a.env} through the broker: {returned}; {summary['decisions']} decisions in {summary['elapsed_s']:.1f} s "
          f"({summary['decisions_per_s']:.0f}/s); routes {summary['routes']}; sources {summary['sources']}; "
          f"timeouts {summary['timeouts']}", file=sys.stderr if args.json else sys.stdout)
    if args.compare_in_process:
        from auditstream.registry import ModelRegistry

        model = ModelRegistry.from_settings(settings).load(report.model.split("/")[0], report.model.split("/")[1])
        returns, rate = in_process_returns(model.onnx_path, model.card, a.env, a.episodes, a.seed, a.max_steps)
        summary["in_process"] = {"mean_return": float(returns.mean()), "std_return": float(returns.std()),
                                 "decisions_per_s": round(rate, 1)}
        print(f"in process (same action rule and routing, no broker): mean return {returns.mean():.1f} ± "
              f"{returns.std():.1f}, {rate:.0f} decisions/s", file=sys.stderr if args.json else sys.stdout)
    finite_json.print_summary(summary, sort_keys=True)
    return 0


def _dataset_id(args: argparse.Namespace, model: str) -> str:
    return args.dataset_id or f"auditstream/{model}/logs-v0"


def _dataset(args: argparse.Namespace) -> int:
    from training.rl.stream_dataset import build_stream_dataset

    # before the registry and the topics: a --out that cannot be written is one line, not a traceback after the reads
    check_output_path("--out", args.out, "datasets/" if args.format == "minari" else "cartpole_logs.npz",
                      folder=args.format == "minari")
    if args.format == "minari" and (args.dataset_id or args.model):
        from training.rl.minari_format import check_dataset_id

        check_dataset_id(args.out, _dataset_id(args, args.model))  # a taken id: refused before the topics are read
    data, report = build_stream_dataset(_settings(), args.model or None, args.version or None)
    if args.format == "minari":
        from training.rl.minari_format import write_minari

        dataset_id = _dataset_id(args, report.model)
        path = write_minari(data, args.out, dataset_id, env_id=_known_env(report.env_id),
                            algorithm_name=f"{report.model} served by auditstream, routed to human auditors")
        where = f"Minari dataset {dataset_id} in {path} (MINARI_DATASETS_PATH={os.path.abspath(args.out)})"
        summary = {"out": str(path), "format": "minari", "dataset_id": dataset_id, **report.to_dict()}
    else:
        from training.rl.offline_data import save_dataset

        path = save_dataset(data, args.out, env_id=_known_env(report.env_id))
        where, summary = str(path), {"out": str(path), "format": "npz", **report.to_dict()}
    print(f"wrote {where}: {report.episodes} episodes, {report.steps} steps, {report.human_labels} human labels "
          f"({report.overrides} overrides), sources {dict(report.sources)}; episodes dropped "
          f"{dict(report.episodes_dropped) or 'none'}", file=sys.stderr)
    finite_json.print_summary(summary, sort_keys=True)
    return 0


def _known_env(env_id: str) -> str:
    """``env_id`` if Gymnasium knows it (the Minari dataset then carries its spaces and spec)."""
    import gymnasium as gym

    return env_id if env_id and env_id in gym.registry else ""


def _promote(args: argparse.Namespace) -> int:
    from training.rl.shadow import promote

    a, config = dataclass_from_namespace(PromoteArgs, args), dataclass_from_namespace(PromotionConfig, args)
    if not a.candidate or not a.live:
        raise SystemExit("auditstream rl promote: --candidate and --live are required")
    record = promote(_settings(), a, config)
    d = record["decision"]
    verdict = "PROMOTED" if d["promote"] and not a.dry_run else ("would promote" if d["promote"] else "stays in shadow")
    agreement = record["shadow"]["agreement"]
    print(f"{d['candidate']} {verdict}: {d['reason']} (shadow: {record['shadow']['requests']} requests, agreement "
          f"{'none compared' if agreement is None else f'{agreement:.3f}'}); recorded in {record['recorded_at']}",
          file=sys.stderr)
    finite_json.print_summary(record, sort_keys=True, default=float)
    return 0


def register(train: argparse._SubParsersAction, rl: argparse._SubParsersAction,
             bench: argparse._SubParsersAction) -> None:
    p = rl.add_parser("run", help="drive Gymnasium episodes through the broker and the policy consumer")
    add_dataclass_arguments(p, RunArgs)
    p.add_argument("--compare-in-process", action="store_true",
                   help="also run the same episodes with ONNX Runtime in this process and report both")
    p.add_argument("--json", action="store_true", help="human-readable lines on stderr, the JSON line on stdout")
    p.set_defaults(handler=_run)

    p = rl.add_parser("dataset", help="offline dataset (Minari or .npz) from the transitions, decisions and verdicts "
                                      "topics")
    p.add_argument("--out", required=True, help="npz: the output file; minari: the datasets root directory (what "
                                                "MINARI_DATASETS_PATH points at), the dataset goes to OUT/<dataset id>")
    p.add_argument("--format", default="npz", choices=DATASET_FORMATS,
                   help="minari: a Minari dataset (minari.load_dataset reads it); npz: one numpy file in d3rlpy's layout")
    p.add_argument("--dataset-id", default="", help="Minari dataset id (default: auditstream/<model>/logs-v0)")
    p.add_argument("--model", default="", help="only this policy's logs (default: the one model in the logs)")
    p.add_argument("--version", default="", help="only this model version's logs")
    p.set_defaults(handler=_dataset)

    p = rl.add_parser("promote", help="shadow a candidate policy, evaluate it off-policy, make it live if better")
    add_dataclass_arguments(p, PromoteArgs)
    add_dataclass_arguments(p, PromotionConfig)
    p.set_defaults(handler=_promote)
