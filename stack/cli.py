"""Commands that run the whole stack: ``broker start|stop|status`` (the embedded broker),
``bench serve`` (broker + consumers + load generator), and, from their own modules, ``demo`` and
``bench wire``. Handlers import their modules lazily, so ``auditstream --help`` stays fast.

Process settings come from ``AUDITSTREAM_*`` variables (auditstream/settings.py), built once per
command by ``Settings.from_env()``; job arguments are the frozen dataclasses below.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass, field

from auditstream.cli_args import add_dataclass_arguments, dataclass_from_namespace
from stack import demo, wire_bench


@dataclass(frozen=True)
class BenchServeArgs:
    model: str = field(default="", metadata={"help": "registry model to use (default: a built-in small CNN)"})
    client: str = field(default="", metadata={"help": "kafka-python or confluent (default: AUDITSTREAM_KAFKA_CLIENT)"})
    count: int = field(default=3200, metadata={"help": "requests in the max-throughput run"})
    latency_count: int = field(default=1000, metadata={"help": "requests in the latency run at ~70%% of max rate"})
    batch_size: int = field(default=64, metadata={"help": "micro-batch size, also used for the raw ORT run"})
    json: bool = field(default=False, metadata={"help": "print only the final JSON line on stdout (progress on stderr)"})


def _settings(**overrides: object):
    from auditstream.settings import Settings

    return Settings.from_env(**overrides)


def _broker_start(args: argparse.Namespace) -> int:
    from stack import broker

    settings = _settings()
    models = [m for m in args.models.split(",") if m]
    info = broker.start(settings, models=models, port=args.port, foreground=args.foreground)
    if not args.foreground:
        print(f"broker running: pid {info.pid}, bootstrap {info.bootstrap}, log {info.log}")
    return 0


def _broker_stop(args: argparse.Namespace) -> int:
    from stack import broker

    print("broker stopped" if broker.stop(_settings()) else "no embedded broker running")
    return 0


def _broker_status(args: argparse.Namespace) -> int:
    from stack import broker

    info = broker.status(_settings())
    if info is None:
        print("no embedded broker running")
        return 1
    print(json.dumps(dataclasses.asdict(info)))
    return 0


def _bench_serve(args: argparse.Namespace) -> int:
    from stack.serve_bench import run_bench

    a = dataclass_from_namespace(BenchServeArgs, args)
    result = run_bench(_settings(), a, out=sys.stderr if a.json else sys.stdout)
    print(json.dumps(result))
    return 0


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    demo.register(commands, bench)
    b = commands.add_parser("broker", help="the embedded Kafka-protocol broker (Tansu) for one machine")
    bsub = b.add_subparsers(dest="broker_command", metavar="ACTION", required=True)
    start = bsub.add_parser("start", help="start it on a free loopback port, create the topics, return")
    start.add_argument("--port", type=int, default=0, help="port to listen on (default: a free one)")
    start.add_argument("--models", default="", help="comma-separated models whose request topics to create")
    start.add_argument("--foreground", action="store_true", help="stay in the foreground until Ctrl-C/SIGTERM")
    start.set_defaults(handler=_broker_start)
    bsub.add_parser("stop", help="stop it (its in-memory topics are gone)").set_defaults(handler=_broker_stop)
    bsub.add_parser("status", help="print pid/port/bootstrap as JSON; exit 1 if not running").set_defaults(
        handler=_broker_status)

    bs = bench.add_parser("serve", help="raw ONNX Runtime vs the full stream path; p50/p99 at ~70%% load")
    add_dataclass_arguments(bs, BenchServeArgs)
    bs.set_defaults(handler=_bench_serve)
    wire_bench.register(commands, bench)
