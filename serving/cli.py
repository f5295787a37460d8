"""Serving commands: ``serve``, ``produce`` and ``dlq replay`` (the embedded broker and ``bench
serve`` run the whole stack: :mod:`stack.cli`). Handlers import their modules lazily, so ``auditstream --help`` stays fast and
importing this module pulls in neither ONNX Runtime nor a Kafka client (nor ever torch).

Process settings come from ``AUDITSTREAM_*`` variables (auditstream/settings.py), built once per
command by ``Settings.from_env()``; job arguments are the frozen dataclasses below.
"""

from __future__ import annotations

import argparse
import sys
import typing
from dataclasses import dataclass, field
from typing import Literal

from auditstream import finite_json
from auditstream.cli_args import (COUNT, NON_NEGATIVE, SEED, Range, add_checked_argument, add_dataclass_arguments,
                                  check_fields, dataclass_from_namespace)
from auditstream.errors import BadArguments, ConfigError
from auditstream.wire.codec import Reason
from serving.workers import MAX_WORKERS

Source = Literal["auto", "random", "png", "digits"]  # what produce --source takes (serving/loadgen.py)
WORKERS = Range(1, MAX_WORKERS, whole=True)


@dataclass(frozen=True)
class ProduceArgs:
    model: str = field(default="", metadata={"help": "model name: requests go to <prefix>.requests.<model>"})
    version: str = field(default="", metadata={"help": "model version whose input spec to follow (default: latest)"})
    rate: float = field(default=100.0, metadata={"help": "requests per second (0 = as fast as possible)",
                                                 "check": NON_NEGATIVE})
    count: int = field(default=1000, metadata={"help": "how many requests to send", "check": COUNT})
    source: Source = field(
        default="auto", metadata={"help": "inputs: auto (the card's choice), random, png (image models), digits "
                                          "(scikit-learn's 8x8 digits, scaled up)"})
    seed: int = field(default=0, metadata={"help": "random seed of generated inputs", "check": SEED})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self) -> None:
        check_fields(self)  # before the registry or the broker is touched
        if self.source not in typing.get_args(Source):  # (argparse's choices hold only on the command line)
            raise ConfigError("--source", self.source, f"one of {', '.join(typing.get_args(Source))}")


def _settings(**overrides: object):
    from auditstream.settings import Settings

    return Settings.from_env(**overrides)


# Namespace entries that are not serve's own options (the top-level parser's and argparse's).
# --supervisor-pid too: each supervisor gives its workers its own pid.
_NOT_SERVE_OPTIONS = ("command", "handler", "log_level", "workers", "supervisor_pid")


def _serve(args: argparse.Namespace) -> int:
    from serving.app import check_shadow_version

    check_shadow_version(args.shadow, args.version)  # before any model or broker is touched
    if args.supervisor_pid is not None:  # a worker of serve --workers N: it must not outlive its supervisor
        from serving.workers import follow_supervisor

        follow_supervisor(args.supervisor_pid)
    if args.workers != 1:  # N processes, one group: serving/workers.py
        from serving.workers import Supervisor

        # Every serve option goes on to each worker (a --shadow run starts shadow workers), and
        # --log-level too, through the settings the workers inherit.
        options = {k: v for k, v in vars(args).items() if k not in _NOT_SERVE_OPTIONS}
        return Supervisor(_settings(log_level=args.log_level), options, args.workers).run()
    from serving.app import serve

    serve(_settings(), args.model, args.version or None, shadow=args.shadow)
    return 0


def _produce(args: argparse.Namespace) -> int:
    from auditstream.kafka import make_producer
    from auditstream.registry import ModelRegistry
    from serving.loadgen import inputs_for, produce_requests

    a = dataclass_from_namespace(ProduceArgs, args)
    if not a.model:
        raise BadArguments("produce needs --model NAME: the model whose requests to send")
    settings = _settings()
    card = ModelRegistry.from_settings(settings).card(a.model, a.version or None)
    inputs = inputs_for(card, a.source, a.seed)  # a source that does not fit the card: refused before the broker
    producer = make_producer(settings, client_id="auditstream-produce")
    try:
        stats = produce_requests(producer, settings.request_topic(a.model), a.model, inputs, a.count, a.rate,
                                 progress=a.progress)
    finally:
        producer.close()
    print(f"sent {len(stats.request_ids)} requests to {settings.request_topic(a.model)} in {stats.elapsed_s:.1f} s "
          f"({len(stats.request_ids) / max(stats.elapsed_s, 1e-9):.0f}/s)")
    return 0


def _dlq_replay(args: argparse.Namespace) -> int:
    from serving.dlq import replay

    report = replay(_settings(), reasons=args.reason or None, max_records=args.max_records)
    finite_json.print_summary(report.to_json())
    if report.refused:
        print(f"refused {sum(report.refused.values())} dead letter(s) naming topics replay never writes to: "
              f"{sorted(report.refused)}; only request topics and the audit/predictions topics are replayed "
              "(a forged dead letter must not inject into other topics)", file=sys.stderr)
        return 1
    return 0


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    s = commands.add_parser("serve", help="serve one model: consume its requests, infer, triage, produce")
    s.add_argument("--model", required=True, help="model name in the registry (AUDITSTREAM_MODELS_DIR)")
    s.add_argument("--version", default="", help="model version (default: the live one, following promotions "
                   "and canaries without a restart; a pinned version never changes)")
    s.add_argument("--shadow", action="store_true", help="run --version as a shadow candidate on the model's "
                   "requests: predictions flagged shadow only, nothing acts (for auditstream promote)")
    add_checked_argument(s, "--workers", WORKERS, default=1, help="consumer processes of this model on this host, "
                         "each a group member with cores/N ONNX Runtime threads; one dying stops all, exit 1 "
                         "(docs/serving.md)")
    add_checked_argument(s, "--supervisor-pid", COUNT, metavar="PID", help="stop (drain, checkpoint, exit 0) when "
                         "process PID, this one's parent, ends, even by SIGKILL; serve --workers N sets it on each "
                         "worker", example=1234)
    s.set_defaults(handler=_serve)

    p = commands.add_parser("produce", help="load generator: requests that fit a model's input spec")
    add_dataclass_arguments(p, ProduceArgs)
    p.set_defaults(handler=_produce)

    d = commands.add_parser("dlq", help="dead-letter topic tools")
    dsub = d.add_subparsers(dest="dlq_command", metavar="ACTION", required=True)
    r = dsub.add_parser("replay", help="send dead letters not replayed before back to their source topic (original "
                        "key, value and headers); exit 1 if some named a topic replay never writes to")
    # choices: a misspelt code would otherwise replay nothing, silently
    r.add_argument("--reason", action="append", choices=[r.value for r in Reason], metavar="REASON",
                   help="replay only this reason code (repeatable; default: all): one of "
                   f"{', '.join(r.value for r in Reason)}; the others stay available to a later replay")
    add_checked_argument(r, "--max-records", COUNT, help="stop after replaying this many dead letters (default: all)",
                         example=100)
    r.set_defaults(handler=_dlq_replay)
