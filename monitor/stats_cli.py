"""Commands for the QC statistics: ``bench qc`` and the ``cost`` report.

    auditstream bench qc --json          # simulations vs targets; last line JSON (~45 s)
    auditstream cost --model zip --cost-human 1 --cost-audit 1 --cost-error 20 --max-risk 0.01

``cost`` reads the model card's risk-coverage curve from the registry (``AUDITSTREAM_MODELS_DIR``)
and prints the cost per item of model + humans at each threshold, humans only, and the
cost-optimal threshold (qc/cost.py). Nothing heavy is imported at the top.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from dataclasses import dataclass, field

from auditstream import finite_json
from auditstream.cli_args import (COUNT, NON_NEGATIVE, SEED, SHARE, add_dataclass_arguments, check_fields,
                                  dataclass_from_namespace)
from auditstream.errors import ConfigError


@dataclass(frozen=True)
class QCBenchArgs:
    seed: int = field(default=20241, metadata={"check": SEED, "help": "random seed of the simulations"})
    replications: int = field(default=8000, metadata={"check": COUNT, "help": "simulated streams, weighted vs uniform"})
    stream_items: int = field(default=50_000, metadata={"check": COUNT,
                                                        "help": "auto-accepted answers per simulated stream"})
    cusum_runs: int = field(default=4000, metadata={"check": COUNT,
                                                    "help": "CUSUM detection runs and 100k-audit in-control streams"})
    anytime_runs: int = field(default=500, metadata={"check": COUNT,
                                                     "help": "runs of the anytime-valid monitoring simulations"})
    anytime_audits: int = field(default=20_000, metadata={"check": COUNT,
                                                          "help": "audits per anytime-valid run (a check after each)"})
    json: bool = field(default=False, metadata={"help": "print only the final JSON line on stdout (the rest on stderr)"})

    def __post_init__(self) -> None:
        check_fields(self)  # before the simulations start


@dataclass(frozen=True)
class CostArgs:
    model: str = field(default="", metadata={"help": "model name in the registry"})
    version: str = field(default="", metadata={"help": "model version (default: latest)"})
    cost_human: float = field(default=1.0, metadata={"check": NON_NEGATIVE, "help": "cost of one human decision"})
    cost_audit: float = field(default=1.0, metadata={"check": NON_NEGATIVE,
                                                     "help": "cost of one QC audit of an auto-accepted answer"})
    cost_error: float = field(default=10.0, metadata={"check": NON_NEGATIVE,
                                                      "help": "cost of one wrong answer nobody caught"})
    cost_model: float = field(default=0.0, metadata={"check": NON_NEGATIVE, "help": "the model's own cost per item"})
    qc_rate: float = field(default=0.02, metadata={"check": SHARE, "help": "share of auto-accepted answers audited"})
    human_error_rate: float = field(default=0.0, metadata={"check": SHARE,
                                                           "help": "share of human decisions that are wrong"})
    # -1 (no limit) or a risk: not one Range, so checked below and described in its help
    max_risk: float = field(default=-1.0, metadata={"help": "only thresholds with risk <= this: a number from 0 to 1, "
                                                            "or -1 for no limit"})
    json: bool = field(default=False, metadata={"help": "print only the final JSON line on stdout"})

    def __post_init__(self) -> None:
        check_fields(self)  # before the registry is opened
        if self.max_risk != -1.0 and not SHARE.accepts(self.max_risk):
            raise ConfigError("--max-risk", self.max_risk, "a number from 0 to 1, or -1 for no limit, e.g. -1.0")


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    qc = bench.add_parser("qc", help="QC statistics vs targets: CI width, risk-weighted ESS and bias, CUSUM delay, "
                        "anytime-valid false alarms and detection")
    add_dataclass_arguments(qc, QCBenchArgs)
    qc.set_defaults(handler=run_bench_qc)
    cost = commands.add_parser("cost", help="cost per item of model + humans vs humans only; cost-optimal threshold")
    add_dataclass_arguments(cost, CostArgs)
    cost.set_defaults(handler=run_cost)


def run_bench_qc(ns: argparse.Namespace) -> int:
    from qc.bench import BenchArgs, run

    args = dataclass_from_namespace(QCBenchArgs, ns)
    bench_args = BenchArgs(seed=args.seed, replications=args.replications, stream_items=args.stream_items,
                           cusum_runs=args.cusum_runs, anytime_runs=args.anytime_runs,
                           anytime_audits=args.anytime_audits)
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        result = run(bench_args)
    finite_json.print_summary(result, sort_keys=True)
    return 0


def run_cost(ns: argparse.Namespace) -> int:
    from auditstream.registry import ModelRegistry
    from auditstream.settings import Settings
    from qc.cost import Costs, cost_report

    args = dataclass_from_namespace(CostArgs, ns)
    if not args.model:
        raise ConfigError("--model", args.model, "the name of a model in the registry")
    settings = Settings.from_env()
    card = ModelRegistry.from_settings(settings).card(args.model, args.version or None)
    costs = Costs(human=args.cost_human, audit=args.cost_audit, error=args.cost_error, qc_rate=args.qc_rate,
                  model=args.cost_model, human_error_rate=args.human_error_rate)
    report = cost_report(card.risk_coverage, costs, None if args.max_risk == -1.0 else args.max_risk,
                         certified_threshold=card.triage.threshold)
    out = sys.stderr if args.json else sys.stdout
    print(f"{card.name} v{card.version}: certified threshold {card.triage.threshold:.4f}", file=out)
    print(f"{'threshold':>10} {'coverage':>9} {'risk':>8} {'cost/item':>10}", file=out)
    for t, c, r, k in zip(report.thresholds, report.coverage, report.risk, report.cost_per_item):
        print(f"{t:10.4f} {c:9.3f} {r:8.4f} {k:10.4g}", file=out)
    print(f"humans only: {report.humans_only:.4g} per item; {report.reason}", file=out)
    summary = {k: v for k, v in vars(report).items() if not isinstance(v, tuple)}
    summary.update(model=card.name, version=card.version, curve=[
        {"threshold": t, "coverage": c, "risk": r, "cost_per_item": k}
        for t, c, r, k in zip(report.thresholds, report.coverage, report.risk, report.cost_per_item)])
    finite_json.print_summary(summary, sort_keys=True)
    return 0
