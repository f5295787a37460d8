"""Serving commands: ``broker start|stop|status``, ``serve``, ``produce``, ``dlq replay`` and
``bench serve``. Handlers import their modules lazily, so ``auditstream --help`` stays fast and
importing this module pulls in neither ONNX Runtime nor a Kafka client (nor ever torch).

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


@dataclass(frozen=True)
class ProduceArgs:
    model: str = field(default="", metadata={"help": "model name: requests go to <prefix>.requests.<model>"})
    version: str = field(default="", metadata={"help": "model version whose input spec to follow (default: latest)"})
    rate: float = field(default=100.0, metadata={"help": "requests per second (0 = as fast as possible)"})
    count: int = field(default=1000, metadata={"help": "how many requests to send"})
    source: str = field(default="auto", metadata={"help": "inputs: auto (card's choice), random, png, digits"})
    seed: int = field(default=0, metadata={"help": "random seed of generated inputs"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})


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
    from serving import broker

    settings = _settings()
    models = [m for m in args.models.split(",") if m]
    info = broker.start(settings, models=models, port=args.port, foreground=args.foreground)
    if not args.foreground:
        print(f"broker running: pid {info.pid}, bootstrap {info.bootstrap}, log {info.log}")
    return 0


def _broker_stop(args: argparse.Namespace) -> int:
    from serving import broker

    print("broker stopped" if broker.stop(_settings()) else "no embedded broker running")
    return 0


def _broker_status(args: argparse.Namespace) -> int:
    from serving import broker

    info = broker.status(_settings())
    if info is None:
        print("no embedded broker running")
        return 1
    print(json.dumps(dataclasses.asdict(info)))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from serving.app import serve

    serve(_settings(), args.model, args.version or None)
    return 0


def _produce(args: argparse.Namespace) -> int:
    from auditstream.kafka import make_producer
    from auditstream.registry import ModelRegistry
    from serving.loadgen import inputs_for, produce_requests

    a = dataclass_from_namespace(ProduceArgs, args)
    if not a.model:
        raise SystemExit("auditstream produce: --model is required")
    settings = _settings()
    card = ModelRegistry(settings.models_dir).card(a.model, a.version or None)
    producer = make_producer(settings, client_id="auditstream-produce")
    try:
        stats = produce_requests(producer, settings.request_topic(a.model), a.model, inputs_for(card, a.source, a.seed),
                                 a.count, a.rate, progress=a.progress)
    finally:
        producer.close()
    print(f"sent {len(stats.request_ids)} requests to {settings.request_topic(a.model)} in {stats.elapsed_s:.1f} s "
          f"({len(stats.request_ids) / max(stats.elapsed_s, 1e-9):.0f}/s)")
    return 0


def _dlq_replay(args: argparse.Namespace) -> int:
    from serving.dlq import replay

    report = replay(_settings(), reasons=args.reason or None, max_records=args.max_records)
    print(json.dumps(report.to_json()))
    if report.refused:
        print(f"refused {sum(report.refused.values())} dead letter(s) naming topics replay never writes to: "
              f"{sorted(report.refused)}; only request topics and the audit/predictions topics are replayed "
              "(a forged dead letter must not inject into other topics)", file=sys.stderr)
        return 1
    return 0


def _bench_serve(args: argparse.Namespace) -> int:
    from serving.bench import run_bench

    a = dataclass_from_namespace(BenchServeArgs, args)
    result = run_bench(_settings(), a, out=sys.stderr if a.json else sys.stdout)
    print(json.dumps(result))
    return 0


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
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

    s = commands.add_parser("serve", help="serve one model: consume its requests, infer, triage, produce")
    s.add_argument("--model", required=True, help="model name in the registry (AUDITSTREAM_MODELS_DIR)")
    s.add_argument("--version", default="", help="model version (default: latest)")
    s.set_defaults(handler=_serve)

    p = commands.add_parser("produce", help="load generator: requests that fit a model's input spec")
    add_dataclass_arguments(p, ProduceArgs)
    p.set_defaults(handler=_produce)

    d = commands.add_parser("dlq", help="dead-letter topic tools")
    dsub = d.add_subparsers(dest="dlq_command", metavar="ACTION", required=True)
    r = dsub.add_parser("replay", help="send dead letters not replayed before back to their source topic (original "
                        "key, value and headers); exit 1 if some named a topic replay never writes to")
    r.add_argument("--reason", action="append", help="replay only this reason code (repeatable; default: all); "
                   "the others stay available to a later replay")
    r.add_argument("--max-records", type=int, default=None, help="stop after replaying this many dead letters")
    r.set_defaults(handler=_dlq_replay)

    bs = bench.add_parser("serve", help="raw ONNX Runtime vs the full stream path; p50/p99 at ~70%% load")
    add_dataclass_arguments(bs, BenchServeArgs)
    bs.set_defaults(handler=_bench_serve)
