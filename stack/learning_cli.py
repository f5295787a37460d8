"""Commands of the learning loop: ``retrain`` (verdicts -> a new model version), ``certify
--from-audits`` (audited traffic -> a proposed threshold) and ``bench loop`` (the learning curve).

They live in the composition root because each joins layers that may not know each other: the
store's verdicts, the training families and serving's ONNX Runtime. Handlers import lazily, so
``auditstream --help`` never imports torch.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from auditstream.cli_args import add_dataclass_arguments, dataclass_from_namespace


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    from stack.loop_bench import LoopBenchArgs
    from stack.recertify import CertifyArgs
    from training.retrain import RetrainArgs

    retrain = commands.add_parser("retrain", help="train version N+1 of a model from the auditors' verdicts (not live)")
    retrain.add_argument("--model", required=True, help="digits or zip-reader")
    add_dataclass_arguments(retrain, RetrainArgs, skip=("model",))
    retrain.set_defaults(handler=_retrain)
    certify = commands.add_parser("certify", help="certify and propose an auto-accept threshold from audited traffic")
    certify.add_argument("--model", required=True, help="registry model")
    add_dataclass_arguments(certify, CertifyArgs, skip=("model",))
    certify.set_defaults(handler=_certify)
    loop = bench.add_parser("loop", help="the learning curve: seed models, streamed rounds, simulated auditors, "
                            "retrain and promote after each round")
    add_dataclass_arguments(loop, LoopBenchArgs)
    loop.set_defaults(handler=_bench_loop)


def export_for_retraining(model: str) -> Path:
    """The store's verdicts of ``model`` (gold included, so the card can count them) as a labels file."""
    from auditstream.settings import Settings
    from monitor.labels import export_labels
    from store import open_store

    settings = Settings.from_env()
    out = settings.state_dir / "labels" / f"{model}-{int(time.time())}.jsonl"
    with open_store(settings.resolved_store_url, create=False) as store:  # it only reads
        export_labels(store, out, model=model, include_gold=True)
    return out


def _retrain(ns: argparse.Namespace) -> int:
    from auditstream.settings import Settings
    from training.retrain import RetrainArgs, family_of, main

    args = dataclass_from_namespace(RetrainArgs, ns)
    family_of(args.model)  # refuse a model it cannot retrain before exporting anything
    if not args.labels:
        import dataclasses

        args = dataclasses.replace(args, labels=str(export_for_retraining(args.model)))
    return main(args, Settings.from_env().models_dir)


def _certify(ns: argparse.Namespace) -> int:
    from stack.recertify import CertifyArgs, main

    return main(dataclass_from_namespace(CertifyArgs, ns))


def _bench_loop(ns: argparse.Namespace) -> int:
    from stack.loop_bench import LoopBenchArgs, main

    return main(dataclass_from_namespace(LoopBenchArgs, ns))
